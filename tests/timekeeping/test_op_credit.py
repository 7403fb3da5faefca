"""The op freeze: the real time an op spends on its way into Revati (before its handler can
freeze) is kept out of virtual time, but only where nobody else could have read the clock in
that window, and never more than the time since the clock last changed segment."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from revati.adapters.clock._vclock import Page

CREDIT_NS = 2_000_000  # large against the test's own timing noise
WAY_IN_S = 0.005  # longer than the credit


def page_with(tmp_path: Path, *running: int) -> Page:
    """A page with one slot per entry of `running` (threads running); this process is slot 0."""
    writer = Page(str(tmp_path / "page"), create=True)
    for slot, n in enumerate(running[1:], start=1):
        writer.slot_claim(slot, os.getpid() + slot, n)
    page = Page(str(tmp_path / "page"))
    page.slot_claim(0, os.getpid(), running[0])
    page.set_op_credit(CREDIT_NS)
    return page


def credited(page: Page) -> int:
    return page.freeze_stats()[5]


def test_the_way_in_is_kept_out(tmp_path: Path) -> None:
    """Virtual time over the test is the real time outside the freeze less the credit. The
    bounds come from the real clock around each part, not from the sleeps asked for: a
    loaded host oversleeps by milliseconds."""
    page = page_with(tmp_path, 1)
    r0 = time.monotonic_ns()
    v0 = page.now()
    time.sleep(WAY_IN_S)  # the op's way in
    v1 = page.now()
    r1 = time.monotonic_ns()
    page.freeze_enter_op()
    assert page.now() == v1  # held by the per-process clamp: never read backwards
    time.sleep(0.001)
    page.freeze_exit()
    r2 = time.monotonic_ns()
    assert credited(page) == CREDIT_NS
    time.sleep(WAY_IN_S)  # the clock catches up with the clamp, the credit kept out
    elapsed = page.now() - v0
    r3 = time.monotonic_ns()
    most_outside = (r3 - r0) - 1_000_000  # the freeze lasted at least its 1 ms sleep
    least_outside = (r3 - r0) - (r2 - r1) - 200_000  # and at most r1..r2; reads take time
    assert least_outside - CREDIT_NS <= elapsed <= most_outside - CREDIT_NS


def test_no_more_than_the_time_since_the_last_change(tmp_path: Path) -> None:
    page = page_with(tmp_path, 1)
    page.freeze_enter()
    page.freeze_exit()  # a new segment starts now
    page.freeze_enter_op()  # at once: far less than CREDIT_NS has passed
    page.freeze_exit()
    assert 0 <= credited(page) < CREDIT_NS


@pytest.mark.parametrize(("others", "credit"), [((1,), 0), ((0,), CREDIT_NS), ((0, 2), 0)])
def test_not_while_another_participant_runs(tmp_path: Path, others: tuple[int, ...],
                                            credit: int) -> None:
    """Another process could have read the clock in the window: a waiting one could not."""
    page = page_with(tmp_path, 1, *others)
    time.sleep(WAY_IN_S)
    page.freeze_enter_op()
    page.freeze_exit()
    assert credited(page) == credit


def test_not_while_the_clock_is_already_frozen(tmp_path: Path) -> None:
    page = page_with(tmp_path, 1)
    page.freeze_enter()  # Revati code of another thread
    time.sleep(WAY_IN_S)
    page.freeze_enter_op()
    page.freeze_exit()
    page.freeze_exit()
    assert credited(page) == 0


def test_credit_must_not_be_negative(tmp_path: Path) -> None:
    page = page_with(tmp_path, 1)
    with pytest.raises(ValueError):
        page.set_op_credit(-1)
