"""The process's virtual CUDA state: SKU, devices, allocators, link, and per-thread current
device and stream. One instance, `S`, filled by `install()`."""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from revati.adapters import gpu_link

if TYPE_CHECKING:
    import torch

    from revati.adapters.cuda.allocator import DeviceMemory
    from revati.adapters.cuda.oracle import TokenOracle
    from revati.adapters.cuda.streams import Stream
    from revati.adapters.gpu_link import GpuLink


class _Thread(threading.local):
    """CUDA keeps the current device and each device's current stream per host thread."""

    def __init__(self) -> None:
        self.device = 0
        self.streams: list[Stream] = list(S.default_streams)
        # host time the real machine would have spent in this thread's launches so far and
        # that has not passed yet (S.host_cost_ns): its launches carry it, its next wait
        # for the device spends it (settle_host_time)
        self.host_owed_ns = 0


class State:
    def __init__(self) -> None:
        self.installed = False
        self.sku = ""
        self.spec: dict[str, Any] = {}
        self.num_gpus = 0
        self.link_override: GpuLink | None = None
        self.host_bytes = 0
        self.host_float_bytes = 0
        self.oracle: TokenOracle | None = None
        # op name -> host ns a launch of it costs on the real machine beyond its dispatch
        self.host_cost_ns: dict[str, int] = {}
        self.mem: list[DeviceMemory] = []
        self.devices: list[torch.device] = []
        self.default_streams: list[Stream] = []  # THREAD copies them for each new thread
        self.generators: list[torch.Generator] = []  # per device, for host-backed draws
        self.event_ids = itertools.count(1)
        self.graph_pools = itertools.count(1)

    def link(self) -> GpuLink:
        return self.link_override or gpu_link.current()

    def device_index(self, device: Any = None) -> int:
        """A device argument (None, int, str, torch.device) as a virtual device index."""
        if device is None:
            return THREAD.device
        if isinstance(device, int):
            index = device
        else:
            import torch

            device = torch.device(device)
            if device.type != "cuda":
                raise ValueError(f"Expected a cuda device, but got: {device}")
            index = THREAD.device if device.index is None else device.index
        if not 0 <= index < self.num_gpus:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index} (this session has "
                               f"{self.num_gpus} virtual {self.sku} GPU(s))")
        return index


S = State()
THREAD = _Thread()  # install() runs __init__ again in its thread, once default streams exist


def settle_host_time(link: GpuLink) -> None:
    """Before the thread waits for the device: let the host time its launches owe pass. The
    wait then ends when the device is done, or at once if it already is: max(host, device),
    as on the real machine."""
    owed = THREAD.host_owed_ns
    if owed:
        THREAD.host_owed_ns = 0
        link.spend_host(owed)
