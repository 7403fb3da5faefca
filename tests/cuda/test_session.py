"""Virtual CUDA under `revatictl run`, with the session runtime's GpuLink and revatid."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, revatictl_run

pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")
pytestmark = pytest.mark.torch

TWO_RANKS = str(Path(__file__).with_name("two_ranks.py"))
COLLECTIVE_NS = 1_000_000


def test_two_rank_all_reduce_completes_at_the_last_arrival_plus_its_duration(
        daemon: Daemon) -> None:
    result, summary = revatictl_run(
        daemon, [sys.executable, TWO_RANKS], "--gpu", "h100", "--num-gpus", "2",
        "--fixed-ns", str(COLLECTIVE_NS))
    assert result.returncode == 0, result.stderr
    ranks = {int(r): (float(late), float(at), float(done)) for r, late, at, done in
             re.findall(r"rank (\d) arrived ([\d.]+) at ([\d.]+) done ([\d.]+)", result.stdout)}
    assert sorted(ranks) == [0, 1]
    assert ranks[1][0] >= 0.05  # rank 1 slept 50 ms before the all-reduce
    last = max(at for _, at, _ in ranks.values())
    for _, _, done in ranks.values():
        # max(arrival) + duration, plus the little real time the ranks' own Python takes
        assert last + COLLECTIVE_NS / 1e9 <= done < last + COLLECTIVE_NS / 1e9 + 0.005
    assert abs(ranks[0][2] - ranks[1][2]) < 0.002  # both leave at the same session time
    assert summary["counters"]["collectives"] == 1


def _run_fixed(daemon: Daemon, script: str, trace: Path,
               ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Run a script beside this file under `--fixed-ns`: its last line's JSON, the session
    summary and the trace's events."""
    result, summary = revatictl_run(
        daemon, [sys.executable, str(Path(__file__).with_name(script))],
        "--fixed-ns", str(COLLECTIVE_NS), "--trace", str(trace))
    assert result.returncode == 0, result.stderr
    events = json.loads(trace.read_text())["traceEvents"]
    return json.loads(result.stdout.strip().splitlines()[-1]), summary, events


def test_the_summary_tells_each_process_time_inside_revati(daemon: Daemon, tmp_path: Path,
                                                          ) -> None:
    """A process that launches kernels spends real time in Revati's own code (its held
    freezes): the session keeps it when the process leaves, and the run summary prints it."""
    result, summary = revatictl_run(
        daemon, [sys.executable, str(Path(__file__).with_name("replay_in_session.py"))],
        "--fixed-ns", str(COLLECTIVE_NS))
    assert result.returncode == 0, result.stderr
    (program,) = summary["exited"]
    assert 0 < program["revati_s"] < summary["counters"]["wall_s"]
    assert re.search(rf"inside Revati +\S+ {program['revati_s']:.3f} s", result.stderr)


def test_replay_runs_end_where_separate_launches_do(daemon: Daemon, tmp_path: Path) -> None:
    """Through revatid: a replay whose 64 dynamic launches go as two runs takes the stream
    exactly as long as the same kernels launched one by one, and the trace shows each."""
    r, summary, events = _run_fixed(daemon, "replay_in_session.py", tmp_path / "trace.json")
    assert r["replay"]["gpu_ns"] == r["separate"]["gpu_ns"] == (32 + 64) * COLLECTIVE_NS
    for case in r.values():
        assert 0 <= case["sync_late_ns"] < 5_000_000  # the host woke when the stream was done
    kernels = [e for e in events if e.get("ph") == "X" and e.get("name") in ("kv", "att")]
    assert len(kernels) == 2 * 64
    # each run counts as its kernels: 2 x 32 captured, 2 x (100 queued + graph + 64)
    assert summary["counters"]["launches"] == 2 * 32 + 2 * (100 + 1 + 64)


def _wired_link() -> tuple[Any, list[tuple[str, dict]]]:
    """A SessionLink whose connection records what it would send (and answers syncs)."""
    from revati.adapters.session import SessionLink

    class Clock:
        def now_ns(self) -> int:
            return 5

        def freeze(self) -> contextlib.nullcontext:
            return contextlib.nullcontext()

    class Wire:
        _outstanding = 0

        def __init__(self) -> None:
            self.sent: list[tuple[str, dict]] = []

        def send(self, kind: str, **fields: object) -> None:
            self.sent.append((kind, fields))

        def request(self, kind: str, **fields: object) -> dict:
            self.sent.append((kind, fields))
            return {"ready_ns": 0}

    class Member:
        clock, lock, client = Clock(), threading.Lock(), Wire()

    return SessionLink(Member()), Member.client.sent  # type: ignore[arg-type]


def test_a_sync_carries_the_buffered_launches_in_its_own_message() -> None:
    """SessionLink sends a host sync and the launches buffered before it as one request (v2
    `batch`), and a graph replay's runs as run items."""
    from revati.predictors.launch import Family, LaunchEvent
    from revati.revatid.protocol import ITEM_LAUNCH, ITEM_RUN

    link, sent = _wired_link()
    ev = LaunchEvent(Family.GEMM, "mm", "bf16", 0, 0, 5, (8, 8, 8, 1))
    link.launch(ev)
    link.launch_run(ev, 32)
    assert link.synchronize(0, 0) == 5
    assert sent == [("gpu.sync", {"device": 0, "stream": 0, "batch": [
        (ITEM_LAUNCH, *ev), (ITEM_RUN, 32, *ev)]})]
    link.synchronize(0, 0)  # nothing buffered: no batch field
    assert sent[-1] == ("gpu.sync", {"device": 0, "stream": 0})


def test_a_graph_replay_goes_to_revatid_at_once() -> None:
    """A replay (the bulk of a serving step) is sent when it is launched, with what was
    buffered before it, so that revatid predicts it while the host goes on; the step's sync
    then carries only what came after."""
    from revati.adapters.cuda import graphs
    from revati.adapters.cuda.state import S
    from revati.predictors.launch import Family, LaunchEvent
    from revati.revatid.protocol import ITEM_LAUNCH, ITEM_RUN

    link, sent = _wired_link()
    before = LaunchEvent(Family.MEMORY, "fill", "bf16", 0, 0, 5, (8, 1))
    replay = LaunchEvent(Family.GRAPH, "cuda_graph", "bf16", 0, 0, 5, (1,))
    att = LaunchEvent(Family.ATTENTION, "att", "bf16", 0, 0, 5, (1, 1, 9, 9, 81, 32, 8, 128, 1))
    after = LaunchEvent(Family.MEMORY, "argmax", "bf16", 0, 0, 5, (8, 1))
    link.launch(before)
    saved, S.link_override = S.link_override, None
    try:
        graphs.launch_graph(link, replay, [lambda: S.link().launch(att)] * 4)
    finally:
        S.link_override = saved
    assert sent == [("gpu.launch", {"batch": [(ITEM_LAUNCH, *before), (ITEM_LAUNCH, *replay),
                                              (ITEM_RUN, 4, *att)]})]
    link.launch(after)
    link.synchronize(0, 0)
    assert sent[-1] == ("gpu.sync", {"device": 0, "stream": 0,
                                     "batch": [(ITEM_LAUNCH, *after)]})


def test_a_sync_on_a_recorded_event_needs_no_round_trip(daemon: Daemon, tmp_path: Path,
                                                        ) -> None:
    """An event record goes to revatid at once and its reply tells the event's time: the
    host's later sync on it sends no request of its own, wakes when the kernel is done, and
    the wait is in the trace."""
    r, _, events = _run_fixed(daemon, "event_sync_in_session.py", tmp_path / "trace.json")
    assert "gpu.sync_event" not in r["sent"] and "gpu.event_time" not in r["sent"]
    assert r["sent"][-1] == "gpu.launch"  # the record, then the wait's trace note
    assert r["recorded_at"] < r["event_ns"] <= r["synced"] < r["event_ns"] + 2_000_000
    assert r["query"] is True
    waits = [e for e in events if e.get("name") == "event" and e.get("ph") == "X"]
    assert len(waits) == 1
