"""Virtual streams and events.

Streams are `torch.Stream` objects (device type cuda, an id unique per device in this process,
0 = the default stream), so anything that takes a stream (`torch.cuda.set_stream`,
`tensor.record_stream`, `torch.accelerator.set_stream`) accepts them. Work on a stream is queued
in virtual time through the GpuLink; synchronising waits in virtual time.
"""

from __future__ import annotations

import itertools
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

from revati.adapters.cuda.state import THREAD, S, settle_host_time

if TYPE_CHECKING:
    from revati.adapters.cuda.graphs import CUDAGraph

_CUDA = int(torch._C._autograd.DeviceType.CUDA)
_stream_ids: dict[int, itertools.count] = {}


def check_not_capturing(what: str) -> None:
    """CUDA refuses host syncs while the current stream captures a graph; so do we."""
    stream = THREAD.streams[THREAD.device]
    if stream.capture is not None:
        raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing "
                           f"({what} during CUDA graph capture)")


class Stream(torch.Stream):
    """A virtual CUDA stream (torch.cuda.Stream)."""

    capture: CUDAGraph | None

    def __new__(cls, device: Any = None, priority: int = 0, *, stream_id: int | None = None,
                **_: Any) -> Stream:
        index = S.device_index(device)
        if stream_id is None:
            stream_id = next(_stream_ids.setdefault(index, itertools.count(1)))
        self = super().__new__(cls, stream_id=stream_id, device_index=index, device_type=_CUDA)
        self.priority = priority
        self.capture = None
        return self

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    @property
    def cuda_stream(self) -> int:
        return self.stream_id

    def wait_event(self, event: Event) -> None:
        event.wait(self)

    def wait_stream(self, stream: Stream) -> None:
        self.wait_event(stream.record_event())

    def record_event(self, event: Event | None = None) -> Event:
        event = Event() if event is None else event
        event.record(self)
        return event

    def query(self) -> bool:
        return self.record_event().query()

    def synchronize(self) -> None:
        check_not_capturing("Stream.synchronize")
        link = S.link()
        settle_host_time(link)
        link.synchronize(self.device_index, self.stream_id)

    def __enter__(self) -> Stream:
        ctx = StreamContext(self)
        self.__dict__.setdefault("contexts", []).append(ctx)
        ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.__dict__["contexts"].pop().__exit__(*exc)

    def __repr__(self) -> str:
        return f"<torch.cuda.Stream device=cuda:{self.device_index} cuda_stream={self.stream_id}>"


class Event(torch.Event):
    """A virtual CUDA event (torch.cuda.Event, and torch.Event on a cuda device).

    Timing reads virtual completion times, so elapsed_time() is virtual milliseconds.
    """

    def __new__(cls, enable_timing: bool = False, blocking: bool = False,
                interprocess: bool = False, *, device: Any = None) -> Event:
        self = super().__new__(cls, device="cpu")
        self.enable_timing = enable_timing
        self.id = next(S.event_ids)
        self.device_index: int | None = None
        self.recorded = False
        return self

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        index = THREAD.device if self.device_index is None else self.device_index
        return torch.device("cuda", index)

    def record(self, stream: Stream | None = None) -> None:
        if stream is None:
            stream = THREAD.streams[THREAD.device]
        self.device_index = stream.device_index
        self.recorded = True
        if stream.capture is not None:
            return  # an event inside a graph orders the graph's own kernels: nothing to time
        S.link().record_event(stream.device_index, stream.stream_id, self.id)

    def wait(self, stream: Stream | None = None) -> None:
        if not self.recorded:
            return  # CUDA: waiting on a never-recorded event is a no-op
        if stream is None:
            stream = THREAD.streams[THREAD.device]
        if stream.capture is not None:
            return
        S.link().stream_wait_event(stream.device_index, stream.stream_id, self.id)

    def query(self) -> bool:
        if not self.recorded:
            return True
        link = S.link()
        with link.freeze():
            t = link.event_time_ns(self.id)
            return t is not None and t <= link.now_ns()

    def synchronize(self) -> None:
        if self.recorded:
            check_not_capturing("Event.synchronize")
            link = S.link()
            settle_host_time(link)
            link.synchronize_event(self.id)

    def elapsed_time(self, end_event: Event) -> float:  # type: ignore[override]
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if not (self.recorded and end_event.recorded):
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        link = S.link()
        start, end = link.event_time_ns(self.id), link.event_time_ns(end_event.id)
        if start is None or end is None:
            raise RuntimeError("CUDA error: device not ready")
        return (end - start) / 1e6

    def ipc_handle(self) -> bytes:
        raise RuntimeError("revati: virtual CUDA events cannot be shared between processes")

    def __repr__(self) -> str:
        return f"<torch.cuda.Event {self.id}>"


def current_stream(device: Any = None) -> Stream:
    return THREAD.streams[S.device_index(device)]


def default_stream(device: Any = None) -> Stream:
    return S.default_streams[S.device_index(device)]


def set_stream(stream: Stream | None) -> None:
    if stream is not None:
        THREAD.streams[stream.device_index] = stream


class StreamContext(AbstractContextManager):
    """`torch.cuda.stream(s)`: s is the current stream of its device (and its device is the
    current device) inside the block."""

    def __init__(self, stream: Stream | None) -> None:
        self.stream = stream
        self._saved: tuple[int, Stream] | None = None

    def __enter__(self) -> Stream | None:
        stream = self.stream
        if stream is None:
            return None
        thread = THREAD
        self._saved = (thread.device, thread.streams[stream.device_index])
        thread.device = stream.device_index
        thread.streams[stream.device_index] = stream
        return stream

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None and self.stream is not None:
            device, previous = self._saved
            THREAD.streams[self.stream.device_index] = previous
            THREAD.device = device


def stream(stream: Stream | None) -> StreamContext:
    return StreamContext(stream)


def synchronize(device: Any = None) -> None:
    check_not_capturing("synchronize")
    link = S.link()
    settle_host_time(link)
    link.synchronize(S.device_index(device), None)
