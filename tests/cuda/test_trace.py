"""The session trace of a decoder run: valid Chrome trace JSON, one track per virtual GPU
stream, whose kernel durations add up to the stream's virtual elapsed time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REVATICTL, Daemon, revatictl_run

pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")
pytestmark = pytest.mark.torch

# 1 ms per kernel: the GPU, not the Python launching, sets the pace. The host resumes launching
# after each of the 16 token reads; that gap (program time, ~0.1-0.2 ms on a loaded 2-core
# host) must stay far below 1% of the stream time.
KERNEL_NS = 1_000_000


def test_decoder_trace_adds_up_to_the_virtual_elapsed_time(daemon: Daemon,
                                                          tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.json"
    result, summary = revatictl_run(
        daemon, [sys.executable, "-m", "tests.cuda.decode_in_session"],
        "--fixed-ns", str(KERNEL_NS), "--trace", str(trace_file), timeout=300)
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout.strip().splitlines()[-1])
    t0_us = (run["t0_ns"] - summary["origin_monotonic_ns"]) / 1e3

    trace = json.loads(trace_file.read_text())
    events = trace["traceEvents"]
    for e in events:
        assert e["ph"] in ("X", "M")
        if e["ph"] == "X":
            assert {"name", "ts", "dur", "pid", "tid"} <= e.keys() and e["dur"] >= 0
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    assert "GPU 0 (tests.cuda.decode_in_session" in " ".join(names.values())
    kernels = [e for e in events if e["ph"] == "X" and names.get(e["pid"], "").startswith("GPU 0")
               and e["ts"] >= t0_us - 1e-3]
    assert len({(e["pid"], e["tid"]) for e in kernels}) == 1  # one stream
    assert len(kernels) > 100
    assert {e["cat"] for e in kernels} >= {"gemm", "attention", "memory"}
    busy_ns = sum(e["dur"] for e in kernels) * 1e3
    assert busy_ns == pytest.approx(len(kernels) * KERNEL_NS)
    assert busy_ns == pytest.approx(run["elapsed_ns"], rel=0.01)


def test_trace_command_writes_the_same_trace(daemon: Daemon, tmp_path: Path) -> None:
    with daemon.client() as c:
        sid = c.request("session.create", options={"fixed_ns": 1000})["session"]["id"]
    out = tmp_path / "t.json"
    done = subprocess.run([*REVATICTL, "--socket", str(daemon.socket), "trace", sid, "-o",
                           str(out)], capture_output=True, text=True, check=True)
    assert "trace events" in done.stdout
    assert json.loads(out.read_text())["traceEvents"][0]["name"] == "process_name"
