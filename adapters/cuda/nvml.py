"""A stand-in for `pynvml`: NVML's answers for the virtual GPUs.

Frameworks ask NVML (not torch) for device facts before they touch CUDA: vLLM's CUDA platform
reads the count, names, compute capability, memory and NVLink peers through pynvml.
`install_as_pynvml()` registers this module under the name `pynvml`, so those queries describe
the emulated SKU (glue for a framework that vendors its own copy, as vLLM does with
`vllm.third_party.pynvml`, points that name here too). Memory usage is the virtual
allocator's: what the process reserved plus the CUDA context, as nvidia-smi would show.

Before virtual CUDA is installed in the process, `nvmlInit` fails like on a host with no
NVIDIA driver.
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Any

from revati.adapters.cuda.state import S

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_P2P_CAPS_INDEX_READ = 0
NVML_P2P_CAPS_INDEX_WRITE = 1
NVML_P2P_CAPS_INDEX_NVLINK = 2
NVML_P2P_CAPS_INDEX_ATOMICS = 3
NVML_P2P_CAPS_INDEX_PROP = 4
NVML_P2P_STATUS_OK = 0
NVML_P2P_STATUS_NOT_SUPPORTED = 5
NVML_TOPOLOGY_INTERNAL = 0
NVML_TOPOLOGY_SINGLE = 10
NVML_TOPOLOGY_MULTIPLE = 20
NVML_TOPOLOGY_HOSTBRIDGE = 30
NVML_TOPOLOGY_NODE = 40
NVML_TOPOLOGY_SYSTEM = 50
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_GRAPHICS = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_NVLINK_MAX_LINKS = 18
DRIVER_VERSION = "570.133.20"
CUDA_DRIVER_VERSION = 12080


class NVMLError(Exception):
    _messages = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    }

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._messages.get(self.value, f"NVML error {self.value}")


NVMLError_LibraryNotFound = type("NVMLError_LibraryNotFound", (NVMLError,), {})
NVMLError_NotSupported = type("NVMLError_NotSupported", (NVMLError,), {})


@dataclass(frozen=True)
class _Handle:
    index: int


@dataclass
class c_nvmlMemory_t:
    total: int
    free: int
    used: int


@dataclass
class c_nvmlUtilization_t:
    gpu: int = 0
    memory: int = 0


@dataclass
class c_nvmlPciInfo_t:
    busId: str
    domain: int = 0
    bus: int = 0
    device: int = 0
    pciDeviceId: int = 0x233010DE


_initialized = 0


def _check() -> None:
    if not S.installed:
        raise NVMLError_LibraryNotFound(NVML_ERROR_LIBRARY_NOT_FOUND)
    if not _initialized:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _handle_index(handle: _Handle) -> int:
    _check()
    if not isinstance(handle, _Handle) or not 0 <= handle.index < S.num_gpus:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return handle.index


def nvmlInit() -> None:
    global _initialized
    if not S.installed:
        raise NVMLError_LibraryNotFound(NVML_ERROR_LIBRARY_NOT_FOUND)
    _initialized += 1


def nvmlInitWithFlags(flags: int) -> None:
    nvmlInit()


def nvmlShutdown() -> None:
    global _initialized
    _check()
    _initialized -= 1


def nvmlSystemGetDriverVersion() -> str:
    _check()
    return DRIVER_VERSION


def nvmlSystemGetCudaDriverVersion() -> int:
    _check()
    return CUDA_DRIVER_VERSION


nvmlSystemGetCudaDriverVersion_v2 = nvmlSystemGetCudaDriverVersion


def nvmlDeviceGetCount() -> int:
    _check()
    return S.num_gpus


def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
    _check()
    if not 0 <= index < S.num_gpus:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _Handle(index)


def _props(handle: _Handle) -> Any:
    from revati.adapters.cuda.surface import get_device_properties

    return get_device_properties(_handle_index(handle))


def nvmlDeviceGetHandleByUUID(uuid: str | bytes) -> _Handle:
    _check()
    text = uuid.decode() if isinstance(uuid, bytes) else uuid
    for i in range(S.num_gpus):
        if _props(_Handle(i)).uuid == text:
            return _Handle(i)
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetIndex(handle: _Handle) -> int:
    return _handle_index(handle)


nvmlDeviceGetMinorNumber = nvmlDeviceGetIndex


def nvmlDeviceGetName(handle: _Handle) -> str:
    return _props(handle).name


def nvmlDeviceGetUUID(handle: _Handle) -> str:
    return _props(handle).uuid


def nvmlDeviceGetCudaComputeCapability(handle: _Handle) -> tuple[int, int]:
    props = _props(handle)
    return props.major, props.minor


def nvmlDeviceGetMemoryInfo(handle: _Handle, version: int | None = None,
                            ) -> c_nvmlMemory_t:
    m = S.mem[_handle_index(handle)]
    free = m.free_bytes
    return c_nvmlMemory_t(total=m.total, free=free, used=m.total - free)


def nvmlDeviceGetPciInfo(handle: _Handle) -> c_nvmlPciInfo_t:
    bus = _props(handle).pci_bus_id
    return c_nvmlPciInfo_t(busId=f"00000000:{bus:02X}:00.0", bus=bus)


nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo


def nvmlDeviceGetP2PStatus(handle: _Handle, peer: _Handle, index: int) -> int:
    _handle_index(handle)
    _handle_index(peer)
    nvlink = str(S.spec.get("interconnect", {}).get("kind", "")).startswith("nvlink")
    return NVML_P2P_STATUS_OK if nvlink or index != NVML_P2P_CAPS_INDEX_NVLINK \
        else NVML_P2P_STATUS_NOT_SUPPORTED


def nvmlDeviceGetTopologyCommonAncestor(handle: _Handle, peer: _Handle) -> int:
    _handle_index(handle)
    _handle_index(peer)
    return NVML_TOPOLOGY_NODE


def nvmlDeviceGetNvLinkState(handle: _Handle, link: int) -> int:
    _handle_index(handle)
    nvlink = str(S.spec.get("interconnect", {}).get("kind", "")).startswith("nvlink")
    return NVML_FEATURE_ENABLED if nvlink and S.num_gpus > 1 else NVML_FEATURE_DISABLED


def nvmlDeviceGetMultiGPUBoard(handle: _Handle) -> int:
    _handle_index(handle)
    return 0


def nvmlDeviceGetNumGpuCores(handle: _Handle) -> int:
    return _props(handle).multi_processor_count * 128


def nvmlDeviceGetUtilizationRates(handle: _Handle) -> c_nvmlUtilization_t:
    _handle_index(handle)
    return c_nvmlUtilization_t()


def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
    _handle_index(handle)
    return 40


def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
    _handle_index(handle)
    return 100_000


def nvmlDeviceGetClockInfo(handle: _Handle, clock: int) -> int:
    _handle_index(handle)
    return S.spec["mem_clock_mhz"] if clock == NVML_CLOCK_MEM else S.spec["sm_clock_mhz"]


nvmlDeviceGetMaxClockInfo = nvmlDeviceGetClockInfo


# -- confidential computing (SGLang asks at start-up, utils/common.py is_confidential_compute):
# off on every virtual GPU, answered the way pynvml's real functions answer (ctypes structure
# filled in place, return code checked with _nvmlCheckReturn).
NVML_CC_SYSTEM_FEATURE_DISABLED = 0
NVML_CC_SYSTEM_FEATURE_ENABLED = 1
NVML_CC_SYSTEM_MULTIGPU_NONE = 0
NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE = 1


class c_nvmlSystemConfComputeSettings_v1_t(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("environment", ctypes.c_uint),
                ("ccFeature", ctypes.c_uint), ("devToolsMode", ctypes.c_uint),
                ("multiGpuMode", ctypes.c_uint)]


class c_nvmlConfComputeSystemState_t(ctypes.Structure):
    _fields_ = [("environment", ctypes.c_uint), ("ccFeature", ctypes.c_uint),
                ("devToolsMode", ctypes.c_uint)]


def nvmlSystemGetConfComputeSettings(settings: Any) -> int:
    _check()
    return NVML_SUCCESS  # the structure stays zeroed: feature disabled, no multi-GPU mode


def nvmlSystemGetConfComputeState() -> c_nvmlConfComputeSystemState_t:
    _check()
    return c_nvmlConfComputeSystemState_t()


def _nvmlCheckReturn(ret: int) -> int:
    if ret != NVML_SUCCESS:
        raise NVMLError(ret)
    return ret


def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[Any]:
    _handle_index(handle)
    return []


def install_as_pynvml() -> None:
    """Answer `import pynvml` with this module."""
    me = sys.modules[__name__]
    sys.modules["pynvml"] = me
