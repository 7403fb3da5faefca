"""Clock hooks: make a Python process read and wait on the session clock.

Installed once per process by the session runtime (at interpreter start, or at attach time).
Reads are the C methods of the session page, bound directly into the `time` module, so a
hooked `time.monotonic()` costs one C call. Waits mark the thread as waiting (see
runtime.VirtualClock) so that the timekeeper can jump when every participant waits.

Covered: time.time/monotonic/perf_counter (and _ns), time.sleep, datetime.now/utcnow/today,
threading waits with timeouts (Condition, hence Event, Semaphore, Barrier, queue.Queue),
Thread.join, subprocess waits, selectors (hence asyncio; asyncio loops are woken by the
waker thread at their virtual deadline), uvloop (replaced by the standard loop, whose clock
can be virtualised) and zmq polls.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import importlib.util
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from revati.adapters.clock._vclock import NO_DEADLINE
from revati.adapters.clock.runtime import NS, VirtualClock

_originals: dict[str, Any] = {}
_clock: VirtualClock | None = None

# Non-asyncio selectors and zmq polls cannot be woken from another thread; they wait in real
# slices this long and re-read the clock between slices.
POLL_SLICE_S = 0.001


def _keep(name: str, value: Any) -> Any:
    _originals.setdefault(name, value)
    return _originals[name]


def _virtual_timeout_deadline(clock: VirtualClock, timeout: float) -> int:
    return clock.now_ns() + int(max(timeout, 0.0) * NS)


def install(clock: VirtualClock) -> None:
    """Point every clock read and wait of this process at `clock`. Idempotent."""
    global _clock
    if _clock is not None:
        return
    _clock = clock
    _install_time(clock)
    _install_datetime(clock)
    _install_threading(clock)
    _install_subprocess(clock)
    _install_selectors(clock)
    _install_asyncio()
    _install_uvloop()
    _install_zmq(clock)


def _install_time(clock: VirtualClock) -> None:
    page = clock.page
    for name, fn in (
        ("time", page.time), ("time_ns", page.time_ns),
        ("monotonic", page.monotonic), ("monotonic_ns", page.monotonic_ns),
        ("perf_counter", page.monotonic), ("perf_counter_ns", page.monotonic_ns),
    ):
        _keep(f"time.{name}", getattr(time, name))
        setattr(time, name, fn)
    _keep("time.sleep", time.sleep)

    def sleep(seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        clock.sleep_until(_virtual_timeout_deadline(clock, seconds))

    time.sleep = sleep


def _install_datetime(clock: VirtualClock) -> None:
    # datetime's C type reads the system clock directly and cannot be patched; replace the
    # module's classes with subclasses whose constructors from "now" read the session clock.
    base_dt, base_date = _keep("datetime.datetime", _dt.datetime), _keep("datetime.date", _dt.date)
    page = clock.page

    class datetime(base_dt):
        @classmethod
        def now(cls, tz: _dt.tzinfo | None = None) -> _dt.datetime:
            return cls.fromtimestamp(page.time(), tz)

        @classmethod
        def utcnow(cls) -> _dt.datetime:
            return cls.fromtimestamp(page.time(), _dt.UTC).replace(tzinfo=None)

        @classmethod
        def today(cls) -> _dt.datetime:
            return cls.fromtimestamp(page.time())

    class date(base_date):
        @classmethod
        def today(cls) -> _dt.date:
            return cls.fromtimestamp(page.time())

    datetime.__module__ = date.__module__ = "datetime"
    _dt.datetime, _dt.date = datetime, date


def _install_threading(clock: VirtualClock) -> None:
    threading._time = clock.page.monotonic  # type: ignore[attr-defined]
    import queue

    queue.time = clock.page.monotonic  # type: ignore[attr-defined]

    cond_wait = _keep("threading.Condition.wait", threading.Condition.wait)
    allocate = threading._allocate_lock  # type: ignore[attr-defined]

    def wait(self: threading.Condition, timeout: float | None = None) -> bool:
        if timeout is not None and timeout <= 0:
            return cond_wait(self, timeout)
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = allocate()
        waiter.acquire()
        self._waiters.append(waiter)  # type: ignore[attr-defined]
        saved = self._release_save()  # type: ignore[attr-defined]
        timed_out = False
        token = None

        def expire() -> None:
            # Under the condition's lock, so that no notify() races with us for the waiter.
            nonlocal timed_out
            with self:
                if waiter in self._waiters:  # type: ignore[attr-defined]
                    self._waiters.remove(waiter)  # type: ignore[attr-defined]
                    timed_out = True
                    waiter.release()

        try:
            with clock.waiting():
                if timeout is not None:
                    token = clock.call_at(_virtual_timeout_deadline(clock, timeout), expire)
                waiter.acquire()
            return not timed_out
        finally:
            if token is not None:
                clock.cancel(token)
            self._acquire_restore(saved)  # type: ignore[attr-defined]

    threading.Condition.wait = wait  # type: ignore[method-assign]

    bootstrap = _keep("threading.Thread._bootstrap_inner", threading.Thread._bootstrap_inner)  # type: ignore[attr-defined]

    def _bootstrap_inner(self: threading.Thread) -> None:
        if getattr(self, "_revati_internal", False):
            return bootstrap(self)
        clock.thread_started()
        try:
            return bootstrap(self)
        finally:
            clock.thread_ended()

    threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]

    join = _keep("threading.Thread.join", threading.Thread.join)

    def thread_join(self: threading.Thread, timeout: float | None = None) -> None:
        if timeout is not None:
            # A timed join polls in short virtual sleeps: it cannot be woken from outside.
            deadline = _virtual_timeout_deadline(clock, timeout)
            while self.is_alive() and clock.now_ns() < deadline:
                join(self, 0.0005)
                if self.is_alive():
                    clock.sleep_until(min(deadline, clock.now_ns() + 1_000_000))
            return None
        with clock.waiting():
            return join(self)

    threading.Thread.join = thread_join  # type: ignore[method-assign]


def _install_subprocess(clock: VirtualClock) -> None:
    popen_wait = _keep("subprocess.Popen.wait", subprocess.Popen.wait)

    def wait(self: subprocess.Popen, timeout: float | None = None) -> int:
        if timeout is not None:
            return popen_wait(self, timeout)  # polls with time.sleep: hooked already
        with clock.waiting():
            return popen_wait(self)

    subprocess.Popen.wait = wait  # type: ignore[method-assign]


def _sliced_wait(clock: VirtualClock, timeout: float, once: Callable[[float], Any],
                 ready: Callable[[Any], bool]) -> Any:
    """Wait for I/O (`once(real_timeout)`) until ready or `timeout` virtual seconds pass."""
    deadline = _virtual_timeout_deadline(clock, timeout)
    with clock.waiting(deadline):
        while True:
            result = once(POLL_SLICE_S)
            if ready(result) or clock.now_ns() >= deadline:
                return result


def _install_selectors(clock: VirtualClock) -> None:
    classes = [c for c in ("EpollSelector", "PollSelector", "SelectSelector", "DevpollSelector",
                           "KqueueSelector") if hasattr(selectors, c)]
    for name in classes:
        cls = getattr(selectors, name)
        original = _keep(f"selectors.{name}.select", cls.select)

        def select(self: selectors.BaseSelector, timeout: float | None = None,
                   _orig: Callable[..., Any] = original) -> Any:
            if timeout is not None and timeout <= 0:
                return _orig(self, timeout)
            waker = getattr(self, "_revati_waker", None)
            if timeout is None:
                with clock.waiting():
                    return _orig(self, None)
            if waker is None:
                return _sliced_wait(clock, timeout, lambda t: _orig(self, t), bool)
            token = clock.call_at(_virtual_timeout_deadline(clock, timeout), waker)
            try:
                with clock.waiting():
                    return _orig(self, None)
            finally:
                clock.cancel(token)

        cls.select = select


def _install_asyncio() -> None:
    # Each selector loop gets its self-pipe write as the waker, so that a virtual deadline
    # reached by a jump wakes the loop at once.
    init = _keep("asyncio.BaseSelectorEventLoop.__init__",
                 asyncio.selector_events.BaseSelectorEventLoop.__init__)

    def __init__(self: asyncio.AbstractEventLoop, selector: Any = None) -> None:
        init(self, selector)
        self._selector._revati_waker = self._write_to_self  # type: ignore[attr-defined]

    asyncio.selector_events.BaseSelectorEventLoop.__init__ = __init__  # type: ignore[method-assign]


def _install_uvloop() -> None:
    # uvloop's clock lives in libuv and cannot be virtualised: emulated processes run the
    # standard loop instead (revatid itself keeps uvloop).
    if importlib.util.find_spec("uvloop") is None:
        return
    import uvloop

    uvloop.install = lambda: None
    uvloop.new_event_loop = asyncio.new_event_loop
    uvloop.EventLoopPolicy = asyncio.DefaultEventLoopPolicy
    uvloop.run = asyncio.run
    uvloop.Loop = asyncio.SelectorEventLoop


def _install_zmq(clock: VirtualClock) -> None:
    if "zmq" not in sys.modules and importlib.util.find_spec("zmq") is None:
        return
    import zmq

    poller_poll = _keep("zmq.Poller.poll", zmq.Poller.poll)

    def poll(self: zmq.Poller, timeout: float | None = None) -> list:
        if timeout is None or timeout < 0:
            with clock.waiting():
                return poller_poll(self, None)
        if timeout == 0:
            return poller_poll(self, 0)
        return _sliced_wait(clock, timeout / 1000.0,
                            lambda t: poller_poll(self, max(1, int(t * 1000))), bool)

    zmq.Poller.poll = poll
    socket_poll = _keep("zmq.Socket.poll", zmq.Socket.poll)

    def sock_poll(self: zmq.Socket, timeout: float | None = None, flags: int = zmq.POLLIN) -> int:
        if timeout is None or timeout < 0:
            with clock.waiting():
                return socket_poll(self, None, flags)
        if timeout == 0:
            return socket_poll(self, 0, flags)
        return _sliced_wait(clock, timeout / 1000.0,
                            lambda t: socket_poll(self, max(1, int(t * 1000)), flags), bool)

    zmq.Socket.poll = sock_poll


def installed() -> VirtualClock | None:
    return _clock


__all__ = ["NO_DEADLINE", "install", "installed"]
