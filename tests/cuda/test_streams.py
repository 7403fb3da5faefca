"""Streams, events and graphs in virtual time."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")

from revati.predictors.launch import Family  # noqa: E402
from tests.cuda.conftest import RecordingLink  # noqa: E402

pytestmark = pytest.mark.torch


def kernels(n: int, x: Any) -> None:
    for _ in range(n):
        x.mul_(1.0)


def test_event_timing_is_virtual_milliseconds(vcuda: Any, link: RecordingLink) -> None:
    x = torch.empty(4096, 4096, device="cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    kernels(5, x)
    end.record()
    assert not end.query()
    end.synchronize()
    assert end.query()
    assert start.elapsed_time(end) == pytest.approx(5 * link.duration_ns / 1e6)
    with pytest.raises(RuntimeError, match="enable_timing"):
        torch.cuda.Event().elapsed_time(end)


def test_streams_run_side_by_side_and_order_by_events(vcuda: Any, link: RecordingLink) -> None:
    d = link.duration_ns
    x, y = torch.empty(4096, 4096, device="cuda"), torch.empty(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    t0 = link.clock
    side = torch.cuda.Stream()
    assert side.stream_id != 0 and side.device_index == 0
    with torch.cuda.stream(side):
        assert torch.cuda.current_stream() is side
        kernels(10, y)
    kernels(2, x)
    torch.cuda.current_stream().synchronize()  # the default stream only: 2 kernels
    assert link.clock - t0 == 2 * d
    side.synchronize()
    assert link.clock - t0 == 10 * d
    # the default stream now waits for the side stream's work
    with torch.cuda.stream(side):
        kernels(3, y)
    torch.cuda.current_stream().wait_stream(side)
    kernels(1, x)
    torch.cuda.current_stream().synchronize()
    assert link.clock - t0 == 14 * d
    with torch.cuda.stream(side):
        kernels(4, y)
    torch.cuda.synchronize()  # every stream of the device
    assert link.clock - t0 == 18 * d
    assert link.syncs[-1] == ("stream", (0, None))
    x.record_stream(side)


def test_generic_stream_and_event_api(vcuda: Any, link: RecordingLink) -> None:
    s = torch.Stream(device="cuda")
    assert isinstance(s, torch.Stream) and s.device_type == 1
    x = torch.empty(4096, 4096, device="cuda")
    e = torch.Event(device="cuda", enable_timing=True)
    with s:
        assert torch.accelerator.current_stream() is s
        kernels(2, x)
        e.record()
    e.synchronize()
    assert link.launches[-1].stream == s.stream_id
    assert isinstance(e, torch.Event)
    assert isinstance(torch.Event(device="cpu"), torch.Event)
    never = torch.cuda.Event()
    never.wait()  # waiting on an event never recorded does nothing, as on CUDA
    assert never.query()


def test_accelerator_graph(vcuda: Any, link: RecordingLink) -> None:
    x = torch.empty(4096, 4096, device="cuda")
    graph = torch.accelerator.Graph()
    with torch.Stream(device="cuda"), graph:
        kernels(4, x)
    graph.replay()
    assert link.launches[-1].family == Family.GRAPH
    assert link.duration(link.launches[-1]) == 4 * link.duration_ns
    assert isinstance(graph.pool(), tuple)


def test_capture_rules(vcuda: Any, link: RecordingLink) -> None:
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="non-default stream"):
        graph.capture_begin()
    with pytest.raises(RuntimeError, match="before a completed capture"):
        graph.replay()
    pool = torch.cuda.graph_pool_handle()
    x = torch.empty(4096, 4096, device="cuda")
    with torch.cuda.graph(graph, pool=pool):
        assert torch.cuda.is_current_stream_capturing()
        kernels(3, x)
    assert graph.pool() == pool
    other = torch.cuda.CUDAGraph()
    with torch.cuda.graph(other, pool=graph.pool()):
        kernels(1, x)
    assert len(link.graphs[graph.graph_id]) == 3 and len(link.graphs[other.graph_id]) == 1
