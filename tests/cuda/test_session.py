"""Virtual CUDA under `revatictl run`, with the session runtime's GpuLink and revatid."""

from __future__ import annotations

import re
import sys
from pathlib import Path

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
