"""The session's virtual GPUs: stream timelines, events, collectives and graphs, in revatid's
GpuTimeline and through real participants."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest

from revati.predictors.launch import Collective, Family
from revati.revatid.gpu import BadBatch, GpuTimeline
from revati.revatid.protocol import (
    ITEM_COLLECTIVE,
    ITEM_HOST_WAIT,
    ITEM_LAUNCH,
    ITEM_RECORD,
    ITEM_RUN,
    ITEM_WAIT,
    MAX_RUN,
)
from revati.revatid.trace import Trace
from tests.conftest import Daemon, revatictl_run


class PerOp:
    """Durations by op name."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table

    def predict(self, events: list) -> list[int]:
        return [self.table[e.op] for e in events]


def launch(op: str, t: int, stream: int = 0, device: int = 0) -> list:
    return [ITEM_LAUNCH, int(Family.GEMM), op, "bf16", device, stream, t, [8, 8, 8, 1]]


def coll(group: str, rank: int, t: int, ranks: int = 2) -> list:
    return [ITEM_COLLECTIVE, group, rank, int(Family.COLLECTIVE), "all_reduce", "bf16", 0, 0, t,
            [int(Collective.ALL_REDUCE), 1 << 20, ranks]]


def timeline(**ops: int) -> GpuTimeline:
    return GpuTimeline(lambda: PerOp(ops), Trace())


def test_launches_queue_on_their_stream() -> None:
    tl = timeline(a=100, b=50)
    tl.submit(1, [launch("a", 0), launch("b", 10), launch("a", 500)])
    assert tl.stream_ready(1, 0, 0) == 600  # 0-100, 100-150, then idle until 500-600
    tl.submit(1, [launch("b", 0, stream=7)])
    assert tl.stream_ready(1, 0, 7) == 50  # another stream runs alongside
    assert tl.stream_ready(1, 0, None) == 600
    assert tl.stream_ready(2, 0, 0) == 0  # another process's stream is its own
    assert sum(k[5] for k in tl.trace.kernel_spans()) == 300


def test_event_orders_two_streams() -> None:
    tl = timeline(a=100)
    recorded = tl.submit(1, [launch("a", 0), [ITEM_RECORD, 0, 0, 9], [ITEM_WAIT, 0, 1, 9],
                             launch("a", 0, stream=1), [ITEM_RECORD, 0, 1, 4]])
    assert recorded == [9, 4]  # the ids gpu.launch's reply times, in the batch's order
    assert tl.event_time(1, 9) == 100
    assert tl.stream_ready(1, 0, 1) == 200


def test_collective_completes_at_max_arrival_plus_duration() -> None:
    tl = timeline(a=100, all_reduce=30)
    tl.submit(1, [launch("a", 0), coll("g", 0, 0)])
    assert tl.stream_ready(1, 0, 0) is None  # blocked until rank 1 arrives
    tl.submit(1, [launch("a", 0)])  # queued behind the collective
    tl.submit(2, [launch("a", 0), launch("a", 0), launch("a", 0), coll("g", 1, 0)])
    assert tl.stream_ready(2, 0, 0) == 330  # rank 1 arrived last, at 300
    assert tl.stream_ready(1, 0, 0) == 430  # 330, then the queued kernel
    assert tl.collectives == 1


def test_collective_queued_behind_an_event_still_orders_its_stream() -> None:
    """A collective that waited in a stream's queue (behind a wait on an event not yet
    recorded) and then completes at once must release the stream and keep what was queued
    after it behind it (it once left the stream blocked for good: SGLang TP=2 graph warmup)."""
    def item(kind: int, stream: int, *rest: object) -> list:
        return [kind, 0, stream, *rest]

    def coll_on(group: str, rank: int, stream: int) -> list:
        return [ITEM_COLLECTIVE, group, rank, int(Family.COLLECTIVE), "all_reduce", "bf16", 0,
                stream, 0, [int(Collective.ALL_REDUCE), 1 << 20, 2]]

    tl = timeline(a=100, all_reduce=30)
    tl.submit(1, [coll_on("h", 0, 1), item(ITEM_RECORD, 1, 9)])  # stream 1: h, then record e9
    tl.submit(1, [item(ITEM_WAIT, 0, 9), coll_on("g", 0, 0), launch("a", 0)])  # stream 0
    tl.submit(2, [coll("g", 1, 0)])  # the other rank of g is there first
    assert tl.stream_ready(1, 0, 0) is None
    tl.submit(3, [coll("h", 1, 500)])  # h completes at 530: e9, then g (530-560), then a
    assert tl.stream_ready(1, 0, 1) == 530
    assert tl.stream_ready(1, 0, 0) == 660
    assert tl.stream_ready(2, 0, 0) == 560
    assert not tl.blocked_streams() and not tl.pending_collectives()


def test_send_meets_its_recv_as_a_pair() -> None:
    """A P2P launch (a pipeline stage's send or recv) rendezvous with its peer alone: the
    receiver's stream waits for the sender's arrival plus the transfer."""
    def p2p(op: str, rank: int, t: int) -> list:
        return [ITEM_COLLECTIVE, "w/pp/p2p/0-1", rank, int(Family.P2P), op, "bf16", 0, 0, t,
                [1 << 20, 1 - rank]]

    tl = timeline(a=100, **{"nccl:send": 20, "nccl:recv": 20})
    tl.submit(2, [p2p("nccl:recv", 1, 0), launch("a", 0)])  # posted early: waits
    assert tl.stream_ready(2, 0, 0) is None
    tl.submit(1, [launch("a", 0), p2p("nccl:send", 0, 50)])
    assert tl.stream_ready(1, 0, 0) == 120  # the send left at 100
    assert tl.stream_ready(2, 0, 0) == 220  # 120, then its own kernel
    assert tl.collectives == 1


def test_malformed_batch_changes_nothing() -> None:
    tl = timeline(a=100)
    with pytest.raises(BadBatch):
        tl.submit(1, [launch("a", 0), [ITEM_LAUNCH, 99, "x"]])
    assert tl.stream_ready(1, 0, 0) == 0
    assert tl.launches == 0


def test_a_host_wait_item_is_a_trace_note_only() -> None:
    """A wait the host timed itself (an event whose time a gpu.launch reply told) reaches the
    trace; it queues nothing. A malformed one is refused with the whole batch."""
    tl = timeline(a=100)
    tl.submit(1, [launch("a", 0), [ITEM_HOST_WAIT, "event", 40, 100]])
    assert tl.trace.waits == [(1, "event", 40, 100)]
    assert tl.stream_ready(1, 0, 0) == 100 and tl.launches == 1
    with pytest.raises(BadBatch):
        tl.submit(1, [launch("a", 0), [ITEM_HOST_WAIT, "event", "soon"]])
    assert tl.stream_ready(1, 0, 0) == 100 and len(tl.trace.waits) == 1


def test_graph_replays_as_one_launch() -> None:
    tl = timeline(a=100, b=50)
    gid = tl.register_graph(1, [[int(Family.GEMM), op, "bf16", 0, 0, 0, [1, 1, 1, 1]]
                                for op in ("a", "b", "a")])
    tl.submit(1, [[ITEM_LAUNCH, int(Family.GRAPH), "graph", "bf16", 0, 0, 0, [gid]]])
    assert tl.stream_ready(1, 0, 0) == 250


def _replay_batch(gid: int, t: int, n: int, runs: bool) -> list[list]:
    """A decode step's replay at time t: the graph, then n layers' KV write and attention,
    one item per launch (interleaved, as the layers launch them) or as two runs."""
    graph = [ITEM_LAUNCH, int(Family.GRAPH), "graph", "bf16", 0, 0, t, [gid]]
    kv = [int(Family.MEMORY), "kv", "bf16", 0, 0, t, [8192, 2048]]
    att = [int(Family.ATTENTION), "att", "bf16", 0, 0, t, [1, 1, 9, 9, 81, 32, 8, 128, 1]]
    if runs:
        return [graph, [ITEM_RUN, n, *kv], [ITEM_RUN, n, *att]]
    return [graph, *[[ITEM_LAUNCH, *e] for _ in range(n) for e in (kv, att)]]


@pytest.mark.parametrize("synchronous", [False, True])
@pytest.mark.parametrize("busy_until", [0, 1_000_000])  # the stream idle, or busy, at t
def test_a_run_queues_exactly_like_its_launches_one_by_one(synchronous: bool,
                                                           busy_until: int) -> None:
    """64 dynamic launches of a replay (32 x 2 identical ones) sent as two run items leave
    the stream, an event recorded after them, a host sync and the launch count exactly where
    64 separate launch items do; the trace shows one entry per kernel, back to back, from one
    record per run."""
    results = []
    for runs in (False, True):
        tl = timeline(a=100_003, b=50_001, kv=1_307, att=7_919, c=11)
        tl.synchronous = synchronous
        gid = tl.register_graph(1, [[int(Family.GEMM), op, "bf16", 0, 0, 0, [1, 1, 1, 1]]
                                    for op in ("a", "b", "a")])
        tl.submit(1, [launch("c", busy_until - 11)] if busy_until else [])
        tl.submit(1, [*_replay_batch(gid, 500_000, 32, runs), [ITEM_RECORD, 0, 0, 5],
                      launch("c", 600_000)])
        tl.submit(1, _replay_batch(gid, 2_000_000, 32, runs))  # a second step, later
        sync = tl.stream_ready(1, 0, 0, now=2_000_100)
        kernels = sorted((k[4], k[5], k[3]) for k in tl.trace.kernel_spans())
        results.append((tl.stream_ready(1, 0, 0), tl.event_time(1, 5), sync, tl.launches,
                        tl.streams[(1, 0, 0)].shift, [k[:2] for k in kernels],
                        sorted(k[2] for k in kernels), len(tl.trace.kernels)))
    one_by_one, as_runs = results
    assert as_runs[:5] == one_by_one[:5]
    assert as_runs[3] == 2 * (1 + 64) + 1 + (1 if busy_until else 0) + 3  # the graph's own 3
    assert sorted(as_runs[6]) == sorted(one_by_one[6])  # the same kernels ran
    assert as_runs[7] == one_by_one[7] - 2 * 2 * 31  # two steps: 2 records per step, not 64
    spans = as_runs[5]  # (start, duration) of each kernel, in start order: no gap, no overlap
    step = [(s, d) for s, d in spans if 500_000 <= s < 2_000_000][:65]
    assert all(s + d == s2 for (s, d), (s2, _) in itertools.pairwise(step))


@pytest.mark.parametrize("count", [0, -1, "3", 2.0, MAX_RUN + 1])
def test_a_run_needs_a_positive_integer_count(count: object) -> None:
    tl = timeline(a=100)
    with pytest.raises(BadBatch):
        tl.submit(1, [[ITEM_RUN, count, int(Family.GEMM), "a", "bf16", 0, 0, 0, [8, 8, 8, 1]]])
    assert tl.stream_ready(1, 0, 0) == 0 and tl.launches == 0


RANK = """
import json, sys, time
from revati.adapters.session import SessionLink, member
from revati.predictors.launch import Collective, Family, LaunchEvent
rank, kernels = int(sys.argv[1]), int(sys.argv[2])
link = SessionLink(member())
t0 = link.now_ns()
for _ in range(kernels):
    link.launch(LaunchEvent(Family.GEMM, "mm", "bf16", 0, 0, link.now_ns(), (8, 8, 8, 1)))
link.collective(LaunchEvent(Family.COLLECTIVE, "all_reduce", "bf16", 0, 0, link.now_ns(),
                            (int(Collective.ALL_REDUCE), 1 << 20, 2)), "tp", rank)
end = link.synchronize(0, 0)
print(json.dumps({"rank": rank, "t0": t0, "end": end}))
"""


def test_two_ranks_leave_a_collective_together(daemon: Daemon, tmp_path: Path) -> None:
    """Rank 0 arrives after 1 kernel, rank 1 after 4 (every kernel, collectives too, takes
    1 ms here): on both GPUs the all-reduce ends at rank 1's arrival + 1 ms, and each rank's
    stream sync returns then."""
    script = (
        "import subprocess, sys\n"
        f"code = {RANK!r}\n"
        "ps = [subprocess.Popen([sys.executable, '-c', code, str(r), str(k)], "
        "stdout=subprocess.PIPE, text=True) for r, k in ((0, 1), (1, 4))]\n"
        "print('[' + ','.join(p.communicate()[0].strip() for p in ps) + ']')\n"
    )
    trace_file = tmp_path / "trace.json"
    result, summary = revatictl_run(daemon, [sys.executable, "-c", script],
                                    "--fixed-ns", "1000000", "--trace", str(trace_file))
    assert result.returncode == 0, result.stderr
    ranks = {r["rank"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])}
    events = json.loads(trace_file.read_text())["traceEvents"]
    reduce = {e["args"]["rank"]: e for e in events if e.get("cat") == "collective"}
    kernels = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "gemm")
    assert set(reduce) == {0, 1}
    last_arrival = max(e["args"]["arrival_us"] for e in reduce.values())
    assert last_arrival == pytest.approx(kernels[-1])  # rank 1, after its 4th kernel
    for e in reduce.values():
        assert e["ts"] == pytest.approx(last_arrival) and e["dur"] == pytest.approx(1000.0)
    done_ns = (last_arrival + 1000.0) * 1000
    for r in ranks.values():
        assert r["end"] >= done_ns - 1000
    # the first rank to wake reads the completion time; the other may wait for a CPU
    assert min(r["end"] for r in ranks.values()) - done_ns < 200_000
    assert summary["counters"]["collectives"] == 1


class Woken(PerOp):
    """A device measured to slow down after idle: 1 ms idle or more adds 100 us to the next
    kernel and leaves it 10% slower, fading over 1 ms of work."""

    def __init__(self, table: dict[str, int]) -> None:
        super().__init__(table)
        from revati.predictors.wake import WakeModel

        self.hw = type("Hw", (), {"wake": WakeModel((1_000_000,), (100_000.0,), (0.1,),
                                                    1_000_000.0)})()


@pytest.mark.parametrize("synchronous", [False, True])
def test_kernels_after_an_idle_spell_run_slower(synchronous: bool) -> None:
    tl = GpuTimeline(lambda: Woken({"a": 100_000, "b": 10_000_000}), Trace())
    tl.synchronous = synchronous
    last = 0  # the host time of the latest launch

    def idle_then(op: str, gap: int) -> int:
        """Launch `op` to start `gap` ns after the stream's last kernel ends; its duration."""
        nonlocal last
        # a CPU's launch starts its own kernel time after the host's (the shift), a GPU's
        # when it is launched
        last = last + gap if synchronous else tl.stream_ready(1, 0, 0) + gap
        tl.submit(1, [launch(op, last)])
        return list(tl.trace.kernel_spans())[-1][5]

    # the process's first kernel wakes its device; a second right after pays only the fade
    fade = 0.1 * 1_000_000 * (1 - math.exp(-0.1))
    assert idle_then("a", 0) == 100_000 + 100_000 + int(fade)
    assert idle_then("a", 0) == 100_000 + int(fade * math.exp(-0.1))
    # 10 ms of work take the rest of the fade, and leave the device warm
    assert idle_then("b", 0) == 10_000_000 + int(0.1 * math.exp(-0.2) * 1_000_000
                                                  * (1 - math.exp(-10)))
    # 0.5 ms apart (the host's own work, shorter than the shortest spell measured): as
    # predicted; after 5 ms idle: slower again
    assert idle_then("a", 500_000) == 100_000
    assert idle_then("a", 5_000_000) == 100_000 + 100_000 + int(fade)
    # another process's device is its own: it wakes from its own idle
    tl.submit(2, [launch("a", last)])
    assert list(tl.trace.kernel_spans())[-1][5] > 200_000
    tl.forget(1)
    assert (1, 0) not in tl.warmth and (2, 0) in tl.warmth


def test_a_collective_keeps_its_devices_warm() -> None:
    """Ranks busy in a 5 ms all-reduce are not idle: the kernel after it pays nothing."""
    class WokenCollective(Woken):
        def predict(self, events: list) -> list[int]:
            return [5_000_000 if e.family == Family.COLLECTIVE else 100_000 for e in events]

    tl = GpuTimeline(lambda: WokenCollective({}), Trace())
    for rank in (0, 1):
        pid = 10 + rank
        tl.submit(pid, [launch("a", 0), launch("a", 0), launch("a", 0)])  # woken, then warm
        tl.warmth[(pid, 0)] = (tl.warmth[(pid, 0)][0], 0.0)  # and fully warm
    for rank in (0, 1):
        tl.submit(10 + rank, [coll("tp", rank, tl.stream_ready(10 + rank, 0, 0))])
    end = tl.stream_ready(10, 0, 0)
    tl.submit(10, [launch("a", end)])
    assert list(tl.trace.kernel_spans())[-1][5] == 100_000


def test_a_device_without_a_wake_model_times_kernels_as_predicted() -> None:
    tl = timeline(a=100)
    tl.submit(1, [launch("a", 0), launch("a", 10_000_000_000)])
    assert tl.wake is None and [k[5] for k in tl.trace.kernel_spans()] == [100, 100]
