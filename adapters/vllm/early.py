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
    import os

    import torch._dynamo

    # vLLM 0.32 picks its V2 model runner wherever Triton finds a GPU (here: the virtual
    # one). V2 keeps request state on the device, updated by Triton kernels that would need
    # host stand-ins; Revati runs the V1 runner until those exist (docs/vllm.md).
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

    # Module-level @torch.compile helpers (masked embedding for TP>1, logprobs, samplers)
    # would trace virtual tensors with Dynamo, which asks the real accelerator for streams.
    # On a GPU they are small fused kernels; here their ops are emitted one by one.
    torch._dynamo.config.disable = True
