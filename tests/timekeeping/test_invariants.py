"""The virtual-time invariants of DESIGN.md, each pinned with real processes under
`revatictl run` against a real revatid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.conftest import Daemon, revatictl_run

PROGRAMS = str(Path(__file__).with_name("programs.py"))


def run_program(daemon: Daemon, *args: str, options: tuple[str, ...] = ()) -> tuple[dict, dict]:
    result, summary = revatictl_run(daemon, [sys.executable, PROGRAMS, *args], *options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), summary


def test_monotonic_across_jumps(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "monotonic_reads", "30")
    assert out["reads"] == 6000
    assert out["backwards"] == 0
    assert summary["counters"]["jumps"] >= 25  # the sleeps were skipped, not waited out


def test_one_timeline_between_processes(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "ping_pong", "50")
    assert out["exchanges"] == 50
    assert out["violations"] == 0  # no message arrives before it was sent, in virtual time
    assert summary["counters"]["jumps"] >= 40


def test_sleep_skips_to_its_deadline(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "sleeper", "30")
    assert 30.0 <= out["slept"] < 30.01
    counters = summary["counters"]
    assert counters["wall_s"] < 10  # 30 virtual seconds do not take 30 real ones
    assert counters["jumped_s"] > 29


def test_datetime_reads_the_session_clock_and_pickles(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "datetimes", "600")
    assert 600.0 <= out["slept"] < 600.01 and summary["counters"]["wall_s"] < 30
    assert out["pickled"] and out["class"]


def test_no_skipped_deadline(daemon: Daemon) -> None:
    """An early sleeper wakes at its own deadline, before a later sleeper's jump target."""
    script = (
        "import subprocess, sys, json\n"
        f"cmd = [sys.executable, {PROGRAMS!r}, 'sleeper']\n"
        "procs = [subprocess.Popen(cmd + [s], stdout=subprocess.PIPE) for s in "
        "('7.5', '2.5', '5.0')]\n"
        "print(json.dumps([json.loads(p.communicate()[0]) for p in procs]))\n"
    )
    result, _ = revatictl_run(daemon, [sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr
    outs = json.loads(result.stdout.strip().splitlines()[-1])
    for out in outs:
        assert out["asked"] <= out["slept"] < out["asked"] + 0.05, outs
    wake = sorted((o["woke_at"], o["asked"]) for o in outs)
    assert [asked for _, asked in wake] == [2.5, 5.0, 7.5]


def test_overhead_inside_a_freeze_is_not_virtual_time(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "freeze_burn", "50")
    assert out["virtual_ms"] < 1.0
    assert summary["counters"]["frozen_s"] >= 0.05


def test_busy_process_keeps_real_rate(daemon: Daemon) -> None:
    """Quiescence cannot be established while a process computes: time flows at real rate."""
    out, _ = run_program(daemon, "spin_real", "300")
    assert abs(out["virtual_ms"] - out["real_ms"]) < 0.05 * out["real_ms"]


def test_a_child_that_is_no_participant_computes_in_program_time(daemon: Daemon) -> None:
    """A non-Python child (a build tool and its compiler) never joins: while it computes, its
    parent waits and another thread sleeps with a deadline 100 s away. Its work is program time
    (DESIGN, rule 4), so the clock flows at real rate through it instead of jumping 100 s."""
    out, _ = run_program(daemon, "outsider_child", "400")
    assert out["real_ms"] >= 400
    assert abs(out["virtual_ms"] - out["real_ms"]) < 0.1 * out["real_ms"], out


def test_a_child_started_from_c_computes_in_program_time(daemon: Daemon) -> None:
    """os.system: the child is announced by nobody and its parent waits in C, so /proc judges
    the parent; its unannounced children's work keeps the clock at real rate all the same."""
    out, _ = run_program(daemon, "outsider_from_c", "400")
    assert out["real_ms"] >= 400
    assert abs(out["virtual_ms"] - out["real_ms"]) < 0.1 * out["real_ms"], out


def test_a_child_that_is_no_participant_and_sleeps_lets_the_clock_jump(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "idle_outsider", "30")
    assert 30.0 <= out["slept"] < 30.01
    assert summary["counters"]["wall_s"] < 10 and summary["counters"]["jumped_s"] > 29


def test_unhooked_wait_falls_back_and_finishes(daemon: Daemon) -> None:
    """A wait in C that Revati does not hook (select.select) is seen through /proc."""
    out, summary = run_program(daemon, "unhooked_wait", "20")
    assert out["virtual_s"] >= 20.0
    counters = summary["counters"]
    assert counters["quiescence_by_proc"] > 0
    assert counters["wall_s"] < 10
    # the summary names the process that waited unhooked, with the decisions it took
    (who, n), = counters["unhooked_waits"].items()
    assert who.startswith("python") and n == counters["quiescence_by_proc"]


def test_dilation_scales_real_work(daemon: Daemon) -> None:
    out, _ = run_program(daemon, "spin_real", "200", options=("--cpu-dilation", "2"))
    assert abs(out["virtual_ms"] - 2 * out["real_ms"]) < 0.1 * out["real_ms"]


def test_a_cancelled_wake_up_does_not_hold_the_clock(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "cancelled_timer", "0.05")
    assert len(out["fired"]) == 1 and 10_000_000 <= out["fired"][0] < 11_000_000
    assert out["virtual_s"] >= 0.05
    assert summary["counters"]["wall_s"] < 10


def test_timed_selector_waits_end_at_their_virtual_time(daemon: Daemon) -> None:
    """A selector with a timeout (multiprocessing.connection.wait, a zmq poll) wakes at its
    virtual timeout through the thread's alarm descriptor, or earlier when its fd is ready."""
    out, summary = run_program(daemon, "timed_selects", "10")
    assert [n for n, _ in out["timed_out"]] == [0] * 5
    # the few ms allowed: this program's own Python after each wake-up, on a loaded host
    assert all(0.2 <= t < 0.205 for _, t in out["timed_out"]), out["timed_out"]
    assert [n for n, _ in out["woken"]] == [1] * 5
    assert all(0.05 <= t < 0.055 for _, t in out["woken"]), out["woken"]
    counters = summary["counters"]
    assert counters["quiescence_by_proc"] == 0  # every wait was a hooked one
    assert counters["wall_s"] < counters["virtual_s"] / 2


def test_a_timed_selector_wait_sleeps_while_time_flows(daemon: Daemon) -> None:
    out, _ = run_program(daemon, "select_while_busy", "300")
    assert out["events"] == 0 and out["waited"] >= 0.3
    assert out["switches"] < 20  # it slept through (1 ms real slices made ~300)


def test_idle_thread_pool_workers_wait(daemon: Daemon) -> None:
    out, summary = run_program(daemon, "idle_pool", "5")
    assert 5.0 <= out["slept"] < 5.005
    assert out["task_ran_at"] >= 5.0
    counters = summary["counters"]
    assert counters["quiescence_by_proc"] == 0  # the workers' SimpleQueue.get is hooked
    assert counters["wall_s"] < 3


def test_the_resource_tracker_waits(daemon: Daemon) -> None:
    """multiprocessing's resource tracker blocks in an unhooked read for the whole run. Counted
    as running, it kept the idle freeze off and sent every jump through /proc: in the vLLM demo,
    virtual time flowed at real rate through the GPU waits (457 jumps for ~2,750 decode steps)."""
    out, summary = run_program(daemon, "with_resource_tracker", "40")
    assert out["tracker_pid"] > 0
    assert 2.0 <= out["slept"] < 2.01
    counters = summary["counters"]
    assert counters["jumps"] >= 40
    assert counters["quiescence_by_proc"] == 0  # every participant waited in a hooked wait


def test_a_blocking_zmq_receive_waits(daemon: Daemon) -> None:
    """SGLang's detokenizer blocks in zmq's recv_pyobj for its whole run: a wait, not work."""
    out, summary = run_program(daemon, "zmq_receivers", "3")
    assert out["message"] == "hello"
    assert 3.0 <= out["received_at"] < 3.01
    assert 0.25 <= out["timed_out"] < 0.26  # RCVTIMEO in virtual time
    counters = summary["counters"]
    assert counters["quiescence_by_proc"] == 0
    assert counters["wall_s"] < 3


def test_uvloop_servers_stream_without_nagle(daemon: Daemon) -> None:
    """uvloop, replaced by the standard loop in a session, keeps its TCP_NODELAY on every TCP
    connection. Without it a server listening on a proto-0 socket of its own (vLLM's API
    server) kept Nagle's algorithm, which held each streamed response's first token behind the
    client's delayed ACK of the header: vLLM's TTFT came out 15-70 ms late in the demo, and
    the tokens after it bunched into one read."""
    out, _ = run_program(daemon, "uvloop_streaming", "8")
    assert out["loop"] and out["nodelay"] == [1]
    assert all(0.004 < t < 0.01 for t in out["first_token_after_header"]), out
