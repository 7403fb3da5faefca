"""The CUDA device guard: what lets c10 handle tensors whose device is `cuda` with no CUDA.

c10 looks up one `DeviceGuardImplInterface` per device type in a global registry whenever it
must know or switch "the current device" of a tensor (Python indexing, autograd metadata,
`torch.Stream`/`torch.Event`). The CPU-only build leaves the CUDA slot empty, so indexing a
`cuda` tensor fails with "PyTorch is not linked with support for cuda devices"; the CUDA build
with no driver fills it with the real guard, which calls the driver and fails.

No compiler is needed to fill it. torch exposes a pybind trampoline guard for backends
written in Python (`torch._C._acc.DeviceGuard`, registered into the PrivateUse1 slot); its
device type comes from the Python method `type_`. We register one that answers CUDA, copy the
slot's pointer into the CUDA slot of the exported registry
(`c10::impl::device_guard_impl_registry`), and clear the PrivateUse1 slot again so that no
other backend sees a CUDA guard under its own type. Every other method of the trampoline is
a C++ no-op (device 0, default stream), which is all the guard needs to do here: the current
device and stream that serving code reads are kept by Revati in Python.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_REGISTRY_SYMBOL = "_ZN3c104impl26device_guard_impl_registryE"
_guard: Any = None  # the trampoline object: the registry holds a raw pointer into it


def install_cuda_guard() -> None:
    """Make the CUDA slot of c10's guard registry a no-op guard. Idempotent."""
    global _guard
    if _guard is not None:
        return
    import torch

    device_type = torch._C._autograd.DeviceType
    cuda, private = int(device_type.CUDA), int(device_type.PrivateUse1)
    libc10 = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so"))
    base = ctypes.addressof(ctypes.c_void_p.in_dll(libc10, _REGISTRY_SYMBOL))
    slots = (ctypes.c_void_p * (private + 1)).from_address(base)
    if slots[private]:
        raise RuntimeError("revati: the PrivateUse1 device guard is taken; virtual CUDA needs "
                           "it free while it installs its CUDA guard")

    class _CudaGuard(torch._C._acc.DeviceGuard):
        def type_(self) -> Any:
            return device_type.CUDA

    guard = _CudaGuard()
    torch._C._acc.register_python_privateuseone_device_guard(guard)
    slots[cuda] = slots[private]
    slots[private] = None
    _guard = guard
