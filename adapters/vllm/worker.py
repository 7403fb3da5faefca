"""`RevatiWorker`: vLLM's GPU worker on virtual GPUs.

The real `gpu_worker.Worker` runs (device init, memory profiling, KV-cache sizing, graph
capture, execute/sample); only what asks a real driver is replaced, and once started, eager
forwards go through forward templates (forward_templates.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from vllm.v1.worker import gpu_worker
from vllm.v1.worker.gpu_worker import Worker

from revati.adapters import cuda
from revati.adapters.vllm import config, custom_ops, forward_templates


def _no_kernel_warmup(worker: Any, **_: Any) -> None:
    """Kernel warmups JIT-compile and autotune real kernels (FlashInfer, Triton, DeepGEMM):
    start-up work on a real GPU with no effect on serving metrics, and nothing to tune here."""


# The worker module calls the name it imported; rebinding it there is the narrowest seam.
gpu_worker.kernel_warmup = _no_kernel_warmup
# Before the worker builds the model: layers bind their forward method at construction.
custom_ops.install()


class RevatiWorker(Worker):
    def __init__(self, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(vllm_config, *args, **kwargs)
        config.load_allreduce_rms_fusion(vllm_config)  # for the communicators it makes

    def _maybe_get_memory_pool_context(self, tag: str) -> AbstractContextManager[Any]:
        # The cumem (sleep mode) allocator needs the driver's VMM API; virtual memory is
        # accounted by revati.adapters.cuda's allocator instead.
        return nullcontext()

    def compile_or_warm_up_model(self) -> Any:
        times = super().compile_or_warm_up_model()
        # After profiling and capture: the activation peak is the real eager forward's.
        self.forward_templates = forward_templates.install(self.model_runner.get_model())
        keep_input_slices(self.model_runner)
        return times


def keep_input_slices(model_runner: Any) -> None:
    """The V2 runner's input buffers (input ids, positions, query start locations, sequence
    lengths, padding flags) are sliced to the batch at every step, ~7 views a decode step:
    each slice is kept (revati.adapters.cuda.keep_slices)."""
    buffers = getattr(model_runner, "input_buffers", None)
    for value in vars(buffers).values() if buffers is not None else ():
        cuda.keep_slices(value)  # its other attributes (sizes, the device) are left alone
