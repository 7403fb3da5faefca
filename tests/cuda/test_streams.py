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


def test_mem_pool_is_a_graph_pool(vcuda: Any, link: RecordingLink) -> None:
    """torch.cuda.MemPool (a CPU build of torch has only a class that refuses to be made):
    its id is a pool that graph captures take, allocations under `use_mem_pool` count as any
    other, and `use_mem_pool` refuses what is not a pool."""
    pool = torch.cuda.MemPool()
    assert pool.id != torch.cuda.MemPool().id and pool.use_count() == 1
    assert pool.allocator is None and pool.snapshot() == []
    before = torch.cuda.memory_allocated()
    with torch.cuda.use_mem_pool(pool):
        x = torch.empty(1 << 20, device="cuda")
    assert torch.cuda.memory_allocated() == before + (4 << 20)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool.id):
        kernels(2, x)
    assert graph.pool() == pool.id and len(link.graphs[graph.graph_id]) == 2
    assert torch.cuda.memory.MemPool is torch.cuda.MemPool
    with pytest.raises(TypeError, match="MemPool"), torch.cuda.use_mem_pool(pool.id):
        pass


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


class _KeyedNode:
    """A dynamic node with a key, as the attention backends make them: its launches depend on
    the step's batch (`state["batch"]`, per layer group) and nothing else."""

    def __init__(self, vcuda: Any, state: dict[str, Any], group: int,
                 record: Any = None) -> None:
        self.vcuda, self.state, self.group, self.record = vcuda, state, group, record

    def key(self) -> Any:
        return self.state["batch"][self.group]

    def __call__(self) -> None:
        self.state["calls"] += 1
        q = self.key()
        self.vcuda.launch(Family.MEMORY, "kv", "bf16", (8192 * q, 2048 * q))
        self.vcuda.launch(Family.ATTENTION, "att", "bf16", (q, q, 9, 9, 81, 32, 8, 128, 1))
        if self.record is not None:
            self.record()


def _keyed_step(vcuda: Any, state: dict[str, Any], groups: list[int], record: Any = None,
                ) -> Any:
    from revati.adapters.cuda import graphs

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for group in groups:
            vcuda.launch(Family.GEMM, "mm", "bf16", (1, 4096, 4096, 1))
            graphs.dynamic(_KeyedNode(vcuda, state, group, record))
    return graph


def test_nodes_with_equal_keys_run_once_and_launch_as_many(vcuda: Any,
                                                           link: RecordingLink) -> None:
    state = {"batch": {0: 1}, "calls": 0}
    graph = _keyed_step(vcuda, state, [0] * 32)
    link.clock = 7_000
    graph.replay()
    assert state["calls"] == 1
    assert [(e.op, e.feats[0], n) for e, n in link.runs] == [("kv", 8192, 32), ("att", 1, 32)]
    assert link.ready[(0, 0)] == 7_000 + (32 + 64) * link.duration_ns
    state["batch"][0] = 3  # the next step's batch: launched with its own features
    link.runs.clear()
    graph.replay()
    assert state["calls"] == 2
    assert [(e.op, e.feats[0], n) for e, n in link.runs] == [("kv", 3 * 8192, 32),
                                                             ("att", 3, 32)]


def test_a_change_of_key_runs_the_node_again(vcuda: Any, link: RecordingLink) -> None:
    """Two layer groups with batches of their own (sliding-window layers, say): each run of
    equal keys runs one node, whose launches repeat over the run."""
    state = {"batch": {0: 1, 1: 2}, "calls": 0}
    graph = _keyed_step(vcuda, state, [0] * 4 + [1] * 4 + [0] * 4)
    graph.replay()
    assert state["calls"] == 3
    counts: dict[tuple[str, int], int] = {}
    for e, n in link.runs:
        counts[(e.op, e.feats[0])] = counts.get((e.op, e.feats[0]), 0) + n
    assert counts == {("kv", 8192): 8, ("att", 1): 8, ("kv", 2 * 8192): 4, ("att", 2): 4}


def test_a_keyed_node_that_asks_the_link_more_than_launches_runs_each_time(
        vcuda: Any, link: RecordingLink) -> None:
    """A node's event record sends what was counted so far: the launches to repeat are no
    longer at hand, so the next node runs itself, and the event sees the launches before it."""
    event = torch.cuda.Event()
    state = {"batch": {0: 1}, "calls": 0}
    graph = _keyed_step(vcuda, state, [0] * 4, record=event.record)
    graph.replay()
    assert state["calls"] == 4
    d = link.duration_ns
    assert link.events[event.id] == (4 + 8) * d  # the last node's record: everything before
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
