"""The session page's CPU contention model: while more participant processes want a CPU than
the host has, virtual time flows at cpus/active (each would have a core on the server)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from revati.adapters.clock._vclock import Page

REAL_S = 0.2


def flow(page: Page) -> float:
    """Virtual seconds that pass in REAL_S of real time."""
    v0 = page.now()
    time.sleep(REAL_S)
    return (page.now() - v0) / 1e9 / REAL_S


@pytest.mark.parametrize(("cpus", "active", "rate"), [
    (2, 1, 1.0), (2, 2, 1.0), (1, 2, 0.5), (2, 3, 2 / 3), (2, 4, 0.5), (0, 4, 1.0)])
def test_virtual_time_flows_at_cpus_over_active_processes(
        tmp_path: Path, cpus: int, active: int, rate: float) -> None:
    page = Page(str(tmp_path / "page"), create=True, cpus=cpus)
    for slot in range(active):
        page.slot_claim(slot, os.getpid() + slot, 1)
    assert flow(page) == pytest.approx(rate, rel=0.1)
    # a second thread of one process adds no demand: one interpreter, one core
    page.slot_running(0, 1)
    assert flow(page) == pytest.approx(rate, rel=0.1)
    stats = page.freeze_stats()
    assert stats[4] == pytest.approx(2 * REAL_S * (1 - rate) * 1e9, rel=0.15, abs=5e6)


def test_waiting_processes_release_their_share(tmp_path: Path) -> None:
    page = Page(str(tmp_path / "page"), create=True, cpus=1)
    for slot in range(3):
        page.slot_claim(slot, os.getpid() + slot, 1)
    assert flow(page) == pytest.approx(1 / 3, rel=0.1)
    page.slot_running(1, -1)  # enters a hooked wait
    page.slot_free(2)  # leaves the session
    assert flow(page) == pytest.approx(1.0, rel=0.1)


def test_a_freeze_still_stops_the_clock_under_contention(tmp_path: Path) -> None:
    page = Page(str(tmp_path / "page"), create=True, cpus=1)
    for slot in range(2):
        page.slot_claim(slot, os.getpid() + slot, 1)
    page.freeze_enter()
    assert flow(page) == 0.0
    page.freeze_exit()
    assert flow(page) == pytest.approx(0.5, rel=0.1)
