"""Each participant's time inside Revati: the real time its process held a freeze, counted in
its slot (the run summary and the benchmarks split the host's time by it)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from revati.adapters.clock._vclock import Page


def participant(tmp_path: Path) -> tuple[Page, Page]:
    """(revatid's page, this process's page as participant slot 0)."""
    writer = Page(str(tmp_path / "page"), create=True)
    page = Page(str(tmp_path / "page"))
    page.slot_claim(0, os.getpid(), 1)
    return writer, page


def frozen_for(page: Page, seconds: float) -> tuple[int, int]:
    """Hold a freeze for about `seconds`: (least, most) real ns it was held."""
    r0 = time.monotonic_ns()
    page.freeze_enter()
    r1 = time.monotonic_ns()
    time.sleep(seconds)
    r2 = time.monotonic_ns()
    page.freeze_exit()
    r3 = time.monotonic_ns()
    return r2 - r1, r3 - r0


def test_only_frozen_time_counts(tmp_path: Path) -> None:
    writer, page = participant(tmp_path)
    time.sleep(0.02)  # running, not inside Revati
    least, most = frozen_for(page, 0.02)
    time.sleep(0.02)
    held = writer.slot_held_ns(0)
    assert least <= held <= most
    least2, most2 = frozen_for(page, 0.01)
    assert least + least2 <= writer.slot_held_ns(0) <= most + most2


def test_nested_and_open_freezes_count_once(tmp_path: Path) -> None:
    writer, page = participant(tmp_path)
    r0 = time.monotonic_ns()
    page.freeze_enter()
    page.freeze_enter()  # a hook inside a hook: the same stretch of time
    time.sleep(0.01)
    page.freeze_exit()
    time.sleep(0.01)
    open_held = writer.slot_held_ns(0)  # still inside: counted up to now
    r1 = time.monotonic_ns()
    assert 20_000_000 <= open_held <= r1 - r0
    page.freeze_exit()
    r2 = time.monotonic_ns()
    assert open_held <= writer.slot_held_ns(0) <= r2 - r0


def test_a_dead_participants_freeze_ends_at_its_release(tmp_path: Path) -> None:
    """revatid releases the freezes of a participant that died inside one: its time inside
    Revati stops there, and a new participant in the same slot starts from zero."""
    writer, page = participant(tmp_path)
    r0 = time.monotonic_ns()
    page.freeze_enter()
    time.sleep(0.01)
    assert writer.freeze_release(0) == 1
    r1 = time.monotonic_ns()
    held = writer.slot_held_ns(0)
    assert 10_000_000 <= held <= r1 - r0
    time.sleep(0.01)
    assert writer.slot_held_ns(0) == held
    writer.slot_free(0)
    writer.slot_claim(0, os.getpid() + 1, 1)
    assert writer.slot_held_ns(0) == 0
