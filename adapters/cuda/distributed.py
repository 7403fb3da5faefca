"""Collectives on virtual tensors: torch.distributed ops become collective launch events.

Every process-group collective reaches the dispatcher as a `c10d::*` op (and the functional
collectives torch.compile / DTensor use as `_c10d_functional::*` ops); on a virtual tensor it
lands in VirtualTensor's dispatch, whatever backend the group has. The handlers here turn it
into one COLLECTIVE launch via `GpuLink.collective(ev, group, rank)`: revatid completes it on
every rank at max(arrival) + predicted duration. No data moves: outputs keep their shapes
(a host-backed all-gather output gets this rank's own shard, which is cheap and true).

`group` is the same string on every rank: the world's store address and the c10d group name
(c10d names groups identically on every member). Point-to-point send/recv become a P2P launch
that meets its peer as a two-rank rendezvous on a key for the (group, src, dst) pair, so the
n-th send meets the n-th recv.

Bytes (feature `bytes`) are per rank: the shard each rank owns: the tensor for all-reduce and
broadcast, one rank's input for all-gather and all-to-all, one rank's output for
reduce-scatter. reduce is costed as all-reduce, gather as all-gather, scatter as broadcast.

`install()` registers a `revati` backend (gloo for host tensors; virtual tensors never reach
it) and, where NCCL is not built in or has no driver, makes `nccl` mean `revati`, so
`init_process_group("nccl")` in unchanged serving code works.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from revati.adapters.cuda import ops, tensor
from revati.adapters.cuda.state import THREAD, S
from revati.predictors.launch import Collective, Family, LaunchEvent

_keys: dict[str, str] = {}


def _world() -> str:
    """The address of the default group's store: tells apart two worlds in one session."""
    try:
        from torch.distributed import distributed_c10d as c10d

        store = c10d._get_default_store()
        while hasattr(store, "underlying_store"):
            store = store.underlying_store
        return f"{store.host}:{store.port}"
    except Exception:  # no default group, or a store with no address (file, hash)
        return "world"


def group_key(pg: Any) -> str:
    name = pg.group_name
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = f"{_world()}/{name}"
    return key


def _pg(obj: Any) -> Any:
    """The ProcessGroup of a c10d op argument (the dispatcher hands it over boxed)."""
    if isinstance(obj, torch.ScriptObject):
        return torch.distributed.ProcessGroup.unbox(obj)
    return obj


def _work(result: Any) -> Any:
    """A completed Work, boxed for the dispatcher. Completion on the host is immediate: as
    with NCCL, the collective orders the stream, and the host waits only when it syncs."""
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(result)
    return torch._C._distributed_c10d._create_work_from_future(fut).boxed()


def _device_of(xs: Sequence[Any]) -> tensor.VirtualTensor:
    for x in xs:
        if type(x) is tensor.VirtualTensor:
            return x
        if isinstance(x, (list, tuple)):
            for y in x:
                if type(y) is tensor.VirtualTensor:
                    return y
    raise RuntimeError("revati: a collective with no virtual tensor reached virtual CUDA")


def collective(kind: Collective, like: tensor.VirtualTensor, nbytes: int, ranks: int,
               group: str, rank: int) -> None:
    """Queue one collective launch on the current stream of `like`'s device."""
    op = "custom:all_reduce" if kind == Collective.CUSTOM_ALL_REDUCE else \
        f"nccl:{kind.name.lower()}"
    _rendezvous(Family.COLLECTIVE, op, like, (int(kind), nbytes, ranks), group, rank)


# vLLM and SGLang reduce a tensor-parallel group's small tensors with their own kernels over
# NVLink peer memory, not NCCL: up to 8 MiB, on 2, 4, 6 or 8 GPUs, 16-bit or fp32 data in
# whole 16-byte units (vLLM 0.32 custom_all_reduce.py: max_size 8192 * 1024, should_custom_ar;
# SGLang 0.5.23 custom_all_reduce.py: _MAX_CAR_SIZE). Those kernels need a driver, so the
# adapters cannot create them; they name the collective CUSTOM_ALL_REDUCE instead, which the
# predictor times as such kernels run (predictors/registry.py).
CUSTOM_ALL_REDUCE_MAX_BYTES = 8192 * 1024
_CUSTOM_ALL_REDUCE_RANKS = (2, 4, 6, 8)
_CUSTOM_ALL_REDUCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def custom_all_reduce(t: torch.Tensor, pg: Any) -> bool:
    """All-reduce `t` over the process group `pg` as the frameworks' own kernel does, if they
    would run it for this tensor (True); otherwise emit nothing (False: use NCCL's path)."""
    nbytes = _nbytes(t)
    if type(t) is not tensor.VirtualTensor or t.dtype not in _CUSTOM_ALL_REDUCE_DTYPES \
            or nbytes > CUSTOM_ALL_REDUCE_MAX_BYTES or nbytes % 16 or not t.is_contiguous() \
            or pg.size() not in _CUSTOM_ALL_REDUCE_RANKS:
        return False
    collective(Collective.CUSTOM_ALL_REDUCE, t, nbytes, pg.size(), group_key(pg), pg.rank())
    return True


def _rendezvous(family: Family, op: str, like: tensor.VirtualTensor, feats: tuple[int, ...],
                group: str, rank: int) -> None:
    link = S.link()
    dev = like._d
    with link.freeze():
        stream = THREAD.streams[dev]
        ev = LaunchEvent(int(family), op, ops.dtype_name(like.dtype), dev, stream.stream_id,
                         link.now_ns(), feats)
        if stream.capture is not None:
            stream.capture.events.append(ev)
        else:
            link.collective(ev, group, rank)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _on_pg(kind: Collective, shard: Callable[[Sequence[Any]], int], pg_pos: int,
           returns: Callable[[Sequence[Any], Any], Any]) -> Callable[..., Any]:
    def handle(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        pg = _pg(args[pg_pos])
        collective(kind, _device_of(args[:pg_pos]), shard(args), pg.size(), group_key(pg),
                   pg.rank())
        return returns(args, _work(None))

    return handle


def _sum_bytes(xs: Sequence[Any]) -> int:
    return sum(_nbytes(x) for x in xs)


def _first(xs: Sequence[Any]) -> int:
    return _nbytes(xs[0])


def _tensors0(args: Sequence[Any]) -> int:
    """Bytes of the tensor list in the op's first argument."""
    return _sum_bytes(args[0])


def _tensors1(args: Sequence[Any]) -> int:
    return _sum_bytes(args[1])


def _same(rows: int, size: int) -> int:
    return rows


def _with_tensors(i: int) -> Callable[[Sequence[Any], Any], Any]:
    return lambda args, work: (args[i], work)


def _work_only(args: Sequence[Any], work: Any) -> Any:
    return work


def _gather_own(outs: Sequence[torch.Tensor], inp: torch.Tensor, rank: int) -> None:
    """Put this rank's shard into a host-backed gather output (the others stay as they were)."""
    own = outs[rank]
    if type(own) is tensor.VirtualTensor and own._a.host is not None \
            and type(inp) is tensor.VirtualTensor and inp._a.host is not None:
        tensor.host_values(own).copy_(tensor.host_values(inp))


def _allgather(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    outputs, inputs, pg = args[0], args[1], _pg(args[2])
    collective(Collective.ALL_GATHER, _device_of(inputs), _sum_bytes(inputs), pg.size(),
               group_key(pg), pg.rank())
    for outs, inp in zip(outputs, inputs, strict=True):
        _gather_own(outs, inp, pg.rank())
    return outputs, _work(None)


def _allgather_base(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    out, inp, pg = args[0], args[1], _pg(args[2])
    collective(Collective.ALL_GATHER, inp, _nbytes(inp), pg.size(), group_key(pg), pg.rank())
    if out._a.host is not None and inp._a.host is not None and out.is_contiguous():
        shards = tensor.host_values(out).view(pg.size(), -1)
        shards[pg.rank()].copy_(tensor.host_values(inp).reshape(-1))
    return out, _work(None)


def _p2p(sending: bool) -> Callable[..., Any]:
    def handle(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        tensors, pg, peer = args[0], _pg(args[1]), args[2]
        me = pg.rank()
        src, dst = (me, peer) if sending else (peer, me)
        _rendezvous(Family.P2P, "nccl:send" if sending else "nccl:recv", _device_of(tensors),
                    (_sum_bytes(tensors), peer), f"{group_key(pg)}/p2p/{src}-{dst}",
                    0 if sending else 1)
        return _work(None)

    return handle


def _barrier(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    t, pg = args[0], _pg(args[1])
    collective(Collective.BARRIER, t, 0, pg.size(), group_key(pg), pg.rank())
    tensor.sync_current(S.link(), t._d, "barrier")  # an NCCL barrier waits for the device
    return _work(None)


def _unsupported(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    raise NotImplementedError(f"revati: {info.name} on virtual tensors is not emulated")


# -- functional collectives: (input, ..., group_name) -> new tensor
def _functional(kind: Collective, out_rows: Callable[[int, int], int], inplace: bool = False,
                ) -> Callable[..., Any]:
    def handle(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        from torch.distributed.distributed_c10d import _resolve_process_group

        inp = args[0]
        pg = _resolve_process_group(args[-1])
        size = pg.size()
        rows = out_rows(inp.shape[0] if inp.dim() else 1, size)
        shard = _nbytes(inp) if kind != Collective.REDUCE_SCATTER else _nbytes(inp) // size
        collective(kind, inp, shard, size, group_key(pg), pg.rank())
        if inplace:
            return inp
        link = S.link()
        with link.freeze():
            shape = [rows, *inp.shape[1:]] if inp.dim() else []
            out = tensor.new_tensor(shape, tensor.contiguous_strides(shape), inp.dtype, inp._d,
                                    info.name)
            if rows == inp.shape[0] and out._a.host is not None and inp._a.host is not None:
                tensor.host_values(out).copy_(tensor.host_values(inp))
            return out

    return handle


def _wait_tensor(func: Any, info: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    return args[0]


_HANDLERS: dict[str, Callable[..., Any]] = {
    "c10d::allreduce_": _on_pg(Collective.ALL_REDUCE, _tensors0, 1, _with_tensors(0)),
    "c10d::allreduce_coalesced_": _on_pg(Collective.ALL_REDUCE, _tensors0, 1, _work_only),
    "c10d::reduce_": _on_pg(Collective.ALL_REDUCE, _tensors0, 1, _work_only),
    "c10d::broadcast_": _on_pg(Collective.BROADCAST, _tensors0, 1, _with_tensors(0)),
    "c10d::allgather_": _allgather,
    "c10d::_allgather_base_": _allgather_base,
    "c10d::allgather_coalesced_": _on_pg(Collective.ALL_GATHER, _tensors1, 2,
                                         _work_only),
    "c10d::allgather_into_tensor_coalesced_": _on_pg(
        Collective.ALL_GATHER, _tensors1, 2, _work_only),
    "c10d::gather_": _on_pg(Collective.ALL_GATHER, _tensors1, 2, _work_only),
    "c10d::reduce_scatter_": _on_pg(Collective.REDUCE_SCATTER, _tensors0, 2,
                                    _with_tensors(0)),
    "c10d::_reduce_scatter_base_": _on_pg(Collective.REDUCE_SCATTER, _first, 2,
                                          _with_tensors(0)),
    "c10d::reduce_scatter_tensor_coalesced_": _on_pg(
        Collective.REDUCE_SCATTER, _tensors0, 2, _work_only),
    "c10d::scatter_": _on_pg(Collective.BROADCAST, _tensors0, 2,
                             _with_tensors(0)),
    "c10d::alltoall_": _on_pg(Collective.ALL_TO_ALL, _tensors1, 2,
                              _with_tensors(0)),
    "c10d::alltoall_base_": _on_pg(Collective.ALL_TO_ALL, lambda a: _nbytes(a[1]), 2,
                                   _work_only),
    "c10d::send": _p2p(sending=True),
    "c10d::recv_": _p2p(sending=False),
    "c10d::recv_any_source_": _unsupported,
    "c10d::barrier": _barrier,
    "c10d::monitored_barrier_": _barrier,
    "_c10d_functional::all_reduce": _functional(Collective.ALL_REDUCE, _same),
    "_c10d_functional::all_reduce_": _functional(Collective.ALL_REDUCE, _same, inplace=True),
    "_c10d_functional::broadcast": _functional(Collective.BROADCAST, _same),
    "_c10d_functional::broadcast_": _functional(Collective.BROADCAST, _same, inplace=True),
    "_c10d_functional::all_gather_into_tensor": _functional(
        Collective.ALL_GATHER, lambda rows, size: rows * size),
    "_c10d_functional::reduce_scatter_tensor": _functional(
        Collective.REDUCE_SCATTER, lambda rows, size: rows // size),
    "_c10d_functional::wait_tensor": _wait_tensor,
}


def handler(name: str) -> Callable[..., Any] | None:
    """The dispatch handler of a c10d op on virtual tensors (None: an unknown c10d op)."""
    return _HANDLERS.get(name, _unsupported if name.startswith("c10d::") else None)


def _create_backend(store: Any, rank: int, size: int, timeout: Any) -> Any:
    from torch.distributed import ProcessGroupGloo

    return ProcessGroupGloo(store, rank, size, timeout)


def _nccl_to_revati(fn: Callable[..., Any], position: int) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if len(args) > position and isinstance(args[position], str):
            args = (*args[:position], _translate(args[position]), *args[position + 1:])
        elif isinstance(kwargs.get("backend"), str):
            kwargs["backend"] = _translate(kwargs["backend"])
        return fn(*args, **kwargs)

    call.revati_original = fn  # type: ignore[attr-defined]
    return call


def _translate(backend: str) -> str:
    return "revati" if "nccl" in backend.lower() else backend


def install() -> None:
    """Register the `revati` backend, and route `nccl` to it where NCCL cannot run. Idempotent."""
    import torch.distributed as dist

    if not dist.is_available() or hasattr(dist.Backend, "REVATI"):
        return
    dist.Backend.register_backend("revati", _create_backend, devices=["cpu", "cuda"])
    if dist.is_nccl_available() and torch._C._cuda_getDeviceCount() > 0:
        return
    dist.init_process_group = _nccl_to_revati(dist.init_process_group, 0)
    dist.distributed_c10d.init_process_group = dist.init_process_group
    dist.new_group = _nccl_to_revati(dist.new_group, 2)
    dist.distributed_c10d.new_group = dist.new_group
