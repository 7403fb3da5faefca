"""Triton kernels on virtual GPUs: a launch event instead of a compile and a driver call.

`JITFunction.run` (where `kernel[grid](...)` lands, directly or through heuristics) emits one
MEMORY launch whose bytes are those of the kernel's tensor arguments, a roofline estimate for
the element-wise and reduction kernels that serving stacks write in Triton. Autotuning
benchmarks nothing: the first config is taken, the choice a cold cache would start from.
Kernels whose results the host reads back (state-carrying ones) need stand-ins registered by
framework glue; this catch-all leaves their outputs as they were.
"""

from __future__ import annotations

from typing import Any

from revati.adapters.cuda.ops import dtype_name
from revati.predictors.launch import Family


def _launch(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # One pass over the arguments, reading virtual tensors' own fields: the generic tensor
    # API (isinstance, .device.type) made this 10 us for a kernel with six tensors, a few
    # such kernels a serving step (vLLM's top-k/top-p and temperature).
    from revati.adapters.cuda import launch
    from revati.adapters.cuda.tensor import VirtualTensor

    first = None
    moved = elements = 0
    for a in (*args, *kwargs.values()):
        if type(a) is VirtualTensor:
            n = a.numel()
            moved += n * a.element_size()
            if first is None:
                first = a
            if n > elements:
                elements = n
    if first is None:
        return
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "?")
    launch(Family.MEMORY, f"triton::{name}", dtype_name(first.dtype), (moved, elements),
           first._d)


def install(triton: Any) -> None:
    """Patch triton's launch paths (called when triton is first imported)."""
    from triton.runtime import autotuner, jit

    def run(self: Any, *args: Any, grid: Any = None, warmup: bool = False, **kwargs: Any
            ) -> None:
        if not warmup:
            _launch(self, args, kwargs)

    def tuned_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        config = self.configs[0]
        return self.fn.run(*args, **{**kwargs, **config.all_kwargs()})

    jit.JITFunction.run = run
    autotuner.Autotuner.run = tuned_run
