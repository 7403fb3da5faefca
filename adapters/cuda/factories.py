"""Factory calls on a virtual device, built in one frozen step.

`torch.zeros(n, device="cuda")` left to PyTorch goes through the CUDA key's Python kernel for
`empty` and then through the dispatcher again for `zero_` (`arange`: `empty`, then `arange.out`
and a resize), each way in and out of Revati paid outside any freeze: 22-50 us a call in a
bench loop, a few calls a decode step in vLLM's runner. For the plain forms (sizes as ints,
`dtype`, `device`; no `out`, layout, names, gradient or torch function mode) this builds the
tensor directly: the values on the host where the tensor is small enough to keep them
(`host_limit`), the allocation, and the launch the slow path emits (`aten::zero_` /
`aten::fill_` / `aten::arange` with its bytes read and written, none for `empty`). Any other
form, and any form PyTorch would reject, takes PyTorch's own path and errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from revati.adapters.cuda import ops
from revati.adapters.cuda.state import S
from revati.adapters.cuda.tensor import adopt, contiguous_strides, emit, host_limit, new_tensor
from revati.predictors.launch import Family

_MEMORY = int(Family.MEMORY)
_PLAIN = frozenset({"dtype", "device"})  # the keywords the direct path takes
_FILLS = {"zeros": "aten::zero_", "ones": "aten::fill_", "full": "aten::fill_",
          "arange": "aten::arange", "empty": None}
DIRECT = frozenset(_FILLS)  # the factories built directly
_FULL_DTYPES = {bool: torch.bool, int: torch.int64, float: None}  # None: the default dtype
# The host values are made by torch's own functions, not by the names surface.patch wraps
# (a CPU call of those would pass through this module's check again).
_TORCH = torch._C._VariableFunctions


def _sizes(args: tuple[Any, ...]) -> list[int] | None:
    """`(3, 4)` or `((3, 4),)` (a tuple, list or torch.Size) as a list of ints >= 0, else
    None."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    elif not args:  # no size at all: PyTorch's TypeError
        return None
    if all(type(a) is int and a >= 0 for a in args):
        return list(args)
    return None


def _plan(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
          ) -> tuple[list[int], torch.dtype, Callable[[], torch.Tensor]] | None:
    """(size, dtype, the host values' maker) of a plain call, or None to leave it to PyTorch."""
    dtype = kwargs.get("dtype")
    if name == "arange":
        if not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
            return None
        start, end, step = (0, args[0], 1) if len(args) == 1 else (*args, 1)[:3]
        if (end - start) * step < 0 or step == 0 or (
                dtype is not None and not isinstance(dtype, torch.dtype)):
            return None  # PyTorch's error for a step of 0 or the wrong sign
        dtype = dtype or torch.int64
        return [max(0, math.ceil((end - start) / step))], dtype, lambda: _TORCH.arange(
            start, end, step, dtype=dtype)
    if name == "full":
        if len(args) != 2 or not isinstance(args[0], (tuple, list)) or \
                type(args[1]) not in _FULL_DTYPES or \
                (dtype is not None and not isinstance(dtype, torch.dtype)):
            return None
        size, value = _sizes(args[:1]), args[1]
        dtype = dtype or _FULL_DTYPES[type(value)] or torch.get_default_dtype()
        return None if size is None else (size, dtype, lambda: _TORCH.full(size, value,
                                                                          dtype=dtype))
    size = _sizes(args)
    if size is None or (dtype is not None and not isinstance(dtype, torch.dtype)):
        return None
    dtype = dtype or torch.get_default_dtype()
    maker = _TORCH.ones if name == "ones" else _TORCH.zeros  # empty: zeros, as new_tensor
    return size, dtype, lambda: maker(size, dtype=dtype)


def _on_cuda(device: Any) -> bool:
    """Whether a `device` argument names a cuda device, without building a torch.device (a
    microsecond, on every CPU factory call); an int (a cuda index to PyTorch) takes
    PyTorch's path."""
    if type(device) is str:
        return device.startswith("cuda")
    return type(device) is torch.device and device.type == "cuda"


def builder(name: str) -> Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor | None]:
    """For torch.`name`: a function of a call's arguments that builds the tensor of a plain
    call on a virtual device and returns None for any other call (PyTorch's path). The
    factory's wrapper calls it first (surface._pinning): one call and a dict lookup is all a
    CPU factory call pays for it."""
    fill_op = _FILLS[name]
    functions_stack = torch._C._len_torch_function_stack

    def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        device = kwargs.get("device")
        if device is None or not _on_cuda(device) or not kwargs.keys() <= _PLAIN \
                or functions_stack():
            return None
        plan = _plan(name, args, kwargs)
        if plan is None:
            return None
        size, dtype, values = plan
        link = S.link()
        with link.op_freeze():
            dev = S.device_index(device)
            numel = math.prod(size)
            nbytes = numel * torch._utils._element_size(dtype)
            if nbytes <= host_limit(dtype):
                t = adopt(values(), dev, "aten::empty")
            else:
                t = new_tensor(size, contiguous_strides(size), dtype, dev, "aten::empty")
            if fill_op is not None and numel:
                emit(link, dev, _MEMORY, fill_op, ops.dtype_name(dtype), (2 * nbytes, numel))
        return t

    return build
