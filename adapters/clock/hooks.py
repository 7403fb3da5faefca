"""Clock hooks: make a Python process read and wait on the session clock.

Installed once per process by the session runtime (at interpreter start, or at attach time).
Reads are the C methods of the session page, bound directly into the `time` module, so a
hooked `time.monotonic()` costs one C call. Waits mark the thread as waiting (see
runtime.VirtualClock) so that the timekeeper can jump when every participant waits.

Covered: time.time/monotonic/perf_counter (and _ns), time.sleep, datetime.now/utcnow/today,
threading waits with timeouts (Condition, hence Event, Semaphore, Barrier, queue.Queue),
queue.SimpleQueue (hence idle ThreadPoolExecutor workers),
Thread.join, subprocess waits and communicate, blocking socket receives and os.read,
selectors (hence asyncio, whose loops the waker thread wakes at their virtual deadline),
uvloop (replaced by the standard loop, whose clock can be virtualised, with uvloop's
TCP_NODELAY), zmq polls and blocking zmq receives.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from revati.adapters.clock._vclock import NO_DEADLINE
from revati.adapters.clock.runtime import NS, VirtualClock
from revati.adapters.postimport import when_imported

_originals: dict[str, Any] = {}
_clock: VirtualClock | None = None

# A timed queue get cannot watch a file descriptor: it waits in real slices this long and
# re-reads the clock between them.
POLL_SLICE_S = 0.001


def real_monotonic() -> float:
    """The host's own monotonic clock, unhooked: for reporting how long emulation took."""
    return _originals.get("time.monotonic", time.monotonic)()


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
    _install_simple_queue(clock)
    _install_subprocess(clock)
    _install_sockets(clock)
    _install_os_read(clock)
    _install_selectors(clock)
    when_imported("asyncio", lambda _: _install_asyncio())
    when_imported("uvloop", _install_uvloop)
    when_imported("zmq", lambda zmq: _install_zmq(clock, zmq))


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
    # No __slots__ of their own: the instance size stays the C type's, which Cython modules
    # (pandas) check at import against `datetime.datetime` (a larger size crashed pandas).
    base_dt, base_date = _keep("datetime.datetime", _dt.datetime), _keep("datetime.date", _dt.date)
    page = clock.page

    class datetime(base_dt):
        __slots__ = ()

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
        __slots__ = ()

        @classmethod
        def today(cls) -> _dt.date:
            return cls.fromtimestamp(page.time())

    # found as `datetime.datetime` and `datetime.date`: pickle stores a class by its module
    # and qualified name (torchrun's rendezvous pickles a datetime)
    datetime.__module__ = date.__module__ = "datetime"
    datetime.__qualname__, date.__qualname__ = "datetime", "date"
    _dt.datetime, _dt.date = datetime, date
    _real_datetime_for_extensions(base_dt, base_date)


def _real_datetime_for_extensions(base_dt: type, base_date: type) -> None:
    """Compiled modules that subclass datetime in C (pandas' Timestamp, via Cython's
    `cimport datetime`) take the class from the module at import and lay out their type on
    it: they must get the C type, not the session's Python subclass (which crashed pandas in
    garbage collection). Extension modules load with the originals in place."""
    from importlib.machinery import ExtensionFileLoader

    def with_real_datetime(load: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def wrapper(self: Any, arg: Any) -> Any:
            session = _dt.datetime, _dt.date
            _dt.datetime, _dt.date = base_dt, base_date
            try:
                return load(self, arg)
            finally:
                _dt.datetime, _dt.date = session
        return wrapper

    for name in ("create_module", "exec_module"):
        original = _keep(f"ExtensionFileLoader.{name}", getattr(ExtensionFileLoader, name))
        setattr(ExtensionFileLoader, name, with_real_datetime(original))


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


def _install_simple_queue(clock: VirtualClock) -> None:
    # queue.SimpleQueue is C: its blocking get (where every idle ThreadPoolExecutor worker
    # sits) would look like a running thread. Queues made from here on are a subclass with a
    # hooked get.
    import _queue
    import queue

    base = _queue.SimpleQueue
    base_get = base.get
    empty = _queue.Empty

    class SimpleQueue(base):  # type: ignore[misc,valid-type]
        __slots__ = ()

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            if not block or (timeout is not None and timeout <= 0):
                return base_get(self, block, timeout)
            if timeout is None:
                with clock.waiting():
                    return base_get(self)

            def once(real: float) -> tuple[bool, Any]:
                try:
                    return True, base_get(self, True, real)
                except empty:
                    return False, None

            got, item = _sliced_wait(clock, timeout, once, lambda r: r[0])
            if not got:
                raise empty
            return item

    SimpleQueue.__module__ = "queue"
    queue.SimpleQueue = SimpleQueue  # type: ignore[misc]


def _install_subprocess(clock: VirtualClock) -> None:
    popen_wait = _keep("subprocess.Popen.wait", subprocess.Popen.wait)

    def wait(self: subprocess.Popen, timeout: float | None = None) -> int:
        if timeout is not None:
            return popen_wait(self, timeout)  # polls with time.sleep: hooked already
        with clock.waiting():
            return popen_wait(self)

    subprocess.Popen.wait = wait  # type: ignore[method-assign]
    communicate = _keep("subprocess.Popen.communicate", subprocess.Popen.communicate)

    def popen_communicate(self: subprocess.Popen, input: Any = None,
                          timeout: float | None = None) -> Any:
        if timeout is not None:
            return communicate(self, input, timeout)
        # Blocks in C reads of the child's pipes, which no other hook sees.
        with clock.waiting():
            return communicate(self, input)

    subprocess.Popen.communicate = popen_communicate  # type: ignore[method-assign]


def _install_os_read(clock: VirtualClock) -> None:
    # A blocking read of a pipe is a wait for another process (multiprocessing's pipes).
    read = _keep("os.read", os.read)
    get_blocking = os.get_blocking

    def os_read(fd: int, n: int) -> bytes:
        if not get_blocking(fd):
            return read(fd, n)
        token = clock.wait_begin()
        try:
            return read(fd, n)
        finally:
            clock.wait_end(token)

    os.read = os_read


def _install_sockets(clock: VirtualClock) -> None:
    # A blocking receive is a wait for another process; non-blocking sockets (asyncio's)
    # pass straight through.
    wait_begin, wait_end = clock.wait_begin, clock.wait_end
    for name in ("recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "_accept"):
        original = _keep(f"socket.socket.{name}", getattr(socket.socket, name))

        def blocking(self: socket.socket, *args: Any, _orig: Callable[..., Any] = original,
                     ) -> Any:
            if self.gettimeout() == 0.0:
                return _orig(self, *args)
            token = wait_begin()
            try:
                return _orig(self, *args)
            finally:
                wait_end(token)

        setattr(socket.socket, name, blocking)


def _sliced_wait(clock: VirtualClock, timeout: float, once: Callable[[float], Any],
                 ready: Callable[[Any], bool]) -> Any:
    """Wait (`once(real_timeout)`) until ready or `timeout` virtual seconds pass."""
    deadline = _virtual_timeout_deadline(clock, timeout)
    with clock.waiting(deadline):
        while True:
            result = once(POLL_SLICE_S)
            if ready(result) or clock.now_ns() >= deadline:
                return result


class _AlarmFd:
    """An eventfd that goes back to a free list, not closed, when its thread's storage dies:
    a waker that fired just before its wait was cancelled may still write to it, and a closed
    descriptor's number could by then belong to something else."""

    free: list[int] = []

    def __init__(self) -> None:
        self.fd = self.free.pop() if self.free else os.eventfd(
            0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.pid = os.getpid()

    def __del__(self) -> None:
        if self.pid == os.getpid():
            self.free.append(self.fd)


class _Alarm(threading.local):
    """A thread's own eventfd, which the waker thread makes readable at a virtual deadline: a
    wait on file descriptors (a selector, a zmq poll) watches it too, sleeps without a real
    timeout, and is woken at its virtual timeout however the clock got there (flow or jump)."""

    held: _AlarmFd | None = None

    def get(self) -> int:
        held = self.held
        if held is None or held.pid != os.getpid():  # new thread, or a forked copy of one
            held = self.held = _AlarmFd()
        return held.fd


_alarm = _Alarm()
# A forked child shares its parent's descriptors: the free ones are the parent's, not its own.
os.register_at_fork(after_in_child=_AlarmFd.free.clear)


def _alarmed_wait(clock: VirtualClock, timeout: float, wait: Callable[[int], Any]) -> Any:
    """`wait(fd)`: block on the caller's descriptors and `fd`, with no timeout; returns once
    either is ready, `fd` becoming ready when `timeout` virtual seconds have passed."""
    fd = _alarm.get()
    token = clock.call_at(_virtual_timeout_deadline(clock, timeout),
                          lambda: os.eventfd_write(fd, 1))
    try:
        with clock.waiting():
            return wait(fd)
    finally:
        clock.cancel(token)
        with contextlib.suppress(BlockingIOError):  # drained: the alarm may not have fired
            os.eventfd_read(fd)


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
            if waker is None:
                if timeout is None:
                    with clock.waiting():
                        return _orig(self, None)

                def wait(fd: int) -> list:
                    self.register(fd, selectors.EVENT_READ)
                    try:
                        return [e for e in _orig(self, None) if e[0].fd != fd]
                    finally:
                        self.unregister(fd)

                return _alarmed_wait(clock, timeout, wait)
            _arm_loop_wakeup(clock, self, waker, timeout)
            token = clock.wait_begin()
            try:
                return _orig(self, None)
            finally:
                clock.wait_end(token)

        cls.select = select


def _arm_loop_wakeup(clock: VirtualClock, selector: Any, waker: Callable[[], None],
                     timeout: float | None) -> None:
    """Have the waker thread wake an event loop at its next timer's virtual deadline. A loop
    asks again with (nearly) the same deadline on every iteration: keep that registration
    instead of re-registering it; a stale wake-up is harmless (one more loop iteration)."""
    armed = selector._revati_armed  # (deadline, token) or None
    deadline = None if timeout is None else _virtual_timeout_deadline(clock, timeout)
    if armed is not None:
        if deadline is not None and abs(armed[0] - deadline) < 1000:
            return
        clock.cancel(armed[1])
        selector._revati_armed = None
    if deadline is not None:

        def fire() -> None:
            selector._revati_armed = None
            waker()

        selector._revati_armed = (deadline, clock.call_at(deadline, fire))


def _install_asyncio() -> None:
    import asyncio

    # Each selector loop gets its self-pipe write as the waker, so that a virtual deadline
    # reached by a jump wakes the loop at once.
    init = _keep("asyncio.BaseSelectorEventLoop.__init__",
                 asyncio.selector_events.BaseSelectorEventLoop.__init__)

    def __init__(self: asyncio.AbstractEventLoop, selector: Any = None) -> None:
        init(self, selector)
        self._selector._revati_waker = self._write_to_self  # type: ignore[attr-defined]
        self._selector._revati_armed = None  # type: ignore[attr-defined]

    asyncio.selector_events.BaseSelectorEventLoop.__init__ = __init__  # type: ignore[method-assign]


def _install_uvloop(uvloop: Any) -> None:
    # uvloop's clock lives in libuv and cannot be virtualised: emulated processes run the
    # standard loop instead (revatid itself keeps uvloop), keeping what of uvloop's behaviour
    # the served stack's latencies depend on.
    import asyncio

    class Loop(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
        """The standard loop with uvloop's TCP_NODELAY on every TCP connection. asyncio sets it
        only on sockets made with proto IPPROTO_TCP; vLLM's API server listens on a socket of
        its own made with proto 0, whose connections then kept Nagle's algorithm: each
        streamed response's first chunk waited for the client's delayed ACK of the headers
        (up to 40 real ms: 15-70 virtual ms of TTFT, and the tokens after it bunched)."""

        def _make_socket_transport(self, sock: socket.socket, protocol: Any, waiter: Any = None,
                                   **kwargs: Any) -> Any:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and \
                    sock.type == socket.SOCK_STREAM:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return super()._make_socket_transport(sock, protocol, waiter, **kwargs)

    class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):  # type: ignore[misc,valid-type]
        _loop_factory = Loop

    def run(main: Any, *, loop_factory: Callable[[], Any] = Loop, debug: bool | None = None,
            **run_kwargs: Any) -> Any:
        with asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
            return runner.run(main)

    uvloop.install = lambda: asyncio.set_event_loop_policy(EventLoopPolicy())
    uvloop.new_event_loop = Loop
    uvloop.EventLoopPolicy = EventLoopPolicy
    uvloop.run = run
    uvloop.Loop = Loop


def _install_zmq(clock: VirtualClock, zmq: Any) -> None:
    poller_poll = _keep("zmq.Poller.poll", zmq.Poller.poll)

    def poll(self: zmq.Poller, timeout: float | None = None) -> list:
        if timeout is None or timeout < 0:
            with clock.waiting():
                return poller_poll(self, None)
        if timeout == 0:
            return poller_poll(self, 0)

        def wait(fd: int) -> list:
            self.register(fd, zmq.POLLIN)
            try:
                return [e for e in poller_poll(self, None) if e[0] != fd]
            finally:
                self.unregister(fd)

        return _alarmed_wait(clock, timeout / 1000.0, wait)

    zmq.Poller.poll = poll
    socket_poll = _keep("zmq.Socket.poll", zmq.Socket.poll)

    def sock_poll(self: zmq.Socket, timeout: float | None = None, flags: int = zmq.POLLIN) -> int:
        if timeout is None or timeout < 0:
            with clock.waiting():
                return socket_poll(self, None, flags)
        if timeout == 0:
            return socket_poll(self, 0, flags)

        def wait(fd: int) -> int:
            poller = zmq.Poller()
            poller.register(self, flags)
            poller.register(fd, zmq.POLLIN)
            return dict(poller_poll(poller, None)).get(self, 0)

        return _alarmed_wait(clock, timeout / 1000.0, wait)

    zmq.Socket.poll = sock_poll
    socket_recv = _keep("zmq.Socket.recv", zmq.Socket.recv)
    noblock, again, eagain = zmq.NOBLOCK, zmq.Again, zmq.EAGAIN

    def recv(self: zmq.Socket, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        """A blocking receive (recv_pyobj, recv_multipart... call it: SGLang's detokenizer
        waits in one for its whole run) is a wait: taken at once when a message is there, else
        waited for in a hooked wait, with RCVTIMEO, if set, counted in virtual time."""
        if flags & noblock:
            return socket_recv(self, flags, copy, track)
        try:
            return socket_recv(self, flags | noblock, copy, track)
        except again:
            pass
        timeout = self.rcvtimeo
        if timeout < 0:
            with clock.waiting():
                return socket_recv(self, flags, copy, track)
        if not sock_poll(self, timeout):
            raise again(eagain)
        return socket_recv(self, flags | noblock, copy, track)

    zmq.Socket.recv = recv


def installed() -> VirtualClock | None:
    return _clock


__all__ = ["NO_DEADLINE", "install", "installed"]
