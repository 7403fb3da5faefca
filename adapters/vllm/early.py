"""What must be in place before vLLM computes anything from the platform: run from the
platform plugin callable, the earliest hook in every vLLM process (it runs at
`import vllm.config`, before `HAS_TRITON` and before any model code)."""

from __future__ import annotations

_done = False


def install() -> None:
    global _done
    if _done:
        return
    _done = True
    import torch._dynamo
    import vllm.utils.torch_utils as torch_utils

    from revati.adapters.cuda import uva_view
    from revati.adapters.postimport import when_imported
    from revati.adapters.vllm import shm_queue

    # TP/PP > 1: the engine core's and workers' shared-memory queues wake through the session
    when_imported(shm_queue.MODULE, shm_queue.install)

    # Pinned host buffers seen from the device (V2's request state and staging buffers):
    # vLLM asks its `_C` extension, which exists only for real CUDA platforms.
    torch_utils.get_accelerator_view_from_cpu_tensor = uva_view

    # Module-level @torch.compile helpers (masked embedding for TP>1, logprobs, samplers)
    # would trace virtual tensors with Dynamo, which asks the real accelerator for streams.
    # On a GPU they are small fused kernels; here their ops are emitted one by one.
    torch._dynamo.config.disable = True
