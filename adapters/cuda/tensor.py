"""Virtual tensors: `cuda:N` tensors with no GPU behind them.

A `VirtualTensor` is a wrapper tensor subclass (`_make_wrapper_subclass`): c10 sees a tensor
with device `cuda:N`, sizes, strides and dtype, and no data. Every aten op on it reaches
`__torch_dispatch__`, which
  1. emits the op as a launch event on the thread's current stream of its device (views,
     allocations and metadata ops launch nothing),
  2. computes the outputs' metadata by running the op once on meta tensors per signature
     (op, shapes, strides, dtypes, scalar args), cached, so a repeated shape costs a dict
     lookup and one wrapper per output,
  3. keeps values where they are cheap: an allocation up to `host_bytes` made by a factory or
     a host-to-device copy is host-backed (a CPU storage), and an op whose inputs are all
     host-backed runs for real on the CPU, so small control tensors (positions, block tables,
     sequence lengths) keep true values. Everything else is meta-backed: shapes only.
Reading values back (`.item()`, `.tolist()`, `.cpu()`, a blocking copy into host memory) first
waits in virtual time until the stream is done, then returns the host-backed values, or for a
small meta-backed tensor values from the token oracle; reading a large meta-backed tensor is an
error that names the op that produced it.

Factories with a cuda device (`torch.empty(..., device="cuda")`, `.to("cuda")`, `.cuda()`,
`torch.tensor(..., device="cuda")`, modules built under `torch.device("cuda")`) reach the
dispatcher's CUDA key, where Python kernels for `empty`/`empty_strided` (and `copy_`, for the
paths that run below the Python key) create virtual tensors: no function mode sits on the hot
path of ops that do not create tensors.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from revati.adapters.cuda import ops
from revati.adapters.cuda.allocator import Allocation
from revati.adapters.cuda.state import THREAD, S, settle_host_time
from revati.adapters.cuda.streams import check_not_capturing
from revati.predictors.launch import CopyDirection, Family, LaunchEvent

_mk = torch.Tensor._make_wrapper_subclass
_inference_enabled = torch.is_inference_mode_enabled
_grad_enabled = torch.is_grad_enabled
_new_event = tuple.__new__  # LaunchEvent's own __new__, without its Python frame
_EMPTY: dict[str, Any] = {}
_DATA = torch.Tensor.data
_GETITEM, _SETITEM = torch.Tensor.__getitem__, torch.Tensor.__setitem__
_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
# PyTorch records a view function for each view of a Python-dispatch tensor and chains them view
# after view: `free = free[n:]` repeated k times (SGLang's KV allocators) costs O(k) a slice
# (1.1-1.5 ms after 2,000 slices of a 470k-entry free list, against 17-29 us taken off the
# base). An indexing this many indexings deep is taken off its base instead.
REROOT_DEPTH = 8
_META = torch.device("meta")
_CPU = torch.device("cpu")
CACHE_LIMIT = 1 << 16
KEPT_SLICES = 64  # slices kept per buffer (one per batch size seen, as a rule): keep_slices

FRESH, VIEW, WRITE = 0, 1, 2
# Plain ints in events: they are packed into msgpack frames as they are.
_HOST_COPY, _P2P = int(Family.HOST_COPY), int(Family.P2P)
_H2D, _D2H = int(CopyDirection.H2D), int(CopyDirection.D2H)


class ValuesUnavailable(RuntimeError):
    """Reading values that no kernel computed, from a tensor too large for the token oracle."""


class VirtualTensor(torch.Tensor):
    """A tensor on a virtual GPU. `_a`: its Allocation (shared with its views); `_v`: a CPU
    view of its values when host-backed (built lazily); `_d`: its device index."""

    _a: Allocation
    _v: torch.Tensor | None
    _d: int
    _s: tuple[Any, ...]
    _n = 0  # how many `t[...]` deep it is (REROOT_DEPTH)
    _slices: dict[tuple[Any, ...], tuple[Any, ...]] | None = None  # keep_slices
    _np: tuple[torch.Tensor, np.ndarray] | None = None  # (_v, its numpy view): host_array

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        return dispatch(func, args, kwargs or _EMPTY)

    @property  # type: ignore[override]
    def data(self) -> torch.Tensor:
        return _DATA.__get__(self)

    @data.setter
    def data(self, new: torch.Tensor) -> None:
        # `param.data = t` swaps the tensor's storage under Python's nose (Module.to does it):
        # the allocation and values travel with it.
        _DATA.__set__(self, new)
        if type(new) is VirtualTensor:
            self._a, self._v, self._d, self._s = new._a, new._v, new._d, new._s
            self._slices = None

    def __getitem__(self, index: Any) -> Any:
        if type(index) in _BASIC_INDEX and not _grad_enabled():
            slices = self._slices
            out = (_basic_index(self, index) if slices is None or type(index) is not slice
                   else _kept_slice(self, slices, index))
            if out is not None:
                return out
        src = self if self._n < REROOT_DEPTH else _rerooted(self)
        out = _GETITEM(src, index)
        if type(out) is VirtualTensor:
            out._n = src._n + 1
        return out

    def __setitem__(self, index: Any, value: Any) -> None:
        if type(value) is VirtualTensor and _put_by_index(self, index, value):
            return
        if type(index) in _BASIC_INDEX and not _grad_enabled():
            # PyTorch's own: the view, then a copy into it (a fill for a number)
            tv = type(value)
            if tv is int or tv is float or tv is bool:
                view = _basic_index(self, index)
                if view is not None:
                    view.fill_(value)
                    return
            elif tv is VirtualTensor:
                view = _basic_index(self, index)
                if view is not None and value.dim() <= view.dim():
                    view.copy_(value)
                    return
        _SETITEM(self if self._n < REROOT_DEPTH else _rerooted(self), index, value)

    def tolist(self) -> Any:
        # torch refuses tolist() on subclasses; on a GPU it is a blocking copy to the host
        return self.cpu().tolist()

    def numpy(self, *, force: bool = False) -> Any:
        raise TypeError(f"can't convert {self.device} device type tensor to numpy. Use "
                        "Tensor.cpu() to copy the tensor to host memory first.")

    def data_ptr(self) -> int:
        return self._a.address + self.storage_offset() * self.element_size()

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        if self._a.host is None:
            return (f"VirtualTensor(shape={list(self.shape)}, dtype={self.dtype}, "
                    f"device='{self.device}', produced_by={self._a.origin})")
        text = repr(self.cpu())
        return f"{text[:-1]}, device='{self.device}')"

    __str__ = __repr__


_BASIC_INDEX = frozenset({slice, int, tuple})
_INDEX_PART = (int, type(None))
_ALL = slice(None)


def _basic_index(t: VirtualTensor, index: slice | int | tuple[Any, ...]) -> VirtualTensor | None:
    """`t[index]` for slices and integers under no_grad or inference mode (basic indexing,
    where PyTorch's view needs no autograd link): the view's geometry computed here, with no
    trip through the dispatcher (~6 us of ~10 a slice). None for anything else (a step other
    than positive, an index out of range, None, a tensor), which takes PyTorch's own path and
    its errors."""
    link = S.link_override if S.link_override is not None else S.link()
    with link.freeze():
        return _basic_view(t, index)


def _basic_view(t: VirtualTensor, index: slice | int | tuple[Any, ...]) -> VirtualTensor | None:
    size, stride, dtype = t._s
    parts = index if type(index) is tuple else (index,)
    if Ellipsis in parts:  # `...` stands for every dimension the other parts leave out
        at = parts.index(Ellipsis)
        rest = parts[at + 1:]
        if Ellipsis in rest:
            return None
        parts = (*parts[:at], *(_ALL,) * (len(size) - len(parts) + 1), *rest)
    if len(parts) > len(size):
        return None
    offset = t.storage_offset()
    new_size: list[int] = []
    new_stride: list[int] = []
    for dim, part in enumerate(parts):
        n = size[dim]
        if type(part) is slice:
            step = part.step
            if not (type(part.start) in _INDEX_PART and type(part.stop) in _INDEX_PART
                    and type(step) in _INDEX_PART) or (step is not None and step <= 0):
                return None
            start, stop, step = part.indices(n)
            offset += start * stride[dim]
            new_size.append(max(0, (stop - start + step - 1) // step))
            new_stride.append(stride[dim] * step)
        elif type(part) is int and -n <= part < n:
            offset += (part + n if part < 0 else part) * stride[dim]
        else:
            return None
    if len(parts) < len(size):
        new_size.extend(size[len(parts):])
        new_stride.extend(stride[len(parts):])
    return _view(new_size, new_stride, offset, dtype, t, None)


_INDEX_DTYPES = frozenset({torch.int64, torch.int32})


def _put_by_index(t: VirtualTensor, index: Any, value: VirtualTensor) -> bool:
    """`t[ids] = value` (or `t[ids_0, ids_1, ...]`) for integer index tensors under no_grad or
    inference mode, as the one `index_put_` PyTorch's indexing ends in, without its trip
    through the dispatcher for a view of `t` first (~10 us of ~25 a call; SGLang writes its
    request-to-token table and its overlap buffers so every step). False where PyTorch's own
    path is needed: other indices, or a value with more dimensions than the indexed result
    (PyTorch drops its leading ones first)."""
    if _grad_enabled():
        return False
    indices = index if type(index) is tuple else (index,)
    if not indices or len(indices) > t.dim():
        return False
    dims = 0
    for ids in indices:
        if type(ids) is not VirtualTensor or ids.dtype not in _INDEX_DTYPES:
            return False
        dims = max(dims, ids.dim())
    if value.dim() > dims + t.dim() - len(indices):
        return False
    t.index_put_(indices, value)
    return True


def keep_slices(t: VirtualTensor) -> None:
    """Hand out the same view for each `t[a:b]` of `t` from now on: for the persistent buffers
    a serving engine slices to the batch size at every step (vLLM's UVA input buffers,
    `UvaBuffer.uva(n)`, ~16 a decode step, and its device-side input buffers), where a view
    costs 5-10 us and a kept one a dict lookup. Only for tensors that live as long as their
    engine: a kept view holds its base, and the base the view."""
    t._slices = {}


def _kept_slice(t: VirtualTensor, slices: dict[tuple[Any, ...], tuple[Any, ...]],
                index: slice) -> VirtualTensor | None:
    """`t[a:b]` of a buffer with kept slices (keep_slices), the same view each time, while
    the view and `t` have the geometry they had (an in-place metadata change of either goes
    through `resize`, which gives it a new `_s`). None where _basic_index gives none."""
    key = (index.start, index.stop, index.step, _inference_enabled())
    hit = slices.get(key)
    if hit is not None and hit[1] is t._s and hit[0]._s is hit[2]:
        return hit[0]
    out = _basic_index(t, index)
    if out is not None:
        if len(slices) >= KEPT_SLICES:
            slices.clear()
        slices[key] = (out, t._s, out._s)
    return out


def _rerooted(t: VirtualTensor) -> VirtualTensor:
    """The view `t` (REROOT_DEPTH indexings deep) taken off its base: one view function
    instead of a chain of them; same storage, geometry and dtype."""
    base = t._base
    if base is None or base.dtype != t.dtype or t.requires_grad or t.is_conj() or t.is_neg():
        return t
    return base.as_strided(t.shape, t.stride(), t.storage_offset())


def _wrap(size: Sequence[int], stride: Sequence[int], offset: int, dtype: torch.dtype, dev: int,
          alloc: Allocation, view: torch.Tensor | None) -> VirtualTensor:
    t = _mk(VirtualTensor, size, strides=stride, storage_offset=offset, dtype=dtype,
            device=S.devices[dev])
    t._a = alloc
    t._v = view
    t._d = dev
    t._s = (tuple(size), tuple(stride), dtype)  # its part of a cache key, made once
    return t


def _nbytes(size: Sequence[int], stride: Sequence[int], itemsize: int) -> int:
    if any(s == 0 for s in size):
        return 0
    return (1 + sum((s - 1) * st for s, st in zip(size, stride, strict=True))) * itemsize


def new_tensor(size: Sequence[int], stride: Sequence[int], dtype: torch.dtype, dev: int,
               origin: str) -> VirtualTensor:
    """A fresh allocation: host-backed (zeroed) when small, meta-backed otherwise."""
    nbytes = _nbytes(size, stride, torch._utils._element_size(dtype))
    if nbytes <= host_limit(dtype):
        host = torch.zeros(nbytes // max(1, torch._utils._element_size(dtype)), dtype=dtype)
        host = host.as_strided(size, stride)
        return _wrap(size, stride, 0, dtype, dev,
                     Allocation(S.mem[dev], nbytes, host.untyped_storage(), origin), host)
    return _wrap(size, stride, 0, dtype, dev, Allocation(S.mem[dev], nbytes, None, origin), None)


def adopt(host: torch.Tensor, dev: int, origin: str) -> VirtualTensor:
    """A fresh allocation holding `host`'s values: a contiguous CPU tensor of its own storage,
    small enough to be host-backed (host_limit)."""
    storage = host.untyped_storage()
    return _wrap(host.shape, host.stride(), 0, host.dtype, dev,
                 Allocation(S.mem[dev], storage.nbytes(), storage, origin), host)


def uva_view(cpu: torch.Tensor, dev: int) -> VirtualTensor:
    """A `cuda:dev` view of host memory (CUDA's UVA): kernels read and write the host's values
    in place, so the view is host-backed by `cpu`'s own storage, whatever its size, and takes
    no device memory."""
    if cpu.device.type != "cpu":
        raise ValueError(f"a UVA view needs a CPU tensor, not one on {cpu.device}")
    t = _wrap(cpu.shape, cpu.stride(), cpu.storage_offset(), cpu.dtype, dev,
              Allocation.mapped(cpu.untyped_storage(), "uva"), cpu)
    keep_slices(t)
    return t


# -- values
_limits: dict[torch.dtype, int] = {}


def host_limit(dtype: torch.dtype) -> int:
    """The largest host-backed allocation of `dtype`: integer and boolean tensors carry
    control data (ids, positions, lengths, masks) and may be larger; floating point tensors
    are activations, and computing them for real on the CPU would cost too much."""
    limit = _limits.get(dtype)
    if limit is None:
        floating = dtype.is_floating_point or dtype.is_complex
        limit = _limits[dtype] = S.host_float_bytes if floating else S.host_bytes
    return limit


def host_array(t: VirtualTensor) -> np.ndarray:
    """host_values(t) as a numpy array, made once per values view (host stand-ins of kernels
    read a step's control tensors a few times a step, and `.numpy()` costs ~0.7 us)."""
    hit = t._np
    if hit is not None and hit[0] is t._v:
        return hit[1]
    values = host_values(t)
    array = values.numpy()
    if values is t._v:  # kept: oracle values of a small view of a large block are not
        t._np = (values, array)
    return array


def host_values(t: VirtualTensor) -> torch.Tensor:
    """A CPU tensor with `t`'s values: host-backed ones, or oracle values for a small
    meta-backed tensor (kept in its allocation, so every view and later read agrees)."""
    v = t._v
    if v is not None:
        return v
    alloc = t._a
    if alloc.host is None:
        size = t.numel() * t.element_size()
        limit = host_limit(t.dtype)
        if size > limit:
            raise ValuesUnavailable(
                f"revati: cannot read the values of a virtual cuda tensor of shape "
                f"{list(t.shape)} ({t.dtype}, {size} bytes) produced by {alloc.origin}: no "
                f"kernel runs on a virtual GPU, and only {t.dtype} tensors up to {limit} bytes "
                "read back (from the token oracle)")
        if alloc.nbytes > limit:  # a small view of a large allocation: not kept
            values = torch.empty(t.shape, dtype=t.dtype)
            S.oracle.fill(values)
            return values
        itemsize = t.element_size()
        buf = torch.zeros(alloc.nbytes, dtype=torch.uint8)
        S.oracle.fill(buf[: alloc.nbytes // itemsize * itemsize].view(t.dtype))
        alloc.host = buf.untyped_storage()
    v = torch.empty(0, dtype=t.dtype).set_(alloc.host, t.storage_offset(), t.shape, t.stride())
    t._v = v
    return v


# -- launches
def emit(link: Any, dev: int, family: int, op: str, dtype: str, feats: tuple[int, ...]) -> None:
    stream = THREAD.streams[dev]
    graph = stream.capture
    t_ns = link.now_ns()
    if S.host_cost_ns and graph is None:  # a replay costs the host nothing per kernel
        THREAD.host_owed_ns += S.host_cost_ns.get(op, 0)
        t_ns += THREAD.host_owed_ns
    ev = _new_event(LaunchEvent, (family, op, dtype, dev, stream.stream_id, t_ns, feats))
    if graph is None:
        link.launch(ev)
    else:
        graph.events.append(ev)


def sync_current(link: Any, dev: int, what: str) -> None:
    """The host waits until the current stream of `dev` is done (outside any freeze: the wait
    is program time, and the clock must be free to jump)."""
    check_not_capturing(what)
    settle_host_time(link)
    link.synchronize(dev, THREAD.streams[dev].stream_id)


# -- per-op information, from the schema
class _Info:
    __slots__ = ("decompose", "handler", "inplace_view", "name", "nokernel", "outs", "plain",
                 "random", "view", "write")

    def __init__(self, func: Any) -> None:
        schema = func._schema
        self.name = schema.name
        self.handler: Callable[..., Any] | None = _HANDLERS.get(self.name)
        if self.handler is None and func.namespace == "c10d":
            from revati.adapters.cuda import distributed

            self.handler = distributed.handler(self.name)
        self.inplace_view = torch.Tag.inplace_view in func.tags
        self.random = any(a.name == "generator" and a.kwarg_only for a in schema.arguments)
        # Per return: (FRESH, _, _) or (VIEW|WRITE, arg position, arg name)
        self.outs: list[tuple[int, int, str]] = []
        for ret in schema.returns:
            kind, pos, name = FRESH, -1, ""
            if ret.alias_info is not None:
                ret_set = set(ret.alias_info.before_set)
                for i, arg in enumerate(schema.arguments):
                    if arg.alias_info is None:
                        continue
                    arg_set = set(arg.alias_info.before_set)
                    # `Tensor(a)[]` (unbind, split, chunk): the schema keeps the alias set on
                    # the list's elements, and the list's own is empty; the input that may
                    # alias anything (`Tensor(a -> *)`) is their base.
                    if arg_set & ret_set or (not ret_set and "*" in arg.alias_info.after_set):
                        kind = WRITE if ret.alias_info.is_write else VIEW
                        pos, name = (-1 if arg.kwarg_only else i), arg.name
                        break
            self.outs.append((kind, pos, name))
        if self.name in _ALIAS_AS_VIEW:
            self.outs = [(VIEW, 0, "self")]
        self.view = bool(self.outs) and all(k == VIEW for k, _, _ in self.outs)
        self.write = self.outs[0] if self.outs and self.outs[0][0] == WRITE else None
        self.nokernel = self.view or self.name in _NO_KERNEL
        # The op's composite kernel, bound once (OpOverload.decompose looks it up per call)
        self.decompose: Callable[..., Any] | None = None
        if (self.name not in ops.KEEP_WHOLE and self.handler is None
                and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE)):
            self.decompose = (func.py_kernels.get(_COMPOSITE)
                              or functools.partial(func._op_dk, _COMPOSITE))
        self.plain = not (self.handler or self.decompose or self.inplace_view)

    def arg(self, pos: int, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        if 0 <= pos < len(args):
            return args[pos]
        return kwargs.get(name)


_CACHE: dict[Any, tuple[Any, ...]] = {}
_DYNAMIC = (None, None, False, True)
_ALIAS_AS_VIEW = frozenset({"aten::_unsafe_view", "aten::lift_fresh"})
_NO_KERNEL = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
    "aten::new_empty_strided", "aten::_unsafe_view", "aten::lift_fresh", "aten::detach_",
    "aten::resize_", "aten::resize_as_",
})


def info_of(func: Any) -> _Info:
    """The op's _Info, kept on the OpOverload itself: hashing an OpOverload runs Python."""
    info = getattr(func, "_revati_info", None)
    if info is None:
        info = func._revati_info = _Info(func)
    return info


def dispatch(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    try:
        info = func._revati_info
    except AttributeError:  # an op seen for the first time: reading its schema is our time
        with S.link().freeze():
            info = info_of(func)
    if info.plain:
        link = S.link_override if S.link_override is not None else S.link()
        with link.op_freeze():
            return _run(func, info, args, kwargs, link)
    if info.handler is not None:
        return info.handler(func, info, args, kwargs)
    if info.decompose is not None:
        return info.decompose(*args, **kwargs)
    if info.inplace_view:
        return _inplace_view(func, args, kwargs)
    link = S.link_override if S.link_override is not None else S.link()
    with link.op_freeze():
        return _run(func, info, args, kwargs, link)


_PLAIN = frozenset({int, float, bool, str, type(None), torch.dtype, torch.memory_format,
                    torch.layout})


def _scan(xs: Sequence[Any], sig: list[Any], st: list[Any]) -> None:
    """Append the cache signature of each argument to `sig`; st = [device, any meta-backed
    input, output device from a `device` argument]."""
    for x in xs:
        tx = type(x)
        if tx is VirtualTensor:
            if st[0] < 0:
                st[0] = x._d
            if x._a.host is None:
                st[1] = True
            sig.append(x._s)
        elif tx in _PLAIN:
            sig.append(x)
        elif tx is list or tx is tuple:
            inner: list[Any] = []
            _scan(x, inner, st)
            sig.append(tuple(inner))
        elif isinstance(x, torch.Tensor):
            sig.append((x.shape, x.stride(), x.dtype, x.device))
        elif tx is torch.device:
            if x.type == "cuda":
                st[2] = S.device_index(x)
            sig.append(x)
        elif isinstance(x, torch._C.Generator):
            sig.append(None)
        else:
            sig.append(x)


def _run(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any], link: Any) -> Any:
    sig: list[Any] = []
    st: list[Any] = [-1, False, -1]
    _scan(args, sig, st)
    if kwargs:
        kw: list[Any] = []
        _scan(kwargs.values(), kw, st)
        key: Any = (info, tuple(sig), tuple(kwargs), tuple(kw))
        device_kw = kwargs.get("device")
        if device_kw is not None and torch.device(device_kw).type != "cuda":
            # a *_like / new_* factory onto the host: a plain CPU tensor, no launch
            return func(*_convert(args, _META, True), **_convert_kw(kwargs, _META, True))
    else:
        key = (info, tuple(sig))
    dev = st[2] if st[2] >= 0 else st[0] if st[0] >= 0 else THREAD.device
    try:
        entry = _CACHE.get(key)
    except TypeError:  # an unhashable argument: no caching for this call
        key, entry = None, None
    if entry is None:
        entry = _miss(func, info, key, args, kwargs)
    tmpl, spec, fresh_small, dynamic = entry
    if info.view:
        return _build(spec, args, kwargs, dev, info.name)
    write = info.write
    target = info.arg(write[1], write[2], args, kwargs) if write else None
    host_target = type(target) is VirtualTensor and target._a.host is not None
    if dynamic or host_target or (fresh_small and not st[1]):
        try:
            out, outs = _host_run(func, info, args, kwargs, dev)
        except NotImplementedError:
            if dynamic or host_target:
                raise
            # a CUDA-only op (flash attention) has no CPU kernel to compute small results
            # with: they stay meta-backed, as large ones are
            if key is not None:
                _CACHE[key] = (tmpl, spec, False, dynamic)
            out = _build(spec, args, kwargs, dev, info.name)
        else:
            if tmpl is None and not info.nokernel:
                tmpl = _template(info.name, _convert(args, _META, False),
                                 _convert_kw(kwargs, _META, False), outs)
    else:
        out = _build(spec, args, kwargs, dev, info.name)
    if tmpl is not None:
        emit(link, dev, *tmpl)
    return out


# -- argument conversion: virtual tensors to meta tensors (shape inference) or to their values
def _meta_of(t: VirtualTensor) -> torch.Tensor:
    off = t.storage_offset()
    if not off:
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=_META)
    n = _nbytes(t.shape, t.stride(), 1) + off
    return torch.empty(n, dtype=t.dtype, device=_META).as_strided(t.shape, t.stride(), off)


def _convert(xs: Sequence[Any], device: torch.device, keep_devices: bool) -> list[Any]:
    out: list[Any] = []
    for x in xs:
        tx = type(x)
        if tx is VirtualTensor:
            out.append(_meta_of(x) if device is _META else host_values(x))
        elif tx is list or tx is tuple:
            out.append(tx(_convert(x, device, keep_devices)))
        elif isinstance(x, torch.Tensor):
            out.append(x.to(_META) if device is _META and x.device.type != "meta" else x)
        elif tx is torch.device and x.type == "cuda" and not keep_devices:
            out.append(device)
        else:
            out.append(x)
    return out


def _convert_kw(kwargs: dict[str, Any], device: torch.device, keep_devices: bool,
                ) -> dict[str, Any]:
    if not kwargs:
        return kwargs
    values = _convert(list(kwargs.values()), device, keep_devices)
    out = dict(zip(kwargs, values, strict=True))
    if device is _META:
        out.pop("generator", None)  # meta kernels refuse generators; no values to draw anyway
    return out


def _template(name: str, args: Sequence[Any], kwargs: dict[str, Any], outs: list[torch.Tensor],
              ) -> tuple[int, str, str, tuple[int, ...]]:
    family, dtype, feats = ops.classify(name, args, kwargs, outs)
    return family, name, dtype, feats


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for x in out for t in _flat(x)]
    return []


# -- output specs: what the meta run said, to rebuild outputs without running anything
def _miss(func: Any, info: _Info, key: Any, args: Sequence[Any], kwargs: dict[str, Any],
          ) -> tuple[Any, ...]:
    margs, mkwargs = _convert(args, _META, False), _convert_kw(kwargs, _META, False)
    try:
        mout = func(*margs, **mkwargs)
    except Exception:  # data-dependent output shapes (nonzero, masked_select...): run on values
        if info.view:  # a view's shape never depends on values: its error is the caller's
            raise
        entry = _DYNAMIC
    else:
        fresh: list[bool] = []
        spec = _spec(info, mout, margs, mkwargs, fresh)
        tmpl = None if info.nokernel else _template(info.name, margs, mkwargs, _flat(mout))
        entry = (tmpl, spec, all(fresh), False)
    if key is not None:
        if len(_CACHE) >= CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = entry
    return entry


def _leaf_spec(t: torch.Tensor, alias: tuple[int, int, str], margs: Sequence[Any],
               mkwargs: dict[str, Any], fresh: list[bool]) -> tuple[Any, ...]:
    kind, pos, name = alias
    if kind == FRESH:
        n = t.untyped_storage().nbytes()
        fresh.append(n <= host_limit(t.dtype))
        return (FRESH, t.shape, t.stride(), t.dtype, n)
    src = margs[pos] if 0 <= pos < len(margs) else mkwargs[name]
    if kind == WRITE:
        return (WRITE, t.shape, t.stride(), t.dtype, pos, name)
    if isinstance(src, (list, tuple)):
        src = src[0]
    # A view's offset moves with its base's; in bytes, the distance is the same for any base
    # offset (true for slicing, dtype views, as_strided without an explicit offset).
    delta = t.storage_offset() * t.element_size() - src.storage_offset() * src.element_size()
    return (VIEW, t.shape, t.stride(), t.dtype, pos, name, delta)


def _spec(info: _Info, mout: Any, margs: Sequence[Any], mkwargs: dict[str, Any],
          fresh: list[bool]) -> Any:
    def leaf(x: Any, alias: tuple[int, int, str]) -> Any:
        if isinstance(x, torch.Tensor):
            return ("t", _leaf_spec(x, alias, margs, mkwargs, fresh))
        if isinstance(x, list) and x and all(isinstance(y, torch.Tensor) for y in x):
            return ("l", [_leaf_spec(y, alias, margs, mkwargs, fresh) for y in x])
        return ("v", x)

    aliases = info.outs or [(FRESH, -1, "")]
    if len(aliases) == 1:
        return leaf(mout, aliases[0])
    return ("tuple" if isinstance(mout, tuple) else "list",
            [leaf(x, aliases[i] if i < len(aliases) else (FRESH, -1, ""))
             for i, x in enumerate(mout)])


def _build_leaf(leaf: tuple[Any, ...], args: Sequence[Any], kwargs: dict[str, Any], dev: int,
                origin: str) -> Any:
    kind = leaf[0]
    if kind == FRESH:
        return _wrap(leaf[1], leaf[2], 0, leaf[3], dev,
                     Allocation(S.mem[dev], leaf[4], None, origin), None)
    pos, name = leaf[4], leaf[5]
    src = args[pos] if 0 <= pos < len(args) else kwargs[name]
    if kind == WRITE:
        if src.shape != leaf[1] or src.stride() != leaf[2]:  # an out= tensor was resized
            resize(src, leaf[1], leaf[2])
        src._a.origin = origin  # the error for an unreadable tensor names its last writer
        return src
    if type(src) is not VirtualTensor:
        src = src[0]
    itemsize = torch._utils._element_size(leaf[3])
    offset = (src.storage_offset() * src.element_size() + leaf[6]) // itemsize
    return _view(leaf[1], leaf[2], offset, leaf[3], src, None)


def _view(size: Sequence[int], stride: Sequence[int], offset: int, dtype: torch.dtype,
          src: VirtualTensor, host_view: torch.Tensor | None) -> VirtualTensor:
    if _inference_enabled() and not src.is_inference():
        # A view of a normal tensor stays a normal tensor in inference mode: autograd sets
        # its version counter, which an inference tensor cannot have.
        guard = torch._C._InferenceMode(False)
        try:
            return _wrap(size, stride, offset, dtype, src._d, src._a, host_view)
        finally:
            del guard
    return _wrap(size, stride, offset, dtype, src._d, src._a, host_view)


def _build(spec: Any, args: Sequence[Any], kwargs: dict[str, Any], dev: int, origin: str) -> Any:
    kind, body = spec
    if kind == "t":
        return _build_leaf(body, args, kwargs, dev, origin)
    if kind == "v":
        return body
    if kind == "l":
        return [_build_leaf(y, args, kwargs, dev, origin) for y in body]
    out = [_build(x, args, kwargs, dev, origin) for x in body]
    return tuple(out) if kind == "tuple" else out


# -- the host path: run the op on values
def _host_run(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any], dev: int,
              ) -> tuple[Any, list[torch.Tensor]]:
    hargs, hkwargs = _convert(args, _CPU, False), _convert_kw(kwargs, _CPU, False)
    if info.random and hkwargs.get("generator") is None:  # draw from the device's generator
        hkwargs = {**hkwargs, "generator": S.generators[dev]}
    hout = func(*hargs, **hkwargs)
    aliases = info.outs or [(FRESH, -1, "")]

    def wrap(x: torch.Tensor, alias: tuple[int, int, str]) -> Any:
        kind, pos, name = alias
        if kind == WRITE:
            target = info.arg(pos, name, args, kwargs)
            if target.shape != x.shape or target.stride() != x.stride():
                resize(target, x.shape, x.stride(), x.storage_offset(), x)
            return target
        if kind == VIEW:
            src = info.arg(pos, name, args, kwargs)
            if type(src) is not VirtualTensor:
                src = src[0]
            return _view(x.shape, x.stride(), x.storage_offset(), x.dtype, src, x)
        nbytes = x.untyped_storage().nbytes()
        if nbytes <= host_limit(x.dtype):
            alloc = Allocation(S.mem[dev], nbytes, x.untyped_storage(), info.name)
            return _wrap(x.shape, x.stride(), x.storage_offset(), x.dtype, dev, alloc, x)
        return _wrap(x.shape, x.stride(), 0, x.dtype, dev,
                     Allocation(S.mem[dev], nbytes, None, info.name), None)

    def leaf(x: Any, alias: tuple[int, int, str]) -> Any:
        if isinstance(x, torch.Tensor):
            return wrap(x, alias)
        if isinstance(x, list) and x and all(isinstance(y, torch.Tensor) for y in x):
            return [wrap(y, alias) for y in x]
        return x

    if len(aliases) == 1:
        return leaf(hout, aliases[0]), _flat(hout)
    out = [leaf(x, aliases[i] if i < len(aliases) else (FRESH, -1, ""))
           for i, x in enumerate(hout)]
    return (tuple(out) if isinstance(hout, tuple) else out), _flat(hout)


# -- metadata changes of a wrapper in place
def resize(t: VirtualTensor, size: Sequence[int], stride: Sequence[int],
           offset: int | None = None, host_view: torch.Tensor | None = None) -> None:
    """Set a wrapper's sizes and strides in place (out= resizing, in-place view ops, set_):
    meta kernels run on the wrapper itself, below the Python key. `host_view`: the CPU tensor
    holding its values after the change, when host-backed."""
    itemsize = t.element_size()
    offset = t.storage_offset() if offset is None else offset
    need = offset * itemsize + _nbytes(size, stride, itemsize)
    alloc = t._a
    if need > alloc.nbytes:  # growth: a new block, as the caching allocator would give
        host = None if host_view is None else host_view.untyped_storage()
        if host is None and alloc.host is not None and need <= host_limit(t.dtype):
            host = torch.zeros(need, dtype=torch.uint8).untyped_storage()
        t._a = Allocation(S.mem[t._d], need, host, alloc.origin)
    t._v = host_view
    aten = torch.ops.aten
    with torch.utils._mode_utils.no_dispatch():
        meta = torch._C._meta_in_tls_dispatch_include()
        torch._C._set_meta_in_tls_dispatch_include(True)
        try:
            if need > _wrapper_storage_bytes(t):
                # Give the wrapper a storage large enough (a wrapper's storage has no data;
                # its size only bounds the metadata as_strided_ may set).
                big = _mk(VirtualTensor, [-(-need // itemsize)], dtype=t.dtype, device=t.device)
                torch._functionalize_unsafe_set(t, big)
            aten.as_strided_.default(t, list(size), list(stride), offset)
            t._s = (t.shape, t.stride(), t.dtype)
        finally:
            torch._C._set_meta_in_tls_dispatch_include(meta)


def _wrapper_storage_bytes(t: VirtualTensor) -> int:
    with torch.utils._mode_utils.no_dispatch():
        return t.untyped_storage().nbytes()


def _inplace_view(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    t = args[0]
    m = func(*_convert(args, _META, False), **_convert_kw(kwargs, _META, False))
    resize(t, m.shape, m.stride(), m.storage_offset())  # the meta input had t's offset
    return t


# -- special ops
def _item(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    t = args[0]
    link = S.link()
    with link.op_freeze():
        emit(link, t._d, _HOST_COPY, "aten::_local_scalar_dense",
             ops.dtype_name(t.dtype), (t.element_size(), _D2H))
    sync_current(link, t._d, "item()")
    with link.freeze():
        return host_values(t).item()


def _read(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Ops whose result is a host value computed from device data (equal, is_nonzero)."""
    dev = next(a._d for a in args if type(a) is VirtualTensor)
    link = S.link()
    sync_current(link, dev, info.name)
    with link.freeze():
        return func(*_convert(args, _CPU, False), **_convert_kw(kwargs, _CPU, False))


def _copy(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    dst, src = args[0], args[1]
    non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    dst_v, src_v = type(dst) is VirtualTensor, type(src) is VirtualTensor
    link = S.link()
    if dst_v and src_v and dst._d == src._d:
        with link.op_freeze():
            return _run(func, info, args, kwargs, link)
    nbytes = ops.tensor_bytes(src)
    dtype = ops.dtype_name(src.dtype)
    if dst_v and src_v:  # between two virtual GPUs
        with link.op_freeze():
            emit(link, dst._d, _P2P, "aten::copy_", dtype, (nbytes, src._d))
            if dst._a.host is not None:
                host_values(dst).copy_(host_values(src))
        return dst
    if dst_v:  # host to device
        with link.op_freeze():
            emit(link, dst._d, _HOST_COPY, "aten::copy_", dtype,
                 (nbytes, _H2D))
            if dst._a.host is not None:
                host_values(dst).copy_(src)
        return dst
    # device to host
    with link.op_freeze():
        emit(link, src._d, _HOST_COPY, "aten::copy_", dtype, (nbytes, _D2H))
    if not (non_blocking and is_pinned(dst)):
        sync_current(link, src._d, "copy to host")
    with link.freeze():
        dst.copy_(host_values(src))
    return dst


def _to_copy(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    t = args[0]
    device = kwargs.get("device")
    link = S.link()
    if device is not None and torch.device(device).type == "meta":  # shape only: no kernel
        return torch.empty_strided(t.shape, t.stride(), dtype=kwargs.get("dtype") or t.dtype,
                                   device="meta")
    if device is not None and torch.device(device).type == "cpu":  # device to host
        non_blocking = kwargs.get("non_blocking", False)
        with link.op_freeze():
            emit(link, t._d, _HOST_COPY, "aten::_to_copy", ops.dtype_name(t.dtype),
                 (ops.tensor_bytes(t), _D2H))
            if non_blocking:  # lands in pinned memory, with no wait: one freeze for all
                return mark_pinned(_host_copy(func, t, kwargs))
        sync_current(link, t._d, "copy to host")
        with link.freeze():
            return _host_copy(func, t, kwargs)
    target = t._d if device is None else S.device_index(device)
    if target == t._d:
        with link.op_freeze():
            return _run(func, info, args, kwargs, link)
    with link.op_freeze():  # between two virtual GPUs
        dtype = kwargs.get("dtype") or t.dtype
        emit(link, target, _P2P, "aten::_to_copy", ops.dtype_name(t.dtype),
             (ops.tensor_bytes(t), t._d))
        out = new_tensor(t.shape, contiguous_strides(t.shape), dtype, target, "aten::_to_copy")
        if out._a.host is not None:
            host_values(out).copy_(host_values(t))
        return out


def _host_copy(func: Any, t: VirtualTensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """`t`'s values copied into a new CPU tensor by `_to_copy` itself (dtype, memory
    format)."""
    return func(host_values(t), **{k: v for k, v in kwargs.items()
                                   if k not in ("non_blocking", "pin_memory")})


def _to(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """`t.to(device="cpu", ...)` goes straight to _to_copy's handler: the composite `to`
    would come back through the Python dispatcher for it (~5 us more, counted as program
    time); so does `t.to(dtype)`, frozen (_to_dtype). Every other `to` is the composite's
    (which returns `t` itself where nothing changes), frozen as one op: under inference mode
    even a `to` that changes nothing comes through here (`x.float()` on a float tensor, 6-10
    us of Python a call on a 2-core EPYC, against 0.2-0.9 us for the C++ composite on a real
    device). A `to` that may copy to the host stays unfrozen, since its wait for the device
    is program time."""
    device = kwargs.get("device")
    if len(args) == 1 and device is not None and torch.device(device).type == "cpu":
        copy_kwargs = {k: v for k, v in kwargs.items() if k != "copy"}
        return _to_copy(_TO_COPY, info_of(_TO_COPY), args, copy_kwargs)
    if func is _TO_DTYPE and kwargs.get("memory_format") is None:
        with S.link().op_freeze():
            return _to_dtype(*args, **kwargs)
    if _to_host(device) or any(_to_host(a) for a in args[1:]):
        return func.decompose(*args, **kwargs)
    with S.link().op_freeze():
        return func.decompose(*args, **kwargs)


def _to_dtype(t: VirtualTensor, dtype: torch.dtype, non_blocking: bool = False,
              copy: bool = False, memory_format: None = None) -> VirtualTensor:
    """`t.to(dtype)` as the composite does it, without its trip back through the dispatcher
    for the copy (~10 us of ~26 a call; SGLang converts a few index tensors so every step):
    `t` itself where nothing changes, else `_to_copy`."""
    if dtype == t.dtype and not copy:
        return t
    kwargs: dict[str, Any] = {"dtype": dtype}
    if non_blocking:
        kwargs["non_blocking"] = True
    return _to_copy(_TO_COPY, info_of(_TO_COPY), (t,), kwargs)


def _to_host(arg: Any) -> bool:
    """Whether a `to` argument may send the tensor off the virtual devices: a device (or
    device string) other than CUDA, or a tensor (`to(other)`) that is not virtual."""
    if isinstance(arg, (torch.device, str)):
        return torch.device(arg).type != "cuda"
    return isinstance(arg, torch.Tensor) and type(arg) is not VirtualTensor


_TO_COPY = torch.ops.aten._to_copy.default
_TO_DTYPE = torch.ops.aten.to.dtype


def contiguous_strides(size: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for s in reversed(size):
        strides.append(acc)
        acc *= max(s, 1)
    return strides[::-1]


def _masked_sdpa_backend() -> Any:
    """The kernel SDPA with a mask runs on the virtual SKU (flash takes no mask): cuDNN's on
    Hopper and later, as torch 2.11 picked on an H200 (results/h200-full/kernels.csv), unless
    turned off; memory-efficient attention before Hopper."""
    backend = torch.nn.attention.SDPBackend
    if S.spec["capability"][0] >= 9 and torch.backends.cuda.cudnn_sdp_enabled():
        return backend.CUDNN_ATTENTION
    return backend.EFFICIENT_ATTENTION


def _sdp_choice(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    """The fused kernel a GPU would pick: FlashAttention, or with a mask cuDNN's or
    memory-efficient attention. The composite SDPA then calls it: one ATTENTION event."""
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    backend = torch.nn.attention.SDPBackend
    return int(backend.FLASH_ATTENTION if mask is None else _masked_sdpa_backend())


def _set(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    t = args[0]
    src = args[1] if len(args) > 1 else None
    if type(src) is not VirtualTensor:
        raise NotImplementedError(f"revati: {func} on a virtual tensor needs a virtual source")
    t._a = src._a
    resize(t, src.shape, src.stride(), src.storage_offset())
    return t


def _resize(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    t, size = args[0], list(args[1])
    resize(t, size, contiguous_strides(size), 0 if t.numel() == 0 else None)
    return t


def _noop(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    return None


def _false(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    return False


def _pin(func: Any, info: _Info, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    raise RuntimeError(f"cannot pin '{args[0].type()}' only dense CPU tensors can be pinned")


_HANDLERS: dict[str, Callable[..., Any]] = {
    "aten::_local_scalar_dense": _item,
    "aten::equal": _read,
    "aten::is_nonzero": _read,
    "aten::copy_": _copy,
    "aten::_to_copy": _to_copy,
    "aten::to": _to,
    "aten::_fused_sdp_choice": _sdp_choice,
    "aten::set_": _set,
    "aten::resize_": _resize,
    "aten::record_stream": _noop,
    "aten::_assert_async": _noop,
    "aten::_functional_assert_async": _noop,
    "aten::is_pinned": _false,
    "aten::_pin_memory": _pin,
}


def run_python_impl(op: str, impl: Callable[..., Any]) -> None:
    """Run framework op `op` ("ns::name") on virtual tensors through its Python
    implementation `impl` instead of its shape-only fake: for opaque custom ops that wrap a
    whole layer (vLLM's fused MoE), so the layer's own kernels are seen. Register before the
    op is first called."""
    _HANDLERS[op] = lambda func, info, args, kwargs: impl(*args, **kwargs)


# -- pinned host memory (the CPU-only build has no pinned allocator; nor has a driverless GPU
# build). Pinned-ness matters for one thing: a non-blocking copy into pinned memory does not
# make the host wait. Storages are remembered by address while their tensor lives.
_pinned: dict[int, int] = {}


def mark_pinned(t: torch.Tensor) -> torch.Tensor:
    ptr = t.untyped_storage().data_ptr()
    if ptr:
        _pinned[ptr] = _pinned.get(ptr, 0) + 1
        weakref.finalize(t, _unpin, ptr)
    return t


def _unpin(ptr: int) -> None:
    n = _pinned.get(ptr, 0) - 1
    if n <= 0:
        _pinned.pop(ptr, None)
    else:
        _pinned[ptr] = n


def is_pinned(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.untyped_storage().data_ptr() in _pinned


# -- CUDA-key kernels: tensor creation with a cuda device, and copies below the Python key
def _empty_kernel(size: Sequence[int], dtype: torch.dtype | None = None, layout: Any = None,
                  device: Any = None, pin_memory: bool | None = None,
                  memory_format: Any = None) -> VirtualTensor:
    dtype = dtype or torch.get_default_dtype()
    if memory_format is None or memory_format == torch.contiguous_format:
        stride: Sequence[int] = contiguous_strides(size)
    else:
        stride = torch.empty(size, dtype=dtype, device=_META, memory_format=memory_format).stride()
    return _create(size, stride, dtype, device)


def _empty_strided_kernel(size: Sequence[int], stride: Sequence[int],
                          dtype: torch.dtype | None = None, layout: Any = None,
                          device: Any = None, pin_memory: bool | None = None) -> VirtualTensor:
    return _create(size, stride, dtype or torch.get_default_dtype(), device)


def _create(size: Sequence[int], stride: Sequence[int], dtype: torch.dtype, device: Any,
            ) -> VirtualTensor:
    link = S.link()
    with link.op_freeze():
        return new_tensor(list(size), list(stride), dtype, S.device_index(device), "aten::empty")


def _copy_kernel(dst: Any, src: Any, non_blocking: bool = False) -> Any:
    func = torch.ops.aten.copy_.default
    return _copy(func, info_of(func), (dst, src, non_blocking), _EMPTY)


def _sdpa_autograd(query: Any, key: Any, value: Any, attn_mask: Any = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                   enable_gqa: bool = False) -> Any:
    """SDPA above autograd: the fused kernel a GPU picks. Without this, the composite would
    fall back to its math decomposition (the CPU-only build has no CUDA kernel chooser, and a
    GPU build's chooser asks the driver) and attention would be a dozen bmm/softmax events."""
    aten = torch.ops.aten
    if attn_mask is None:
        return aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    if _masked_sdpa_backend() == torch.nn.attention.SDPBackend.CUDNN_ATTENTION:
        return aten._scaled_dot_product_cudnn_attention(
            query, key, value, attn_mask, False, dropout_p, is_causal, False, scale=scale)[0]
    return aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, False, dropout_p, is_causal, scale=scale)[0]


_library: torch.library.Library | None = None


def register_kernels() -> None:
    global _library
    if _library is not None:
        return
    import warnings

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # on a GPU build these override the real CUDA kernels
        warnings.simplefilter("ignore")
        lib.impl("empty.memory_format", _empty_kernel, "CUDA")
        lib.impl("empty_strided", _empty_strided_kernel, "CUDA")
        lib.impl("copy_", _copy_kernel, "CUDA")
        lib.impl("scaled_dot_product_attention", _sdpa_autograd, "AutogradCUDA")
    _library = lib
