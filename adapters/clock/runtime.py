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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from revati.adapters.clock._vclock import NO_DEADLINE, Page

NS = 1_000_000_000


class _Frozen:
    """A reusable freeze context: two C calls, no generator per use (it wraps every op)."""

    __slots__ = ("_enter", "_exit")

    def __init__(self, enter: Callable[[], None], leave: Callable[[], None]) -> None:
        self._enter = enter
        self._exit = leave

    def __enter__(self) -> None:
        self._enter()

    def __exit__(self, *exc: object) -> None:
        self._exit()


class VirtualClock:
    def __init__(self, page_path: str, slot: int, running: int = 1, late: bool = False,
                 ) -> None:
        self.page = Page(page_path)
        self.page_path = page_path
        self.slot = slot
        self.page.slot_claim(slot, os.getpid(), running)
        if late:  # attached while running: never read less than the real clock read before
            self.page.floor_monotonic(time.monotonic_ns())
        # The C methods are bound once: hooks call them with no Python frame in between.
        self.now_ns = self.page.now
        self.rate_hint = 1.0
        self.op_credit_ns = 0
        self._lock = threading.Lock()
        self._local = threading.local()  # .depth: hooked waits the thread is inside
        self._deadlines: dict[int, int] = {}  # wait token -> virtual deadline
        self._tokens = itertools.count()
        self._published = NO_DEADLINE
        self._callbacks: list[tuple[int, int, Callable[[], None]]] = []  # heap
        self._cancelled: set[int] = set()  # tokens still in the heap, to skip
        self._waker_target = NO_DEADLINE  # the deadline the waker thread sleeps towards
        self._waker: threading.Thread | None = None
        self._frozen = _Frozen(self.page.freeze_enter, self.page.freeze_exit)
        self._op_frozen = _Frozen(self.page.freeze_enter_op, self.page.freeze_exit)

    def rebind(self, slot: int) -> None:
        """In a forked child: take a slot of its own; only the forking thread runs."""
        self.slot = slot
        self._lock = threading.Lock()
        self._local = threading.local()
        self._deadlines.clear()
        self._callbacks.clear()
        self._cancelled.clear()
        self._waker_target = NO_DEADLINE
        self._published = NO_DEADLINE
        self._waker = None
        self.page.slot_claim(slot, os.getpid(), 1)

    # -- the freeze: Revati's own work does not advance virtual time
    def freeze(self) -> _Frozen:
        """`with clock.freeze():` stops the session clock for the block."""
        return self._frozen

    def op_freeze(self) -> _Frozen:
        """`with clock.op_freeze():` around Revati's handling of one intercepted op: a freeze
        that also keeps out the op's way into Revati (`set_op_credit`), where that is safe."""
        return self._op_frozen

    def set_op_credit(self, ns: int) -> None:
        """The real ns an op spends on its way into Revati's handler and back, beyond what
        its dispatch costs on a real device (measured once per process by the virtual CUDA
        layer: revati.adapters.cuda.entry_cost)."""
        self.page.set_op_credit(int(ns))
        self.op_credit_ns = int(ns)

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

    def wait_begin(self, deadline: int = NO_DEADLINE) -> int:
        """The calling thread starts waiting (for I/O, a lock, or until `deadline` virtual
        ns). Returns a token for wait_end. The bookkeeping is Revati's, so it is frozen.
        Waits nest (communicate() waits in Popen.wait, a selector inside communicate): only
        the outermost one stops the thread counting as running."""
        token = next(self._tokens)
        local = self._local
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        page = self.page
        page.freeze_enter()
        with self._lock:
            if deadline != NO_DEADLINE:
                self._deadlines[token] = deadline
                self._publish()
            if not depth:
                page.slot_running(self.slot, -1)
        page.freeze_exit()
        return token

    def wait_end(self, token: int) -> None:
        local = self._local
        # 0: a wait begun before a fork, ended in the child (whose slot counts it running)
        depth = getattr(local, "depth", 0)
        local.depth = max(depth - 1, 0)
        page = self.page
        page.freeze_enter()
        with self._lock:
            if depth == 1:
                page.slot_running(self.slot, 1)
            if self._deadlines.pop(token, None) is not None:
                self._publish()
        page.freeze_exit()

    @contextmanager
    def waiting(self, deadline: int = NO_DEADLINE) -> Iterator[None]:
        token = self.wait_begin(deadline)
        try:
            yield
        finally:
            self.wait_end(token)

    def sleep_until(self, deadline: int) -> None:
        token = self.wait_begin(deadline)
        try:
            self.page.wait_until(deadline)
        finally:
            self.wait_end(token)

    # -- wake-ups for waits that do not sleep on the page
    def call_at(self, deadline: int, callback: Callable[[], None]) -> int:
        """Call `callback` from the waker thread once virtual time reaches `deadline`."""
        token = next(self._tokens)
        self.page.freeze_enter()
        with self._lock:
            heapq.heappush(self._callbacks, (deadline, token, callback))
            self._publish()
            start = self._waker is None
            if start:
                self._waker = threading.Thread(target=self._wake_loop, name="revati-waker",
                                               daemon=True)
                self._waker._revati_internal = True  # type: ignore[attr-defined]
            poke = deadline < self._waker_target
        self.page.freeze_exit()
        if start:
            self._waker.start()  # type: ignore[union-attr]
        elif poke:
            self.page.poke()  # the waker sleeps towards a later deadline
        return token

    def cancel(self, token: int) -> None:
        self.page.freeze_enter()
        with self._lock:
            if self._callbacks and self._callbacks[0][1] == token:
                heapq.heappop(self._callbacks)
                while self._callbacks and self._callbacks[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._callbacks)[1])
                self._publish()
            else:
                self._cancelled.add(token)
        self.page.freeze_exit()

    def _wake_loop(self) -> None:
        # The waker is Revati's own thread: it never counts as running.
        while True:
            with self._lock:
                due = []
                popped = False
                now = self.now_ns()
                while self._callbacks and self._callbacks[0][0] <= now:
                    _, token, callback = heapq.heappop(self._callbacks)
                    popped = True
                    if token in self._cancelled:
                        self._cancelled.discard(token)
                    else:
                        due.append(callback)
                while self._callbacks and self._callbacks[0][1] in self._cancelled:
                    self._cancelled.discard(heapq.heappop(self._callbacks)[1])
                    popped = True
                if popped:  # a cancelled deadline must leave the slot too, or the timekeeper
                    self._publish()  # keeps "jumping" to it and waits for a wake that never comes
                target = self._callbacks[0][0] if self._callbacks else NO_DEADLINE
                self._waker_target = target
                seen = self.page.wake_word()
            for callback in due:
                callback()
            if not due:
                self.page.wait_until(target, -1, seen)
