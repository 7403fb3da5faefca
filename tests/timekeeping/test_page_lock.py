"""A participant killed inside the session page's lock does not wedge the session.

Every hook takes the freeze lock, so a participant that is killed (SIGKILL, or SIGTERM's default
action, which `Popen.terminate` sends) can die holding it. Under a spin lock every other process
of the session, and revatid's loop with it, then spun forever. The lock is a robust mutex: the
next locker inherits it and repairs the clock's sequence the dead holder left open."""

from __future__ import annotations

import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from revati.adapters.clock._vclock import Page

# The freeze header (the page file's second page) starts with its lock, whose first word is
# nonzero while the lock is held (glibc's mutex keeps its owner's tid there).
LOCK_WORD = 4096

HAMMER = """
import os, sys
from revati.adapters.clock._vclock import Page
page = Page(sys.argv[1])
page.slot_claim(0, os.getpid(), 1)
print("ready", flush=True)
while True:
    page.freeze_enter()
    page.freeze_exit()
    page.slot_running(0, -1)
    page.slot_running(0, 1)
"""

# What revatid does when it finds a participant dead, then what any process does next.
CHECK = """
import sys
from revati.adapters.clock._vclock import Page
page = Page(sys.argv[1], writer=True)
released = page.freeze_release(0)
page.slot_free(0)
v0 = page.now()
page.freeze_enter()
page.freeze_exit()
print(released, page.freeze_stats()[0], page.now() >= v0)
"""


def kill_inside_the_lock(child: subprocess.Popen, page: mmap.mmap) -> None:
    """Stop the child until it is stopped holding the lock, then kill it there. Between two
    stops the child runs for a random few microseconds: stopped again at once, on a loaded
    host it may not have run at all and sits where it sat (CI once missed 100,000 times)."""
    rng = random.Random(child.pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        os.kill(child.pid, signal.SIGSTOP)
        os.waitid(os.P_PID, child.pid, os.WSTOPPED)
        if struct.unpack_from("<i", page, LOCK_WORD)[0]:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            return
        os.kill(child.pid, signal.SIGCONT)
        until = time.perf_counter() + rng.uniform(0, 50e-6)
        while time.perf_counter() < until:
            pass
    child.kill()
    child.wait()
    raise AssertionError("the child was never stopped inside the lock")


def test_a_participant_killed_holding_the_lock_leaves_it_usable(tmp_path: Path) -> None:
    path = str(tmp_path / "page")
    Page(path, create=True)
    with open(path, "rb") as f:
        page = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    for attempt in range(10):
        child = subprocess.Popen([sys.executable, "-c", HAMMER, path], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().strip() == "ready"
        kill_inside_the_lock(child, page)
        try:
            check = subprocess.run([sys.executable, "-c", CHECK, path], capture_output=True,
                                   text=True, timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"kill {attempt}: the session page stayed locked after its "
                                 "holder died") from None
        assert check.returncode == 0, check.stderr
        released, held, monotonic = check.stdout.split()
        assert int(released) in (0, 1)  # the freeze the child held when it died, if any
        assert held == "0" and monotonic == "True"
