"""The timekeeper: conservative jumps of one session's clock (DESIGN, "Virtual time: the rules").

The clock jumps only when every participant waits, stable for a grace interval, and only to
the earliest pending deadline. "Waits" is decided per participant:
  hook   its slot says no thread runs (every thread is inside a hooked wait) and the kernel
         shows none of its threads runnable (a message in flight wakes its receiver first);
  proc   its slot says some thread runs, but the kernel shows every thread asleep and none
         scheduled between two samples: a wait Revati does not hook (waiting on I/O).
A child that a participant started counts as running until it joins (or exits). One that will
not join (not Python: a compiler, a shell) lends its parent a running thread, so the clock
flows at real rate, while the kernel shows it or a descendant scheduled between two looks.
A participant the daemon has just answered (a GPU sync) or whose deadline a jump has just
reached counts as running until its activity counter moves: it is about to wake.
When quiescence cannot be established, time flows at `rate` times real time (safe fallback).

A watcher thread sleeps on the session page's quiesce word (bumped by a participant whose last
running thread starts waiting) and hands each wake-up to the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from revati.adapters.clock._vclock import NO_DEADLINE, Page
from revati.revatid.precise_timer import PreciseTimer
from revati.revatid.procwatch import ProcessTree, ProcWatch, softirq_pending

WATCH_PERIOD_NS = 20_000_000  # re-check at least this often (for waits only /proc can see)
JOIN_POLL_S = 0.001  # while a child has yet to join, look again this often


class Member(Protocol):
    slot: int
    pid: int
    pending_wake: int | None
    watch: ProcWatch
    descendants: ProcessTree


@dataclass
class Quiet:
    deadline: int
    activity: tuple[int, ...]
    members: list[Member]
    running: list[bool]  # per member: some thread runs by its slot (then /proc decides)

    def same(self, other: Quiet) -> bool:
        """No participant has changed state, and the earliest deadline is the same."""
        return self.activity == other.activity and self.deadline == other.deadline


class Timekeeper:
    def __init__(self, page: Page, members: Callable[[], Iterable[Member]],
                 loop: asyncio.AbstractEventLoop, joining: Callable[[], bool],
                 outsiders: Callable[[], bool], grace_ns: int, proc_check: bool = True,
                 on_jump: Callable[[int, int], None] | None = None) -> None:
        self.page = page
        self.members = members
        self.loop = loop
        self.joining = joining
        # looks at the children that will not join (lending a running thread to the parent
        # of any that computes); True while some does
        self.outsiders = outsiders
        self._outsiders_busy = False
        self.grace_s = grace_ns / 1e9
        self.proc_check = proc_check
        self.on_jump = on_jump
        self.jumps = 0
        self.jumped_ns = 0
        self.decisions: Counter[str] = Counter()
        # Decisions through /proc, by participant pid, and each one's name as last read: a
        # serving stack should have next to none (a wait Revati does not hook lets real time
        # flow).
        self.unhooked: Counter[int] = Counter()
        self.unhooked_names: dict[int, bytes] = {}
        # The grace interval and the back-off are microseconds: the loop's own timers round
        # them to whole milliseconds (uvloop), so a timerfd schedules every later look.
        self._confirm = PreciseTimer(loop)
        self._soon = False  # the last look was blocked by something that passes by itself
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="revati-timekeeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.page.poke_quiesce()
        self._confirm.close()

    def _watch(self) -> None:
        seen = 0
        while not self._stop.is_set():
            seen = self.page.wait_quiesce(seen, WATCH_PERIOD_NS)
            if self._stop.is_set():
                return
            try:
                self.loop.call_soon_threadsafe(self.check)
            except RuntimeError:  # the loop closed under us: the daemon is stopping
                return

    # -- decisions
    def _slots(self) -> Quiet | None:
        """Quiescence as the slots tell it (shared-memory reads only). Sets self._soon when
        what stands in the way passes by itself, with no poke to tell us (a child yet to
        join). Whatever else stands in the way ends with a poke: the last freeze to end
        while nobody runs, or the next wait of a participant about to wake."""
        self._soon = False
        if self.page.freeze_stats()[0]:
            return None  # someone is inside Revati's own code
        members, activity, running = [], [], []
        deadline = NO_DEADLINE
        for m in self.members():
            _pid, threads, act, dl, _waits, _freezes = self.page.slot_read(m.slot)
            if m.pending_wake is not None:
                if act == m.pending_wake:
                    return None  # answered or woken, and not yet running
                m.pending_wake = None
            members.append(m)
            activity.append(act)
            running.append(threads > 0)
            deadline = min(deadline, dl)
        if self.joining():
            self._soon = True
            return None
        if not members or deadline == NO_DEADLINE:
            return None
        return Quiet(deadline, tuple(activity), members, running)

    def _kernel_agrees(self, quiet: Quiet) -> bool:
        """The kernel's view (file reads): no network receive work is put off, no participant
        thread is runnable, and those with running threads by their slot have slept since the
        last sample.

        Each waiting participant's threads are read, never a host-wide count such as
        /proc/loadavg's: a thread woken onto an idle CPU waits on that CPU's wake list until
        it takes the interrupt (tens of microseconds to milliseconds on a virtual machine),
        and in that window its stat file says R while the run-queue counts leave it out."""
        if self.proc_check and softirq_pending():
            return False  # a message may be in flight in the kernel
        if self._outsiders_busy:
            return False  # a child that is no participant computes: program time
        participants: frozenset[int] | None = None
        for m, running in zip(quiet.members, quiet.running, strict=True):
            if running:
                if not m.watch.asleep():
                    return False
                # asleep in a wait Revati does not hook: maybe on a child nobody announced
                # (os.system forks in C), whose work is program time
                if participants is None:
                    participants = frozenset(x.pid for x in quiet.members)
                if m.descendants.busy(participants):
                    return False
            elif self.proc_check and m.watch.runnable():
                return False
        return True

    def _unchanged(self, quiet: Quiet) -> bool:
        """The slots have not moved since `quiet` was read: a participant woken after that may
        already sleep again by the time the kernel is asked (in a frozen request to this very
        daemon, say, its message to us unread), so the kernel's answer alone is not enough."""
        again = self._slots()
        if again is None or not again.same(quiet):
            return False
        self.decisions.update("proc" if r else "hook" for r in quiet.running)
        for m, running in zip(quiet.members, quiet.running, strict=True):
            if running:
                self.unhooked[m.pid] += 1
                self.unhooked_names[m.pid] = m.watch.comm
        return True

    def unhooked_waits(self, most: int = 4) -> dict[str, int]:
        """The participants most often judged asleep through /proc: "name (pid)" -> count."""
        return {f"{self.unhooked_names[pid].decode(errors='replace') or '?'} ({pid})": n
                for pid, n in self.unhooked.most_common(most)}

    def check(self) -> None:
        """Look for quiescence; jump once it has held for the grace interval."""
        if self._confirm.armed or self._stop.is_set():
            return
        self._outsiders_busy = self.outsiders()
        quiet = self._slots()
        if quiet is None:
            if self._soon:
                self._confirm.arm(JOIN_POLL_S, self.check)
            return
        if self.grace_s <= 0:
            if self._kernel_agrees(quiet) and self._unchanged(quiet):
                self._jump(quiet.deadline)
            return
        self._confirm.arm(self.grace_s, self._confirmed, quiet, self.grace_s)

    def _confirmed(self, before: Quiet, delay: float) -> None:
        self._outsiders_busy = self.outsiders()
        quiet = self._slots()
        if quiet is None:
            if self._soon:
                self._confirm.arm(JOIN_POLL_S, self.check)
            return
        if not quiet.same(before):
            self.check()
        elif not self._kernel_agrees(quiet):  # some thread still runs: look again, less often
            delay = min(2 * delay, WATCH_PERIOD_NS / 1e9)
            self._confirm.arm(delay, self._confirmed, quiet, delay)
        elif self._unchanged(quiet):
            self._jump(quiet.deadline)
        else:
            self.check()

    def _jump(self, target: int) -> None:
        for m in self.members():
            _pid, _running, act, dl, _w, _f = self.page.slot_read(m.slot)
            if dl <= target:
                m.pending_wake = act
        before = self.page.jump(target)
        if target > before:
            self.jumps += 1
            self.jumped_ns += target - before
            if self.on_jump is not None:
                self.on_jump(before, target)
