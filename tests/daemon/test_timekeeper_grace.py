"""DESIGN invariant 3: the clock jumps only once every participant has waited for the whole
grace interval. uvloop rounds call_later to whole milliseconds, so a sub-millisecond grace used
to pass at once; it is timed precisely now."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop

from revati.adapters.clock._vclock import Page
from revati.revatid.procwatch import ProcessTree, ProcWatch
from revati.revatid.timekeeper import Timekeeper


@dataclass
class _Member:
    slot: int
    pid: int
    pending_wake: int | None = None
    watch: ProcWatch = field(init=False)
    descendants: ProcessTree = field(init=False)

    def __post_init__(self) -> None:
        self.watch = ProcWatch(self.pid)
        self.descendants = ProcessTree(self.pid, root_counts=False)


@pytest.mark.parametrize("grace_us", [60, 300, 900])
def test_the_jump_comes_after_the_grace_interval_and_not_much_later(
        tmp_path: Path, grace_us: int) -> None:
    page = Page(str(tmp_path / "page"), create=True)
    page.slot_claim(0, os.getpid(), 0)  # a participant whose every thread waits
    page.slot_deadline(0, page.now() + 10**9)
    members = [_Member(0, os.getpid())]

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        took: list[float] = []
        for _ in range(10):
            jumped = loop.create_future()
            tk = Timekeeper(page, lambda: members, loop, joining=lambda: False,
                            outsiders=lambda: False,
                            grace_ns=grace_us * 1000, proc_check=False,
                            on_jump=lambda _b, _a, done=jumped: done.set_result(time.monotonic()))
            start = time.monotonic()
            tk.check()
            took.append(await asyncio.wait_for(jumped, 1.0) - start)
            tk.stop()
            page.slot_deadline(0, page.now() + 10**9)
        return took

    took = sorted(uvloop.run(main()))
    assert took[0] >= grace_us / 1e6
    assert took[len(took) // 2] < grace_us / 1e6 + 0.0005
