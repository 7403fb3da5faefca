"""vLLM's eager forwards as forward templates (revati.adapters.cuda.templates).

The steps that no captured graph fits (those with a prefill past the largest capture size) call
the model eagerly; with templates, a step whose token count lies in a range already recorded
costs one graph launch and the attention nodes instead of the model's Python. Installed on the
model after start-up (memory profiling, graph capture), so that the profiled activation peak
comes from real eager forwards; REVATI_FORWARD_TEMPLATES=0 leaves the model as it is.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.config import CUDAGraphMode
from vllm.forward_context import get_forward_context, is_forward_context_available

from revati.adapters.cuda import templates


def install(model: torch.nn.Module) -> templates.ForwardTemplates | None:
    """Route `model`'s eager forwards through templates; returns their store (None when
    disabled)."""
    if not templates.enabled():
        return None
    store = templates.ForwardTemplates()
    forward = model.forward

    def templated_forward(*args: Any, **kwargs: Any) -> Any:
        if args or not _eager_step():
            return forward(*args, **kwargs)
        positions = kwargs.get("positions")
        later_stage = kwargs.get("intermediate_tensors") is not None  # its output is no tensor
        if not isinstance(positions, torch.Tensor) or later_stage:
            return forward(**kwargs)
        key = tuple(sorted((name, _kind(value)) for name, value in kwargs.items()))
        return store.run(key, positions.shape[-1], lambda: forward(**kwargs))

    model.forward = templated_forward
    return store


def _eager_step() -> bool:
    """A serving step run eagerly (not a graph's capture, a profiling run, micro-batches)."""
    if not is_forward_context_available():
        return False
    ctx = get_forward_context()
    return ctx.attn_metadata is not None and ctx.ubatch_slices is None \
        and ctx.cudagraph_runtime_mode == CUDAGraphMode.NONE


def _kind(value: Any) -> Any:
    """What of an argument other than its token count the forward's launches may depend on."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.dim()
    return None if value is None else type(value).__name__
