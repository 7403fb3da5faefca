"""A one-shot event-loop timer with microsecond precision.

libuv (under uvloop) keeps timers in whole milliseconds: `call_later(50e-6)` runs at the next
loop iteration, `call_later(0.9e-3)` after about 1.1 ms. The timekeeper's grace interval and
its back-off are tens to hundreds of microseconds, so it arms a Linux timerfd (an hrtimer)
instead, which the loop watches like any other file descriptor. Waking a sleeping loop costs
~65 us on this host (a virtual machine's idle CPU), more than a 50 us grace interval: delays
shorter than SPIN_BELOW_S are waited out by re-queueing a check at each loop iteration (the
loop still serves its sockets in between).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Callable
from typing import Any

_CLOCK_MONOTONIC = 1  # the clock time.monotonic() reads
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
SPIN_BELOW_S = 0.00015


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec),
                                  ctypes.c_void_p]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class PreciseTimer:
    """At most one pending call: `arm` replaces it, `cancel` drops it. Calls run on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fd = _check(_libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
        self._spec = _Itimerspec()
        self._pending: tuple[Callable[..., None], tuple[Any, ...]] | None = None
        self._due = 0.0
        self._timed = False  # the timerfd is armed
        self._spinner: asyncio.Handle | None = None
        loop.add_reader(self.fd, self._expired)

    @property
    def armed(self) -> bool:
        return self._pending is not None

    def arm(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        """Call fn(*args) once `delay` seconds have passed (0: at the next loop iteration)."""
        self._pending = (fn, args)
        self._due = time.monotonic() + delay
        if delay < SPIN_BELOW_S:
            self._disarm_fd()
            if self._spinner is None:
                self._spinner = self.loop.call_soon(self._spin)
        else:
            self._stop_spinning()
            self._set(max(int(delay * 1e9), 1))  # an all-zero value would disarm the timer
            self._timed = True

    def cancel(self) -> None:
        self._pending = None
        self._disarm_fd()
        self._stop_spinning()

    def close(self) -> None:
        if self.fd < 0:
            return
        self.cancel()
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1

    def _set(self, ns: int) -> None:
        self._spec.it_value.tv_sec, self._spec.it_value.tv_nsec = divmod(ns, 1_000_000_000)
        _check(_libc.timerfd_settime(self.fd, 0, ctypes.byref(self._spec), None))

    def _disarm_fd(self) -> None:
        if self._timed:
            self._timed = False
            self._set(0)

    def _stop_spinning(self) -> None:
        if self._spinner is not None:
            self._spinner.cancel()
            self._spinner = None

    def _spin(self) -> None:
        if time.monotonic() < self._due:
            self._spinner = self.loop.call_soon(self._spin)
            return
        self._spinner = None
        self._fire()

    def _expired(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:  # disarmed after it fired: nothing is due
            return
        if not self._timed or time.monotonic() < self._due:
            return  # an expiry of an earlier arming, read after a re-arm
        self._timed = False
        self._fire()

    def _fire(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[0](*pending[1])
