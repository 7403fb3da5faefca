"""The kernel's view of participants: it must never miss a runnable thread (a false "nothing
runs" would let the clock jump past work in flight)."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from revati.revatid import procwatch


def test_a_spinning_process_is_runnable() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)  # past the interpreter's start-up: it spins, so it is always runnable
        watch = procwatch.ProcWatch(spinner.pid)
        assert all(watch.runnable() for _ in range(200))
    finally:
        spinner.kill()
        spinner.wait()


def test_a_sleeping_process_is_not_runnable() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        assert not procwatch.ProcWatch(sleeper.pid).runnable()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_watch_names_its_process_as_it_is_now() -> None:
    """The name the run summary gives a participant judged through /proc: its main thread's,
    renamed since start-up (vLLM's and SGLang's processes set theirs with setproctitle)."""
    sleeper = subprocess.Popen([sys.executable, "-c", """
import ctypes, time
ctypes.CDLL(None).prctl(15, b"renamed::proc", 0, 0, 0)  # PR_SET_NAME
time.sleep(30)
"""])
    try:
        time.sleep(0.5)
        watch = procwatch.ProcWatch(sleeper.pid)
        assert watch.comm == b""
        watch.asleep()
        assert watch.comm == b"renamed::proc"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_threads_that_come_and_go_are_followed_and_their_files_closed() -> None:
    churn = subprocess.Popen([sys.executable, "-c", """
import threading, time
while True:
    ts = [threading.Thread(target=time.sleep, args=(0.01,)) for _ in range(8)]
    for t in ts: t.start()
    for t in ts: t.join()
"""])
    try:
        watch = procwatch.ProcWatch(churn.pid)
        for _ in range(300):
            watch.runnable()
            assert len(watch._stat_fds) <= 9  # the main thread and at most 8 others
        churn.kill()
        churn.wait()
        assert not watch.runnable() and not watch._stat_fds
    finally:
        churn.kill()
        churn.wait()


def test_a_thread_started_after_the_last_listing_is_seen_at_the_next_look() -> None:
    """runnable() reads the stat files it listed before while the thread count holds: a new
    thread changes the count, so it is listed and read at once."""
    proc = subprocess.Popen([sys.executable, "-c", """
import sys, threading, time
sys.stdin.readline()
threading.Thread(target=lambda: [None for _ in iter(int, 1)], daemon=True).start()
time.sleep(30)
"""], stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)
        watch = procwatch.ProcWatch(proc.pid)
        assert not any(watch.runnable() for _ in range(10))
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        time.sleep(0.3)
        assert watch.runnable() and watch.runnable()
    finally:
        proc.kill()
        proc.wait()


BUSY_GLOO_LOOP = """
import ctypes, threading, time
def loop():
    ctypes.CDLL(None).prctl(15, b"gloo_tcp_loop", 0, 0, 0)  # PR_SET_NAME, as gloo names it
    while True: pass
threading.Thread(target=loop, daemon=True).start()
time.sleep(30)
"""


def test_a_gloo_transport_loop_is_a_bystander_for_runnable_but_not_for_asleep() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BUSY_GLOO_LOOP])
    try:
        time.sleep(0.5)
        watch = procwatch.ProcWatch(proc.pid)
        watch.runnable()  # first sight: names are read, the loop counts once
        assert len(watch._bystanders) == 1
        assert not any(watch.runnable() for _ in range(50))
        assert not watch.asleep() and not watch.asleep()  # a busy thread: no "proc" wait
    finally:
        proc.kill()
        proc.wait()


def test_every_cpu_has_a_ksoftirqd_thread_to_watch() -> None:
    """The in-flight check reads them; a host where none were found would skip it silently."""
    fds = procwatch._softirq_threads()
    try:
        assert len(fds) >= 1
    finally:
        for fd in fds:
            os.close(fd)
    assert procwatch.softirq_pending() in (True, False)


@pytest.fixture
def quiet_timekeeper(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A timekeeper whose one participant waits (by its slot) and sleeps (by the kernel):
    (timekeeper, its quiescence as the slots tell it)."""
    from revati.adapters.clock._vclock import Page
    from revati.revatid import timekeeper
    from tests.daemon.test_timekeeper_grace import _Member

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    loop = asyncio.new_event_loop()
    try:
        time.sleep(0.5)
        page = Page(str(tmp_path / "page"), create=True)
        page.slot_claim(0, sleeper.pid, 0)
        page.slot_deadline(0, page.now() + 10**9)
        members = [_Member(0, sleeper.pid)]
        tk = timekeeper.Timekeeper(page, lambda: members, loop,
                                   joining=lambda: False, outsiders=lambda: False,
                                   grace_ns=50_000, proc_check=True,
                                   on_jump=lambda _b, _a: None)
        quiet = tk._slots()
        assert quiet is not None
        yield tk, quiet
        tk.stop()
    finally:
        loop.close()
        sleeper.kill()
        sleeper.wait()


def test_no_jump_while_the_kernel_holds_network_work_back(
        quiet_timekeeper: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """ksoftirqd is runnable: a loopback message to the participant may not have woken it
    yet, so the timekeeper must not agree to jump; once ksoftirqd is done, it does."""
    from revati.revatid import timekeeper

    tk, quiet = quiet_timekeeper
    monkeypatch.setattr(timekeeper, "softirq_pending", lambda: True)
    assert not tk._kernel_agrees(quiet)
    monkeypatch.setattr(timekeeper, "softirq_pending", lambda: False)
    assert tk._kernel_agrees(quiet)


def test_no_jump_while_a_participant_is_being_woken_on_an_idle_host(
        quiet_timekeeper: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread woken onto an idle CPU says R in its stat file before any run queue counts
    it (it waits on that CPU's wake list for the interrupt), so nothing host-wide shows it:
    the timekeeper must read the participant's own threads even when the host looks idle.
    (It once read /proc/loadavg first and skipped them when that showed only itself: the
    M/D/1 test then lost a request's wake-up in one run of five.)"""
    from revati.revatid import timekeeper

    tk, quiet = quiet_timekeeper
    monkeypatch.setattr(timekeeper, "softirq_pending", lambda: False)
    assert tk._kernel_agrees(quiet)
    watch = quiet.members[0].watch
    monkeypatch.setattr(watch, "runnable", lambda: True)
    assert not tk._kernel_agrees(quiet)


def _tree(command: str) -> subprocess.Popen:
    proc = subprocess.Popen(["sh", "-c", command])
    time.sleep(0.3)
    return proc


@pytest.mark.parametrize(("command", "busy"), [
    ("sleep 30", False),
    ("sh -c 'while :; do :; done'; sleep 30", True),  # a spinning grandchild
    ("while :; do /bin/true; done", True),  # short-lived children, one after another
])
def test_a_process_tree_is_busy_while_any_of_it_computes(command: str, busy: bool) -> None:
    """A child that never joins (a build tool under a participant): busy while a process of
    its tree is scheduled, starts or ends between two looks; its first look is busy."""
    proc = _tree(command)
    try:
        tree = procwatch.ProcessTree(proc.pid)
        assert tree.busy(frozenset())  # nothing to compare with yet
        assert all(tree.busy(frozenset()) == busy for _ in range(20))
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
        proc.kill()
        proc.wait()


def test_a_participant_in_the_tree_is_left_to_its_slot() -> None:
    """A Python participant under a shell is judged by its slot, not as the shell's work."""
    proc = _tree(f"{sys.executable} -c 'while True: pass'")
    try:
        tree = procwatch.ProcessTree(proc.pid)
        spinner = next(iter(procwatch._children(proc.pid)))
        assert tree.busy(frozenset())
        tree.busy(frozenset({spinner}))  # the tree it sees changed: busy
        assert not any(tree.busy(frozenset({spinner})) for _ in range(20))
        assert tree.busy(frozenset())
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
        proc.kill()
        proc.wait()


def test_a_participants_descendants_leave_its_own_threads_out() -> None:
    """A participant's own threads are its slot's and its watch's to judge: its descendants'
    tree counts only the processes below it."""
    spinning_root = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '30'])\n"
                               "while True: pass"])
    idle_root = _tree("sh -c 'while :; do :; done'; sleep 30")
    try:
        time.sleep(0.3)
        own = procwatch.ProcessTree(spinning_root.pid, root_counts=False)
        own.busy(frozenset({spinning_root.pid}))
        assert not any(own.busy(frozenset({spinning_root.pid})) for _ in range(20))
        below = procwatch.ProcessTree(idle_root.pid, root_counts=False)
        assert all(below.busy(frozenset({idle_root.pid})) for _ in range(20))
    finally:
        for proc in (spinning_root, idle_root):
            subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
            proc.kill()
            proc.wait()
