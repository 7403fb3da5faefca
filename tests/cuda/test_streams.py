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


def _dynamic_step(vcuda: Any, layers: int, record: Any = None) -> Any:
    """A graph of `layers` layers, each a static kernel and a dynamic node that launches a
    KV write and an attention kernel (as the vLLM backend's do); `record(layer)` is called
    by each node after its launches, if given."""
    from revati.adapters.cuda import graphs

    def node(layer: int) -> None:
        vcuda.launch(Family.MEMORY, "kv", "bf16", (8192, 2048))
        vcuda.launch(Family.ATTENTION, "att", "bf16", (1, 1, 9, 9, 81, 32, 8, 128, 1))
        if record is not None:
            record(layer)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in range(layers):
            vcuda.launch(Family.GEMM, "mm", "bf16", (1, 4096, 4096, 1))
            graphs.dynamic(lambda layer=layer: node(layer))
    return graph


def test_replay_sends_identical_dynamic_launches_as_runs(vcuda: Any,
                                                         link: RecordingLink) -> None:
    graph = _dynamic_step(vcuda, 32)
    link.clock = 7_000
    graph.replay()
    assert [e.family for e in link.launches[:1]] == [Family.GRAPH]
    assert [(e.op, n) for e, n in link.runs] == [("kv", 32), ("att", 32)]
    assert {e.t_ns for e in link.launches} == {7_000}  # the replay runs frozen
    assert len(link.launches) == 65
    # the graph's 32 kernels, then 64: where 64 separate launches at 7 us leave the stream
    assert link.ready[(0, 0)] == 7_000 + (32 + 64) * link.duration_ns
    assert torch.cuda.synchronize() is None and link.clock == link.ready[(0, 0)]


def test_a_dynamic_node_that_records_an_event_splits_the_runs(vcuda: Any,
                                                              link: RecordingLink) -> None:
    """What a node asks of the link besides launches (an event here) comes after everything
    launched before it, as without runs."""
    event = torch.cuda.Event()
    other = torch.cuda.Event()
    graph = _dynamic_step(vcuda, 4, lambda layer: (event.record(), other.record())
                          if layer == 1 else None)
    graph.replay()
    assert [(e.op, n) for e, n in link.runs] == [("kv", 2), ("att", 2), ("kv", 2), ("att", 2)]
    d = link.duration_ns
    assert link.events[event.id] == link.events[other.id] == (4 + 4) * d  # graph, 2 layers
    assert link.ready[(0, 0)] == (4 + 8) * d


@pytest.mark.parametrize("pattern", ["ab" * 32, "a" * 64, "abc" * 21 + "a", "abab" * 15 + "ba",
                                     "aab" * 20, "ab" * 16 + "cd" * 16, "", "a", "abcdefghi" * 3])
def test_runs_count_every_launch_once_first_seen_first(pattern: str) -> None:
    """Whatever the nodes launch, the runs hold each distinct launch's count, in the order
    of first sight after the graph's (the periodic fast path, or the hash count)."""
    from collections import Counter

    from revati.adapters.cuda.graphs import _runs

    def ev(op: str) -> Any:
        from revati.predictors.launch import LaunchEvent

        return LaunchEvent(Family.MEMORY, op, "bf16", 0, 0, 9, (len(op), ord(op[0])))

    events = [ev("graph"), *(ev(c) for c in pattern)]
    runs = _runs(events)
    assert runs[0] == (events[0], 1)
    merged: Counter = Counter()
    for e, n in runs:
        merged[e] += n
    assert merged == Counter(events)
    firsts = [e for e, _ in runs]
    assert sorted(set(firsts), key=firsts.index) == list(dict.fromkeys(events))
