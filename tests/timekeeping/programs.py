"""Small programs that the virtual-time tests run as session participants.

    python programs.py NAME ARGS...   prints one JSON line
"""

from __future__ import annotations

import json
import os
import select
import sys
import time


def monotonic_reads(rounds: str) -> dict:
    """Reads across many jumps; reports whether any read went backwards."""
    last, backwards, reads = -1.0, 0, 0
    for i in range(int(rounds)):
        time.sleep(0.05 * (1 + i % 3))
        for _ in range(200):
            now = time.monotonic()
            backwards += now < last
            last = now
            reads += 1
    return {"backwards": backwards, "reads": reads}


def ping_pong(rounds: str) -> dict:
    """Parent and child exchange virtual timestamps over pipes, sleeping between turns."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    me_r, me_w = (b_r, a_w) if pid == 0 else (a_r, b_w)
    violations, exchanges = 0, 0
    if pid != 0:
        os.write(me_w, b"%.9f\n" % time.time())
    for _ in range(int(rounds)):
        line = b""
        while not line.endswith(b"\n"):
            line += os.read(me_r, 1)
        received = time.time()
        violations += received < float(line)
        exchanges += 1
        time.sleep(0.01)
        os.write(me_w, b"%.9f\n" % time.time())
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return {"violations": violations, "exchanges": exchanges}


def sleeper(seconds: str) -> dict:
    t0 = time.monotonic()
    time.sleep(float(seconds))
    return {"asked": float(seconds), "slept": time.monotonic() - t0, "woke_at": time.monotonic()}


def cancelled_timer(seconds: str) -> dict:
    """A wake-up at 10 ms fires, one at 20 ms is cancelled while not first in line, then the
    program sleeps: the cancelled deadline must not hold the session (it once left the
    timekeeper jumping to it forever)."""
    from revati.adapters import session

    clock = session.member().clock
    t0 = clock.now_ns()
    fired = []
    clock.call_at(t0 + 10_000_000, lambda: fired.append(clock.now_ns() - t0))
    late = clock.call_at(t0 + 20_000_000, lambda: fired.append(-1))
    clock.cancel(late)
    time.sleep(float(seconds))
    return {"fired": fired, "virtual_s": (clock.now_ns() - t0) / 1e9}


def freeze_burn(ms: str) -> dict:
    """Burn CPU inside a freeze; the session clock must not move."""
    from revati.adapters.clock import _vclock
    from revati.adapters.session import member

    clock = member().clock
    t0 = time.monotonic()
    with clock.freeze():
        r0 = _vclock.real_monotonic_ns()
        while _vclock.real_monotonic_ns() - r0 < float(ms) * 1e6:
            pass
    return {"virtual_ms": (time.monotonic() - t0) * 1e3}


def spin_real(ms: str) -> dict:
    """Busy for `ms` of real time (no hooked wait): the clock must flow at real rate."""
    from revati.adapters.clock import _vclock

    t0 = time.monotonic()
    r0 = _vclock.real_monotonic_ns()
    while _vclock.real_monotonic_ns() - r0 < float(ms) * 1e6:
        pass
    return {"virtual_ms": (time.monotonic() - t0) * 1e3,
            "real_ms": (_vclock.real_monotonic_ns() - r0) / 1e6}


def unhooked_wait(seconds: str) -> dict:
    """Blocks in select.select (C, not hooked) while a child sleeps in virtual time."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        time.sleep(float(seconds))
        os.write(w, b"x")
        os._exit(0)
    t0 = time.monotonic()
    select.select([r], [], [])
    os.waitpid(pid, 0)
    return {"virtual_s": time.monotonic() - t0}


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])), flush=True)
