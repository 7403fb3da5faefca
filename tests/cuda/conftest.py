"""Fixtures for the virtual CUDA tests: an in-test GpuLink with a fixed predictor, and the
virtual GPUs installed once into the test process (virtual CUDA cannot be uninstalled).

`RecordingLink` is the stream model of revatid in a few lines: each launch on a stream starts
at max(stream ready, launch time) and lasts a fixed duration (a CUDA graph replay: the sum of
its captured launches), and the link's own virtual clock only moves when the host waits, to
the ready time it waits for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from revati.predictors.launch import Family, LaunchEvent

SKU = "h100"
NUM_GPUS = 2
DURATION_NS = 10_000


class RecordingLink:
    def __init__(self, duration_ns: int = DURATION_NS) -> None:
        self.duration_ns = duration_ns
        self.clock = 0
        self.ready: dict[tuple[int, int], int] = {}
        self.events: dict[int, int] = {}
        self.graphs: dict[int, list[LaunchEvent]] = {}
        self.launches: list[LaunchEvent] = []
        self.runs: list[tuple[LaunchEvent, int]] = []  # launch_run calls (a graph replay's)
        self.collectives: list[tuple[LaunchEvent, str, int]] = []
        self.syncs: list[tuple[str, Any]] = []
        self.freezes = 0

    # -- the GpuLink protocol
    def now_ns(self) -> int:
        return self.clock

    def freeze(self) -> contextlib.AbstractContextManager[None]:
        self.freezes += 1
        return contextlib.nullcontext()

    op_freeze = freeze

    def duration(self, ev: LaunchEvent) -> int:
        if ev.family == Family.GRAPH:
            return sum(self.duration(e) for e in self.graphs[ev.feats[0]])
        return self.duration_ns

    def launch(self, ev: LaunchEvent) -> None:
        self.launches.append(ev)
        key = (ev.device, ev.stream)
        start = max(self.ready.get(key, 0), ev.t_ns)
        self.ready[key] = start + self.duration(ev)

    def launch_run(self, ev: LaunchEvent, count: int) -> None:
        self.runs.append((ev, count))
        for _ in range(count):
            self.launch(ev)

    def record_event(self, device: int, stream: int, event_id: int) -> None:
        self.events[event_id] = self.ready.get((device, stream), 0)

    def stream_wait_event(self, device: int, stream: int, event_id: int) -> None:
        key = (device, stream)
        self.ready[key] = max(self.ready.get(key, 0), self.events.get(event_id, 0))

    def collective(self, ev: LaunchEvent, group: str, rank: int) -> None:
        self.collectives.append((ev, group, rank))
        self.launch(ev)  # one process: every other rank arrived at the same time

    def register_graph(self, events: list[LaunchEvent]) -> int:
        graph_id = len(self.graphs) + 1
        self.graphs[graph_id] = list(events)
        return graph_id

    def spend_host(self, ns: int) -> None:
        self.clock += ns

    def synchronize(self, device: int, stream: int | None) -> int:
        self.syncs.append(("stream", (device, stream)))
        if stream is None:
            ready = max((t for (d, _), t in self.ready.items() if d == device), default=0)
        else:
            ready = self.ready.get((device, stream), 0)
        self.clock = max(self.clock, ready)
        return self.clock

    def event_time_ns(self, event_id: int) -> int | None:
        return self.events.get(event_id)

    def synchronize_event(self, event_id: int) -> int:
        self.syncs.append(("event", event_id))
        self.clock = max(self.clock, self.events.get(event_id, 0))
        return self.clock

    # -- test helpers
    def stream_busy_ns(self, device: int = 0, stream: int = 0) -> int:
        """The sum of predicted durations of everything launched on one stream."""
        return sum(self.duration(e) for e in self.launches
                   if (e.device, e.stream) == (device, stream))


@pytest.fixture(scope="session")
def vcuda() -> Any:
    """The virtual CUDA package, installed (H100 x 2) into this test process."""
    pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")
    from revati.adapters import cuda

    cuda.install(SKU, NUM_GPUS, link=RecordingLink())
    return cuda


@pytest.fixture
def link(vcuda: Any) -> Iterator[RecordingLink]:
    """A fresh recording link for this test, on the default streams of device 0."""
    import torch

    fresh = RecordingLink()
    vcuda.install(SKU, NUM_GPUS, link=fresh)
    torch.cuda.set_device(0)
    for i in range(NUM_GPUS):
        torch.cuda.set_stream(torch.cuda.default_stream(i))
    yield fresh
