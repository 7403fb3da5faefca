"""A participant's view of the session clock: reads, the freeze, and hooked waits.

Every hooked wait goes through `VirtualClock.waiting(deadline)`: the thread stops counting as
running, its deadline joins the process's published minimum (the slot the timekeeper reads),
and on return the thread counts as running again. Waits that cannot sleep on the session page
themselves (a Condition, an asyncio selector) register a wake-up callback that the process's
waker thread calls once the virtual deadline has passed.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from revati.adapters.clock._vclock import NO_DEADLINE, Page

NS = 1_000_000_000


class VirtualClock:
    def __init__(self, page_path: str, slot: int, running: int = 1) -> None:
        self.page = Page(page_path)
        self.slot = slot
        self.page.slot_claim(slot, os.getpid(), running)
        # The C methods are bound once: hooks call them with no Python frame in between.
        self.now_ns = self.page.now
        self.rate_hint = 1.0
        self._lock = threading.Lock()
        self._deadlines: dict[int, int] = {}  # wait token -> virtual deadline
        self._tokens = itertools.count()
        self._published = NO_DEADLINE
        self._callbacks: list[tuple[int, int, Callable[[], None]]] = []  # heap
        self._waker: threading.Thread | None = None

    def rebind(self, slot: int) -> None:
        """In a forked child: take a slot of its own; only the forking thread runs."""
        self.slot = slot
        self._lock = threading.Lock()
        self._deadlines.clear()
        self._callbacks.clear()
        self._published = NO_DEADLINE
        self._waker = None
        self.page.slot_claim(slot, os.getpid(), 1)

    # -- the freeze: Revati's own work does not advance virtual time
    @contextmanager
    def freeze(self) -> Iterator[None]:
        self.page.freeze_enter()
        try:
            yield
        finally:
            self.page.freeze_exit()

    # -- thread accounting
    def thread_started(self) -> None:
        self.page.slot_running(self.slot, 1)

    def thread_ended(self) -> None:
        self.page.slot_running(self.slot, -1)

    def _publish(self) -> None:
        earliest = min(self._deadlines.values(), default=NO_DEADLINE)
        if self._callbacks:
            earliest = min(earliest, self._callbacks[0][0])
        if earliest != self._published:
            self._published = earliest
            self.page.slot_deadline(self.slot, earliest)

    @contextmanager
    def waiting(self, deadline: int = NO_DEADLINE) -> Iterator[None]:
        """The calling thread waits (for I/O, a lock, or until `deadline` virtual ns)."""
        token = next(self._tokens)
        with self._lock:
            if deadline != NO_DEADLINE:
                self._deadlines[token] = deadline
                self._publish()
            self.page.slot_running(self.slot, -1)
        try:
            yield
        finally:
            with self._lock:
                self.page.slot_running(self.slot, 1)
                if self._deadlines.pop(token, None) is not None:
                    self._publish()

    def sleep_until(self, deadline: int) -> None:
        with self.waiting(deadline):
            self.page.wait_until(deadline)

    # -- wake-ups for waits that do not sleep on the page
    def call_at(self, deadline: int, callback: Callable[[], None]) -> int:
        """Call `callback` from the waker thread once virtual time reaches `deadline`."""
        token = next(self._tokens)
        with self._lock:
            heapq.heappush(self._callbacks, (deadline, token, callback))
            first = self._callbacks[0][1] == token
            self._publish()
            start = self._waker is None
            if start:
                self._waker = threading.Thread(target=self._wake_loop, name="revati-waker",
                                               daemon=True)
                self._waker._revati_internal = True  # type: ignore[attr-defined]
        if start:
            self._waker.start()  # type: ignore[union-attr]
        elif first:
            self.page.poke()
        return token

    def cancel(self, token: int) -> None:
        with self._lock:
            self._callbacks = [c for c in self._callbacks if c[1] != token]
            heapq.heapify(self._callbacks)
            self._publish()

    def _wake_loop(self) -> None:
        # The waker is Revati's own thread: it never counts as running.
        while True:
            with self._lock:
                due = []
                now = self.now_ns()
                while self._callbacks and self._callbacks[0][0] <= now:
                    due.append(heapq.heappop(self._callbacks)[2])
                if due:
                    self._publish()
                target = self._callbacks[0][0] if self._callbacks else NO_DEADLINE
                seen = self.page.wake_word()
            for callback in due:
                callback()
            if not due:
                self.page.wait_until(target, -1, seen)
