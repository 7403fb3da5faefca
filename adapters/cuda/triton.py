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

import torch

from revati.adapters.cuda.ops import dtype_name
from revati.predictors.launch import Family


def _launch(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    from revati.adapters.cuda import launch

    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    cuda = [t for t in tensors if t.device.type == "cuda"]
    if not cuda:
        return
    moved = sum(t.numel() * t.element_size() for t in cuda)
    elements = max(t.numel() for t in cuda)
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", "?")
    launch(Family.MEMORY, f"triton::{name}", dtype_name(cuda[0].dtype), (moved, elements),
           cuda[0].device.index or 0)


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
