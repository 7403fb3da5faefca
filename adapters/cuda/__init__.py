"""Virtual CUDA for PyTorch: `num_gpus` GPUs of a SKU, with no GPU.

`install(sku, num_gpus)` runs once per process, at start-up (the session runtime calls it right
after torch's import; calling it earlier imports torch itself). After it, unchanged PyTorch
code sees `torch.cuda.is_available()`, creates `cuda:N` tensors, launches kernels, syncs,
captures graphs and runs collectives; each kernel becomes a launch event on the GpuLink and
each synchronisation a wait in virtual time. See docs/virtual-cuda.md.

Importing this package does not import torch.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from revati.adapters.cuda.oracle import TokenOracle

if TYPE_CHECKING:
    import torch

    from revati.adapters.cuda.state import State
    from revati.adapters.gpu_link import GpuLink

__all__ = ["DEFAULT_CONTEXT_BYTES", "DEFAULT_HOST_BYTES", "DEFAULT_HOST_FLOAT_BYTES",
           "TokenOracle", "install", "is_installed", "keep_slices", "launch", "set_oracle",
           "uva_view"]

DEFAULT_HOST_BYTES = 1 << 20
"""Integer and boolean allocations up to this size are host-backed: their values are real."""
DEFAULT_HOST_FLOAT_BYTES = 16 << 10
"""Floating point allocations up to this size are host-backed."""
DEFAULT_CONTEXT_BYTES = 512 << 20
"""Device memory the CUDA context and kernel images take before the first allocation."""

_lock = threading.Lock()


def install(sku: str, num_gpus: int, link: GpuLink | None = None, *,
            host_bytes: int = DEFAULT_HOST_BYTES, host_float_bytes: int = DEFAULT_HOST_FLOAT_BYTES,
            context_bytes: int = DEFAULT_CONTEXT_BYTES,
            oracle: TokenOracle | None = None, nvml: bool = True,
            distributed: bool = True, nodriver: bool = True,
            host_costs: dict[str, float] | None = None) -> None:
    """Present `num_gpus` virtual GPUs of `sku` (a key or alias of predictors/skus/specs.json)
    to PyTorch in this process.

    link: where launches and waits go; None uses the process's installed GpuLink
        (revati.adapters.gpu_link.current()) at each use.
    host_bytes, host_float_bytes: integer/boolean and floating point allocations up to this
        many bytes keep real values (host-backed); larger ones are meta-backed.
    context_bytes: device memory reserved by the CUDA context (not allocatable).
    oracle: source of values read back that no kernel computed (default: TokenOracle()).
    nvml: answer `import pynvml` with revati.adapters.cuda.nvml.
    distributed: register the `revati` torch.distributed backend (nccl maps to it).
    nodriver: with no real driver, load a stand-in libcuda.so.1 before the first import of a
        CUDA extension package that links it (sgl-kernel...), so that it imports (nodriver.py).
    host_costs: op name -> seconds of host time a launch of it costs on the real machine
        beyond what its dispatch costs here (the CUDA side of the op: launch, library work
        such as cuDNN's graph builds, which a CPU-only build never runs). Each launch is
        stamped that much later, and the thread spends the sum before it next waits for the
        device (state.settle_host_time).

    Idempotent: a second call with the same SKU and count only updates `link` and `oracle`.
    """
    from revati.predictors import skus

    spec = skus.device_spec(sku)  # specs.json, or a profiled device (host-cpu)
    if num_gpus < 1:
        raise ValueError("num_gpus must be at least 1")
    with _lock:
        from revati.adapters.cuda.state import S

        if S.installed:
            if (skus.resolve(sku), num_gpus) != (S.sku, S.num_gpus):
                raise RuntimeError(
                    f"revati: virtual CUDA is already installed with {S.num_gpus} x {S.sku}; "
                    f"cannot switch to {num_gpus} x {sku} in the same process")
            if link is not None:
                S.link_override = link
            if oracle is not None:
                S.oracle = oracle
            if host_costs is not None:
                S.host_cost_ns = _to_ns(host_costs)
            return
        with _frozen(link):
            _install(S, skus.resolve(sku), spec, num_gpus, link,
                     (host_bytes, host_float_bytes), context_bytes, oracle or TokenOracle())
            S.host_cost_ns = _to_ns(host_costs or {})
            if nvml:
                from revati.adapters.cuda import nvml as nvml_module

                nvml_module.install_as_pynvml()
            if distributed:
                from revati.adapters.cuda import distributed as dist_module

                dist_module.install()
            if nodriver:
                from revati.adapters.cuda import nodriver as nodriver_module

                nodriver_module.install()


def _to_ns(costs: dict[str, float]) -> dict[str, int]:
    return {op: round(s * 1e9) for op, s in costs.items() if s > 0}


def _frozen(link: GpuLink | None) -> AbstractContextManager[None]:
    """Installing is Revati's own time (imports, patching): keep it out of virtual time when
    a link is there to freeze the clock."""
    from revati.adapters import gpu_link

    if link is None:
        try:
            link = gpu_link.current()
        except RuntimeError:  # no session yet: nothing to freeze
            return contextlib.nullcontext()
    return link.freeze()


def _install(S: State, sku: str, spec: dict[str, Any], num_gpus: int, link: GpuLink | None,
             host_bytes: tuple[int, int], context_bytes: int, oracle: TokenOracle) -> None:
    import torch

    from revati.adapters.cuda import guard, streams, surface, tensor
    from revati.adapters.cuda.allocator import DeviceMemory
    from revati.adapters.cuda.state import THREAD

    S.sku, S.spec, S.num_gpus = sku, spec, num_gpus
    S.link_override = link
    S.host_bytes, S.host_float_bytes = host_bytes
    S.oracle = oracle
    S.mem = [DeviceMemory(i, spec["memory_bytes"], context_bytes) for i in range(num_gpus)]
    S.devices = [torch.device("cuda", i) for i in range(num_gpus)]
    S.generators = [surface.Generator(f"cuda:{i}") for i in range(num_gpus)]
    S.default_streams = [streams.Stream(i, stream_id=0) for i in range(num_gpus)]
    THREAD.__init__()
    guard.install_cuda_guard()
    tensor.register_kernels()
    # torch imports DTensor (and sympy with it: about a second) the first time any tensor
    # subclass reaches the dispatcher; do it now, while the clock is frozen for installing,
    # not at the program's first kernel.
    with contextlib.suppress(ImportError):
        importlib.import_module("torch.distributed.tensor")
    surface.patch()
    from revati.adapters.cuda import triton as triton_launches
    from revati.adapters.postimport import when_imported

    when_imported("triton", triton_launches.install)
    S.installed = True


def is_installed() -> bool:
    from revati.adapters.cuda.state import S

    return S.installed


def set_oracle(oracle: TokenOracle) -> None:
    """Replace the token oracle (framework glue does this once it knows the model's vocabulary
    and EOS ids)."""
    from revati.adapters.cuda.state import S

    S.oracle = oracle


def uva_view(cpu_tensor: torch.Tensor, device: int | None = None) -> torch.Tensor:
    """A virtual `cuda` view of a (pinned) CPU tensor, as `cudaHostGetDevicePointer` gives
    under unified virtual addressing: device code sees the host's values, live."""
    from revati.adapters.cuda.state import THREAD
    from revati.adapters.cuda.tensor import uva_view as view

    return view(cpu_tensor, THREAD.device if device is None else device)


def keep_slices(tensor: torch.Tensor) -> None:
    """Mark a persistent virtual `cuda` buffer that serving code slices to each step's batch
    size: `tensor[a:b]` then hands out the same view again while neither changed shape in
    place. Only for buffers that live as long as the engine (a kept view holds its base).
    Anything else (CPU tensors, None) is left as it is."""
    from revati.adapters.cuda.tensor import VirtualTensor
    from revati.adapters.cuda.tensor import keep_slices as keep

    if type(tensor) is VirtualTensor:
        keep(tensor)


def launch(family: int, op: str, dtype: str, feats: tuple[int, ...],
           device: int | None = None) -> None:
    """One kernel that framework glue describes itself (a fused norm, an attention call with
    the batch composition from the framework's metadata), launched on the current stream of
    `device` (default: the thread's current device); recorded instead when that stream
    captures a graph. Features follow revati.predictors.launch."""
    S, THREAD, emit = _launch_deps or _bind_launch_deps()
    link = S.link_override if S.link_override is not None else S.link()
    with link.freeze():
        emit(link, THREAD.device if device is None else device, family, op, dtype, feats)


_launch_deps: tuple[Any, Any, Any] | None = None


def _bind_launch_deps() -> tuple[Any, Any, Any]:
    # Bound once, not imported at each call: `launch` runs for every kernel framework glue
    # describes (an import statement costs more than the rest of the call). Importing them
    # with this module would import torch before `install` is asked for.
    global _launch_deps
    from revati.adapters.cuda.state import THREAD, S
    from revati.adapters.cuda.tensor import emit

    _launch_deps = (S, THREAD, emit)
    return _launch_deps
