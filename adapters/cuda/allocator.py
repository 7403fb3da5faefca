"""The virtual caching allocator: every byte of every virtual tensor, per device.

Counting follows PyTorch's CUDA caching allocator closely enough for what serving code reads
(vLLM sizes its KV cache from these numbers):
  - an allocation is rounded up to 512 bytes (the allocator's block granularity);
  - `allocated` is the sum of live allocations, `reserved` is what the allocator holds from the
    device: it grows in 2 MiB segments, keeps freed memory until `empty_cache()`, and is what
    `mem_get_info()` subtracts from the total together with the CUDA context;
  - allocating past the device's capacity raises `torch.OutOfMemoryError` with the message
    PyTorch prints, so code that catches it and retries with less behaves as on the GPU.

An `Allocation` is shared by a tensor and all of its views; it is released when the last of
them dies (plain reference counting, as the real allocator frees on the last storage ref).
"""

from __future__ import annotations

from typing import Any

BLOCK = 512
SEGMENT = 2 << 20
ADDRESS_BASE = 0x7F00_0000_0000  # virtual device addresses start here: never 0, never a host one


def _round(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def format_size(n: int) -> str:
    """Bytes as PyTorch's allocator prints them in its OOM message."""
    if n <= 1 << 20:
        return f"{n / 1024:.2f} KiB"
    if n <= 1 << 30:
        return f"{n / (1 << 20):.2f} MiB"
    return f"{n / (1 << 30):.2f} GiB"


class DeviceMemory:
    """The allocator state of one virtual GPU."""

    def __init__(self, index: int, total: int, context_bytes: int) -> None:
        self.index = index
        self.total = total
        self.context_bytes = context_bytes
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        self.live = 0  # live allocations
        self.peak_live = 0
        self.alloc_count = 0
        self.free_count = 0
        self.num_ooms = 0
        self.next_address = ADDRESS_BASE + (index << 40)

    @property
    def free_bytes(self) -> int:
        """What cudaMemGetInfo would call free: not reserved by us nor by the context."""
        return max(0, self.total - self.context_bytes - self.reserved)

    def allocate(self, nbytes: int) -> tuple[int, int]:
        """Account one allocation; returns (rounded size, virtual address)."""
        size = -(-nbytes // BLOCK) * BLOCK
        allocated = self.allocated + size
        if allocated > self.total - self.context_bytes:
            self.num_ooms += 1
            self._raise_oom(size)
        self.allocated = allocated
        if allocated > self.peak_allocated:
            self.peak_allocated = allocated
        if allocated > self.reserved:
            self.reserved = min(_round(allocated, SEGMENT), self.total - self.context_bytes)
            self.peak_reserved = max(self.peak_reserved, self.reserved)
        self.live += 1
        if self.live > self.peak_live:
            self.peak_live = self.live
        self.alloc_count += 1
        address = self.next_address  # addresses of live tensors never overlap
        self.next_address = address + (size or BLOCK)
        return size, address

    def release(self, size: int) -> None:
        self.allocated -= size
        self.live -= 1
        self.free_count += 1

    def empty_cache(self) -> None:
        self.reserved = _round(self.allocated, SEGMENT)

    def reset_peak(self) -> None:
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved
        self.peak_live = self.live

    def stats(self) -> dict[str, Any]:
        """The keys of torch.cuda.memory_stats() that frameworks read."""
        out: dict[str, Any] = {}
        for kind, cur, peak in (("allocated_bytes", self.allocated, self.peak_allocated),
                                ("reserved_bytes", self.reserved, self.peak_reserved),
                                ("active_bytes", self.allocated, self.peak_allocated),
                                ("requested_bytes", self.allocated, self.peak_allocated),
                                ("allocation", self.live, self.peak_live),
                                ("active", self.live, self.peak_live)):
            for pool in ("all", "large_pool", "small_pool"):
                whole = pool == "all" or pool == "large_pool"
                out[f"{kind}.{pool}.current"] = cur if whole else 0
                out[f"{kind}.{pool}.peak"] = peak if whole else 0
                out[f"{kind}.{pool}.allocated"] = self.alloc_count if whole else 0
                out[f"{kind}.{pool}.freed"] = self.free_count if whole else 0
        out["num_alloc_retries"] = 0
        out["num_ooms"] = self.num_ooms
        out["num_sync_all_streams"] = 0
        out["num_device_alloc"] = self.alloc_count
        out["num_device_free"] = self.free_count
        return out

    def _raise_oom(self, size: int) -> None:
        import torch

        capacity = self.total
        in_use = self.reserved + self.context_bytes
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {format_size(size)}. GPU {self.index} has a "
            f"total capacity of {format_size(capacity)} of which "
            f"{format_size(max(0, capacity - in_use))} is free. Including non-PyTorch memory, "
            f"this process has {format_size(in_use)} memory in use. Of the allocated memory "
            f"{format_size(self.allocated)} is allocated by PyTorch, and "
            f"{format_size(self.reserved - self.allocated)} is reserved by PyTorch but "
            "unallocated. If reserved but unallocated memory is large try setting "
            "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
            "documentation for Memory Management  "
            "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")


class Allocation:
    """One device allocation, shared by a tensor and its views.

    `host` holds the values when the allocation is host-backed (an UntypedStorage on the CPU);
    it is None for a meta-backed allocation, whose values no kernel computed. `origin` names
    the op that produced it, for the error raised when someone reads a large one.
    """

    __slots__ = ("address", "host", "mem", "nbytes", "origin", "size")

    def __init__(self, mem: DeviceMemory, nbytes: int, host: Any, origin: str) -> None:
        self.mem = None  # __del__ runs even when allocate() raises OutOfMemoryError
        self.size, self.address = mem.allocate(nbytes)
        self.mem = mem
        self.nbytes = nbytes
        self.host = host
        self.origin = origin

    @classmethod
    def mapped(cls, host: Any, origin: str) -> Allocation:
        """Pinned host memory seen from the device (CUDA's unified virtual addressing): no
        device memory is taken, and the device address is the host's, as with UVA."""
        a = cls.__new__(cls)
        a.mem, a.size, a.address = None, 0, host.data_ptr()
        a.nbytes, a.host, a.origin = host.nbytes(), host, origin
        return a

    def __del__(self) -> None:
        mem = self.mem
        if mem is not None:
            mem.release(self.size)
