"""The torch.cuda / torch.accelerator surface of the virtual GPUs.

Serving code learns about its GPUs from Python functions (`torch.cuda.*`, `torch.accelerator.*`,
`torch.Stream`, `torch.Event`, `torch.Generator`, pinned-memory factories). On the CPU-only
build they raise ("Torch not compiled with CUDA enabled"), on the CUDA build with no driver
they report no device. `patch()` replaces each with one that answers for the emulated SKU
and the virtual allocator. It replaces module attributes, so code that looks them up at call
time (`torch.cuda.mem_get_info()`) sees the virtual ones; it runs right after torch's import,
before user code copies any of them into its own namespace.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils._device

from revati.adapters.cuda import factories, graphs, streams, tensor
from revati.adapters.cuda.state import THREAD, S

_CUDA = int(torch._C._autograd.DeviceType.CUDA)


class DeviceProperties:
    """What torch.cuda.get_device_properties() returns, for the SKU."""

    def __init__(self, spec: dict[str, Any], index: int) -> None:
        self.name: str = spec["name"]
        self.major, self.minor = spec["capability"]
        self.total_memory: int = spec["memory_bytes"]
        self.multi_processor_count: int = spec["sm_count"]
        self.L2_cache_size: int = spec["l2_bytes"]
        self.max_threads_per_multi_processor: int = spec["max_threads_per_sm"]
        self.regs_per_multiprocessor: int = spec["regs_per_sm"]
        self.shared_memory_per_block_optin: int = spec["smem_per_block_optin"]
        self.shared_memory_per_block = 49152
        self.shared_memory_per_multiprocessor = spec["smem_per_block_optin"] + 1024
        self.clock_rate: int = spec["sm_clock_mhz"] * 1000
        self.memory_clock_rate: int = spec["mem_clock_mhz"] * 1000
        self.memory_bus_width: int = spec["mem_bus_width"]
        self.warp_size = 32
        self.is_integrated = False
        self.is_multi_gpu_board = False
        self.gcnArchName = "NVIDIA CUDA"
        self.uuid = f"GPU-7e0a71ba-0000-4000-8000-{index:012x}"
        self.pci_bus_id = 0x18 + index
        self.pci_device_id = 0
        self.pci_domain_id = 0

    def __repr__(self) -> str:
        return (f"_CudaDeviceProperties(name='{self.name}', major={self.major}, "
                f"minor={self.minor}, total_memory={self.total_memory // (1 << 20)}MB, "
                f"multi_processor_count={self.multi_processor_count}, uuid={self.uuid[4:]}, "
                f"pci_bus_id={self.pci_bus_id}, pci_device_id={self.pci_device_id}, "
                f"pci_domain_id={self.pci_domain_id}, "
                f"L2_cache_size={self.L2_cache_size // (1 << 20)}MB)")


# -- devices
def is_available() -> bool:
    return True


def device_count() -> int:
    return S.num_gpus


def current_device() -> int:
    return THREAD.device


def set_device(device: Any) -> None:
    if device is not None and not (isinstance(device, int) and device < 0):
        THREAD.device = S.device_index(device)


class device:
    """torch.cuda.device(d): d is the current device inside the block."""

    def __init__(self, device: Any) -> None:
        negative = device is None or (isinstance(device, int) and device < 0)
        self.idx = -1 if negative else S.device_index(device)  # -1: leave the device alone
        self.prev_idx = -1

    def __enter__(self) -> None:
        if self.idx >= 0:
            self.prev_idx = THREAD.device
            THREAD.device = self.idx

    def __exit__(self, *exc: object) -> None:
        if self.idx >= 0:
            THREAD.device = self.prev_idx


def device_of(obj: Any) -> device:
    return device(obj.get_device() if isinstance(obj, torch.Tensor) and obj.is_cuda else None)


@functools.cache
def get_device_properties(device: Any = None) -> DeviceProperties:
    return DeviceProperties(S.spec, S.device_index(device))


def get_device_name(device: Any = None) -> str:
    return get_device_properties(S.device_index(device)).name


def get_device_capability(device: Any = None) -> tuple[int, int]:
    props = get_device_properties(S.device_index(device))
    return props.major, props.minor


def get_arch_list() -> list[str]:
    major, minor = S.spec["capability"]
    return ["sm_80", "sm_86", "sm_90", "sm_100", "sm_120", f"sm_{major}{minor}"]


def is_bf16_supported(including_emulation: bool = True) -> bool:
    return S.spec["capability"][0] >= 8


def _mem(device: Any = None) -> Any:
    return S.mem[S.device_index(device)]


# -- memory
def mem_get_info(device: Any = None) -> tuple[int, int]:
    m = _mem(device)
    return m.free_bytes, m.total


def memory_allocated(device: Any = None) -> int:
    return _mem(device).allocated


def max_memory_allocated(device: Any = None) -> int:
    return _mem(device).peak_allocated


def memory_reserved(device: Any = None) -> int:
    return _mem(device).reserved


def max_memory_reserved(device: Any = None) -> int:
    return _mem(device).peak_reserved


def reset_peak_memory_stats(device: Any = None) -> None:
    _mem(device).reset_peak()


def reset_accumulated_memory_stats(device: Any = None) -> None:
    m = _mem(device)
    m.alloc_count = m.free_count = m.num_ooms = 0


def memory_stats(device: Any = None) -> OrderedDict[str, Any]:
    return OrderedDict(sorted(_mem(device).stats().items()))


def empty_cache() -> None:
    for m in S.mem:
        m.empty_cache()


def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
    m = _mem(device)
    return (f"|  Virtual {S.spec['name']} (cuda:{m.index})  |\n"
            f"|  allocated: {m.allocated} B (peak {m.peak_allocated} B)  |\n"
            f"|  reserved:  {m.reserved} B (peak {m.peak_reserved} B)  |\n")


def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
    m = _mem(device)
    m.context_bytes = max(m.context_bytes, int(m.total * (1 - fraction)))


def device_memory_used(device: Any = None) -> int:
    m = _mem(device)
    return m.total - m.free_bytes


# -- random numbers: a CPU generator per device draws what host-backed tensors need
class _GeneratorType(type(torch._C.Generator)):  # type: ignore[misc]
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch._C.Generator)


PHILOX_STATE_BYTES = 16  # a CUDA generator's state: its seed (uint64) and offset (int64)


class Generator(torch._C.Generator, metaclass=_GeneratorType):
    """torch.Generator that also accepts a cuda device: a CPU generator that says cuda, and
    whose state reads and writes as a CUDA generator's (Philox: seed and offset, 16 bytes;
    DTensor's random ops move the offset per shard). Setting a state reseeds the CPU generator
    from both, so that the same state draws the same values again."""

    def __new__(cls, device: Any = "cpu") -> Any:
        target = torch.device(device)
        if target.type != "cuda":
            return torch._C.Generator(target)
        g = super().__new__(cls, "cpu")
        g.cuda_index = S.device_index(target)
        g._reseed(torch._C.Generator.initial_seed(g), 0)
        return g

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", self.cuda_index)

    def manual_seed(self, seed: int) -> Generator:  # type: ignore[override]
        return self._reseed(int(seed) % (1 << 64), 0)

    def seed(self) -> int:
        seed = torch._C.Generator.seed(self)  # a fresh one, as torch draws it
        self._reseed(seed, 0)
        return seed

    def initial_seed(self) -> int:
        return self.philox[0]

    def get_state(self) -> torch.Tensor:
        seed, offset = self.philox
        return torch.tensor([seed - (1 << 64) if seed >= 1 << 63 else seed, offset],
                            dtype=torch.int64).view(torch.uint8)

    def set_state(self, new_state: torch.Tensor) -> Generator:  # type: ignore[override]
        if new_state.dtype != torch.uint8 or new_state.numel() != PHILOX_STATE_BYTES:
            raise RuntimeError(f"RNG state must be a torch.ByteTensor of {PHILOX_STATE_BYTES} "
                               "bytes (a CUDA generator's seed and offset)")
        seed, offset = new_state.contiguous().view(torch.int64).tolist()
        return self._reseed(seed % (1 << 64), offset)

    def _reseed(self, seed: int, offset: int) -> Generator:
        """Draw from here on as (seed, offset) says: the same pair, the same values."""
        torch._C.Generator.manual_seed(self, (seed * 0x9E3779B97F4A7C15 + offset) % (1 << 64))
        self.philox = (seed, offset)
        return self


def manual_seed(seed: int) -> None:
    S.generators[THREAD.device].manual_seed(int(seed))


def manual_seed_all(seed: int) -> None:
    for g in S.generators:
        g.manual_seed(int(seed))


def seed() -> None:
    S.generators[THREAD.device].seed()


def seed_all() -> None:
    for g in S.generators:
        g.seed()


def initial_seed() -> int:
    return S.generators[THREAD.device].initial_seed()


def get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return S.generators[S.device_index(device)].get_state()


def set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
    S.generators[S.device_index(device)].set_state(new_state)


def get_rng_state_all() -> list[torch.Tensor]:
    return [g.get_state() for g in S.generators]


def set_rng_state_all(new_states: list[torch.Tensor]) -> None:
    for g, state in zip(S.generators, new_states, strict=False):
        g.set_state(state)


# -- torch.Stream / torch.Event on the accelerator, and torch.accelerator.Graph
class _StreamType(type(streams.Stream)):  # type: ignore[misc]
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch._C.Stream)


class AcceleratorStream(streams.Stream, metaclass=_StreamType):
    """torch.Stream: a virtual stream for cuda (the accelerator), a real one otherwise."""

    def __new__(cls, device: Any = None, priority: int = 0, *, stream_id: int | None = None,
                device_index: int | None = None, device_type: int | None = None) -> Any:
        if device_type is not None and device_type != _CUDA:
            return torch._C.Stream(stream_id=stream_id, device_index=device_index,
                                   device_type=device_type)
        if device is not None and torch.device(device).type != "cuda":
            return torch._C.Stream(device, priority)
        if device is None and device_index is not None:
            device = device_index
        return streams.Stream.__new__(cls, device, priority, stream_id=stream_id)


class _EventType(type(streams.Event)):  # type: ignore[misc]
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, torch._C.Event)


class AcceleratorEvent(streams.Event, metaclass=_EventType):
    """torch.Event(device=None, *, enable_timing=...): virtual for cuda, real otherwise."""

    def __new__(cls, device: Any = None, *, enable_timing: bool = False, blocking: bool = False,
                interprocess: bool = False) -> Any:
        if device is not None and torch.device(device).type != "cuda":
            return torch._C.Event(device, enable_timing=enable_timing, blocking=blocking,
                                  interprocess=interprocess)
        return streams.Event.__new__(cls, enable_timing, blocking, interprocess)


class AcceleratorGraph(graphs.CUDAGraph):
    """torch.accelerator.Graph: a CUDAGraph that is also its own capture context."""

    def __init__(self, keep_graph: bool = False, *, pool: tuple[int, int] | None = None,
                 capture_error_mode: str = "default") -> None:
        super().__init__(keep_graph)
        self.graph_pool = pool
        self.capture_error_mode = capture_error_mode

    def capture_begin(self, pool: tuple[int, int] | None = None,  # type: ignore[override]
                      capture_error_mode: str | None = None) -> None:
        super().capture_begin(pool or self.graph_pool,
                              capture_error_mode or self.capture_error_mode)

    def instantiate(self) -> None:
        pass

    def __enter__(self) -> None:
        streams.synchronize()
        self.capture_begin()

    def __exit__(self, *exc: object) -> None:
        self.capture_end()


# -- nvtx: ranges have no cost on a virtual GPU
@contextlib.contextmanager
def _nvtx_range(msg: str, *args: Any, **kwargs: Any) -> Iterator[None]:
    yield


def _nvtx() -> types.ModuleType:
    m = types.ModuleType("torch.cuda.nvtx")
    m.range_push = lambda msg: 0  # type: ignore[attr-defined]
    m.range_pop = lambda: 0  # type: ignore[attr-defined]
    m.range_start = lambda msg: 0  # type: ignore[attr-defined]
    m.range_end = lambda range_id: None  # type: ignore[attr-defined]
    m.mark = lambda msg: None  # type: ignore[attr-defined]
    m.range = _nvtx_range  # type: ignore[attr-defined]
    return m


# -- modules moved onto a virtual device
_DATA = torch.Tensor.data


class _ParameterData:
    """`Parameter.data`, whose setter also moves a parameter onto a virtual device in place.
    `Module.to("cuda")` moves a CPU parameter with `param.data = moved`, and a CPU tensor and a
    virtual one count as compatible for that; the parameter would take the virtual tensor's
    bare TensorImpl (a `cuda` tensor that is no VirtualTensor, whose first op fails in
    PyTorch's absent CUDA backend, and whose allocation is gone). Instead the parameter object
    becomes the virtual one (`swap_tensors`), so that it stays the same object: weights tied
    between modules stay one tensor, counted once, as on a GPU."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else _DATA.__get__(obj)

    def __set__(self, obj: Any, new: Any) -> None:
        if type(new) is tensor.VirtualTensor and type(obj) is not tensor.VirtualTensor:
            torch.utils.swap_tensors(obj, torch.nn.Parameter(new, obj.requires_grad))
        else:
            _DATA.__set__(obj, new)


# -- pinned memory on the host
def _pin_memory(self: torch.Tensor, device: Any = None) -> torch.Tensor:
    if isinstance(self, tensor.VirtualTensor):
        raise RuntimeError(f"cannot pin '{self.type()}' only dense CPU tensors can be pinned")
    if tensor.is_pinned(self):
        return self
    return tensor.mark_pinned(self.clone())


def _is_pinned(self: torch.Tensor, device: Any = None) -> bool:
    return not isinstance(self, tensor.VirtualTensor) and tensor.is_pinned(self)


def _pinning(factory: Callable[..., torch.Tensor],
             build: Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor | None] | None = None,
             ) -> Callable[..., torch.Tensor]:
    """`factory` with `pin_memory` marking pinned host tensors, after `build` (a factories
    builder) for the calls it makes directly."""
    @functools.wraps(factory)
    def make(*args: Any, pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
        if build is not None and not pin_memory:
            made = build(args, kwargs)
            if made is not None:
                return made
        out = factory(*args, **kwargs)
        if pin_memory and out.device.type == "cpu":
            tensor.mark_pinned(out)
        return out

    make.revati_original = factory  # type: ignore[attr-defined]
    return make


def _tensor_from_data(factory: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`torch.tensor(data, device="cuda")`: the host tensor built from `data` (the program's
    own work, as on a real device), then its copy to the virtual device frozen as one op.
    Left to PyTorch, the copy reaches Revati through the CUDA key's Python kernels for `empty`
    and `copy_`, whose way in and out ran unfrozen: 5-20 us of program time a call on a 2-core
    EPYC, ~7 calls a step of transformers' continuous batching."""
    pinning = _pinning(factory)

    @functools.wraps(factory)
    def make(data: Any, *, device: Any = None, requires_grad: bool = False,
             pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
        if device is None or requires_grad or torch.device(device).type != "cuda":
            return pinning(data, device=device, requires_grad=requires_grad,
                           pin_memory=pin_memory, **kwargs)
        host = factory(data, **kwargs)
        with S.link().op_freeze():
            return host.to(device)

    make.revati_original = factory  # type: ignore[attr-defined]
    return make


_PINNABLE = ("empty", "zeros", "ones", "full", "empty_strided", "tensor", "arange", "empty_like",
             "zeros_like", "ones_like", "full_like", "rand", "randn", "randint", "randperm")


def _set(module: Any, **attrs: Any) -> None:
    for name, value in attrs.items():
        setattr(module, name, value)


def patch() -> None:
    """Point torch's CUDA and accelerator Python API at the virtual devices. Idempotent."""
    cuda = torch.cuda
    device_fns = dict(
        is_available=is_available, device_count=device_count, current_device=current_device,
        set_device=set_device, device=device, device_of=device_of,
        get_device_properties=get_device_properties, get_device_name=get_device_name,
        get_device_capability=get_device_capability, get_arch_list=get_arch_list,
        is_bf16_supported=is_bf16_supported, is_tf32_supported=lambda: True,
        is_initialized=lambda: True, init=lambda: None, _lazy_init=lambda: None,
        _initialized=True, ipc_collect=lambda: None,
        synchronize=streams.synchronize, current_blas_handle=lambda: 0,
        set_sync_debug_mode=lambda debug_mode: None, get_sync_debug_mode=lambda: 0,
        utilization=lambda device=None: 0, temperature=lambda device=None: 40,
        power_draw=lambda device=None: 100_000,
        clock_rate=lambda device=None: S.spec["sm_clock_mhz"],
        can_device_access_peer=lambda device, peer_device: True,
        _get_device_index=lambda device, optional=False, allow_cpu=False:
            S.device_index(device),
    )
    memory_fns = dict(
        mem_get_info=mem_get_info, memory_allocated=memory_allocated,
        max_memory_allocated=max_memory_allocated, memory_reserved=memory_reserved,
        max_memory_reserved=max_memory_reserved, memory_cached=memory_reserved,
        max_memory_cached=max_memory_reserved, reset_peak_memory_stats=reset_peak_memory_stats,
        reset_max_memory_allocated=reset_peak_memory_stats,
        reset_max_memory_cached=reset_peak_memory_stats,
        reset_accumulated_memory_stats=reset_accumulated_memory_stats, memory_stats=memory_stats,
        empty_cache=empty_cache, memory_summary=memory_summary,
        set_per_process_memory_fraction=set_per_process_memory_fraction,
        get_per_process_memory_fraction=lambda device=None: 1.0,
        get_allocator_backend=lambda: "native", device_memory_used=device_memory_used,
        list_gpu_processes=lambda device=None: "no processes are running",
        MemPool=graphs.MemPool, use_mem_pool=graphs.use_mem_pool,
    )
    stream_fns = dict(
        Stream=streams.Stream, Event=streams.Event, current_stream=streams.current_stream,
        default_stream=streams.default_stream, set_stream=streams.set_stream,
        stream=streams.stream, StreamContext=streams.StreamContext,
    )
    graph_fns = dict(
        CUDAGraph=graphs.CUDAGraph, graph=graphs.graph,
        graph_pool_handle=graphs.graph_pool_handle,
        is_current_stream_capturing=graphs.is_current_stream_capturing,
    )
    random_fns = dict(
        manual_seed=manual_seed, manual_seed_all=manual_seed_all, seed=seed, seed_all=seed_all,
        initial_seed=initial_seed, get_rng_state=get_rng_state, set_rng_state=set_rng_state,
        get_rng_state_all=get_rng_state_all, set_rng_state_all=set_rng_state_all,
        default_generators=tuple(S.generators),
    )
    nvtx = _nvtx()
    _set(cuda, **device_fns, **memory_fns, **stream_fns, **graph_fns, **random_fns, nvtx=nvtx)
    sys.modules["torch.cuda.nvtx"] = nvtx
    _set(cuda.memory, **memory_fns)
    _set(cuda.random, **random_fns)
    _set(cuda.streams, Stream=streams.Stream, Event=streams.Event)
    _set(cuda.graphs, **graph_fns)
    cuda._utils._get_device_index = device_fns["_get_device_index"]
    torch.backends.cuda.is_built = lambda: True

    acc = torch.accelerator
    acc_fns = dict(
        is_available=is_available, device_count=device_count,
        current_accelerator=lambda check_available=False: torch.device("cuda"),
        current_device_index=current_device, current_device_idx=current_device,
        set_device_index=set_device, set_device_idx=set_device,
        current_stream=streams.current_stream, set_stream=streams.set_stream,
        synchronize=streams.synchronize, device_index=device, Graph=AcceleratorGraph,
        get_device_capability=lambda device=None: {
            "supported_dtypes": set(tensor.ops.DTYPE_NAMES)},
    )
    acc_memory = dict(
        empty_cache=empty_cache, empty_host_cache=lambda: None, memory_stats=memory_stats,
        memory_allocated=memory_allocated, max_memory_allocated=max_memory_allocated,
        memory_reserved=memory_reserved, max_memory_reserved=max_memory_reserved,
        reset_peak_memory_stats=reset_peak_memory_stats,
        reset_accumulated_memory_stats=reset_accumulated_memory_stats,
        get_memory_info=mem_get_info,
    )
    _set(acc, **acc_fns, **acc_memory)
    _set(acc.memory, **acc_memory)
    # the accelerator as a CUDA build on a GPU machine reports it to code that asks torch._C
    # (transformers builds its tensor-parallel device mesh on this type)
    torch._C._get_accelerator = lambda check_available=False: torch.device("cuda")
    _set(torch, Stream=AcceleratorStream, Event=AcceleratorEvent, Generator=Generator)

    if not isinstance(vars(torch.nn.Parameter).get("data"), _ParameterData):
        torch.nn.Parameter.data = _ParameterData()  # type: ignore[assignment]

    tensor_cls = torch.Tensor
    if not hasattr(tensor_cls.pin_memory, "revati"):
        _pin_memory.revati = True  # type: ignore[attr-defined]
        tensor_cls.pin_memory = _pin_memory  # type: ignore[method-assign]
        tensor_cls.is_pinned = _is_pinned  # type: ignore[method-assign]
        # torch.device("cuda") contexts recognise factories by identity, from a set built
        # on first use: build it now, with the functions our wrappers end up calling.
        torch.utils._device._device_constructors()
        for name in _PINNABLE:
            original = getattr(torch, name)
            if name == "tensor":
                setattr(torch, name, _tensor_from_data(original))
            else:
                build = factories.builder(name) if name in factories.DIRECT else None
                setattr(torch, name, _pinning(original, build))
    if torch.version.cuda is None:  # the CPU-only build: say what a CUDA 12 build says
        torch.version.cuda = "12.8"
