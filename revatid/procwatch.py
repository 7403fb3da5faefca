"""What the kernel knows about a participant's threads: the fallback for waits Revati does not
hook, and the check that no message is in flight (a receiver woken by a socket write is
runnable before it runs any hooked code)."""

from __future__ import annotations

import os
import weakref


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _state(pid: int, tid: str) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "X"
    return chr(data[data.rfind(b")") + 2])


def _switches(pid: int, tid: str) -> int:
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
            return int(f.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 0


def alive(pid: int) -> bool:
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid, str(pid)) not in ("Z", "X")


def exe_name(pid: int) -> str:
    """The file name of the program `pid` runs ("" when it cannot be read)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


def looks_like_python(pid: int) -> bool:
    """The process runs a Python interpreter (so, started under Revati, it will join)."""
    return exe_name(pid).startswith("python")


_softirq_fds: list[int] | None = None


def _softirq_threads() -> list[int]:
    """Stat files of the kernel's ksoftirqd threads (one per CPU), opened once."""
    fds = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/comm", "rb") as f:
                if not f.read().startswith(b"ksoftirqd/"):
                    continue
            fds.append(os.open(f"/proc/{name}/stat", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            continue
    return fds


def softirq_pending() -> bool:
    """A ksoftirqd thread is runnable: the kernel put off its network receive work (over
    budget, or while ksoftirqd already ran), so a loopback message sent before its sender
    went to wait may not have woken its receiver yet. Nothing the participants' own threads
    show: the sender waits, and the receiver still sleeps."""
    global _softirq_fds
    if _softirq_fds is None:
        _softirq_fds = _softirq_threads()
    for fd in _softirq_fds:
        try:
            data = os.pread(fd, 512, 0)
        except OSError:
            continue
        if data[data.rfind(b")") + 2] == ord("R"):
            return True
    return False


KEPT_OPEN = 128  # stat files kept open per process; more threads than that are opened per read
# runnable() lists the process's threads (a directory read: ~12 us, as much as ten stat files)
# only when its main thread's stat shows another thread count, a thread's file fails, or every
# RELIST_EVERY looks (a thread that ended and one that began in between leave the count as it
# was, and the one that ended may have been a bystander, whose file is not read).
RELIST_EVERY = 64
# Threads (by name) that no hooked wait depends on, left out of runnable(): gloo's transport
# loops wake every 10 ms from a real-time epoll timeout, and its workers run CPU collectives
# for a caller that waits inside gloo, unhooked, so that process is judged by asleep(), which
# reads every thread. A vLLM process has ~40 of them among its ~50 threads.
BYSTANDERS = frozenset({b"gloo_tcp_loop", b"pt_gloo_runloop"})


def _close(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class ProcWatch:
    """Samples one process's threads: run states and context-switch counts."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last_switches: int | None = None
        # Each thread's stat file stays open: a pread costs a quarter of open, read, close.
        # A file whose thread has gone fails to read, even if its id is reused.
        self._stat_fds: dict[str, int] = {}
        self._bystanders: set[str] = set()  # named so at their first read
        self._main = str(pid)
        # runnable()'s fast path: stat files of the threads it reads, the main thread's first
        # (its num_threads field tells whether the listing still holds), and that count.
        self._watched: list[int] | None = None
        self._listed = b""
        self._looks = 0
        self.comm = b""  # the process's name (its main thread's), as last read: for messages
        weakref.finalize(self, _close, self._stat_fds)

    def _states(self, tasks: list[str], skip_bystanders: bool = False) -> list[str]:
        fds = self._stat_fds
        for gone in fds.keys() - set(tasks):
            os.close(fds.pop(gone))
            self._bystanders.discard(gone)
        states = []
        for tid in tasks:
            if skip_bystanders and tid in self._bystanders:
                continue
            fd = fds.get(tid)
            first = fd is None
            if first and len(fds) < KEPT_OPEN:
                try:
                    fd = fds[tid] = os.open(f"/proc/{self.pid}/task/{tid}/stat",
                                            os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    states.append("X")
                    continue
            if fd is None:
                states.append(_state(self.pid, tid))
                continue
            try:
                data = os.pread(fd, 1024, 0)
            except OSError:
                states.append("X")
                continue
            end = data.rfind(b")")
            if first or tid == self._main:
                name = data[data.find(b"(") + 1:end]
                if first and name in BYSTANDERS:
                    self._bystanders.add(tid)
                if tid == self._main:  # setproctitle may rename it at any time
                    self.comm = name
            states.append(chr(data[end + 2]))
        return states

    def runnable(self) -> bool:
        """Some thread of the process, bystanders aside, is running, waiting for a CPU, or
        being woken (a thread on an idle CPU's wake list already says R)."""
        self._looks += 1
        watched = self._watched
        if watched is None or self._looks % RELIST_EVERY == 0:
            return self._runnable_relisted()
        try:
            data = os.pread(watched[0], 1024, 0)  # the main thread's
        except OSError:  # the process has gone
            return self._runnable_relisted()
        end = data.rfind(b")")
        fields = data[end + 2:].split(None, 18)
        if fields[17] != self._listed:  # field 20, num_threads: threads came or went
            return self._runnable_relisted()
        if fields[0] == b"R":
            return True
        for fd in watched[1:]:
            try:
                data = os.pread(fd, 1024, 0)
            except OSError:  # the thread has gone
                return self._runnable_relisted()
            if data[data.rfind(b")") + 2] == 82:  # "R"
                return True
        return False

    def _runnable_relisted(self) -> bool:
        tasks = _tasks(self.pid)
        runnable = "R" in self._states(tasks, skip_bystanders=True)
        fds = self._stat_fds
        main = fds.get(self._main)
        if main is None or len(tasks) > len(fds):  # gone, or too many threads to keep open
            self._watched = None
        else:
            self._watched = [main, *(fd for tid, fd in fds.items()
                                     if tid != self._main and tid not in self._bystanders)]
            self._listed = str(len(tasks)).encode()
        return runnable

    def asleep(self) -> bool:
        """Every thread sleeps now and none was scheduled since the previous call."""
        tasks = _tasks(self.pid)
        if not tasks or any(s not in ("S", "I") for s in self._states(tasks)):
            self._last_switches = None
            return False
        switches = sum(_switches(self.pid, t) for t in tasks)
        quiet = self._last_switches == switches
        self._last_switches = switches
        return quiet


def _children(pid: int) -> list[int]:
    """The live child processes of every thread of `pid`."""
    kids = []
    for tid in _tasks(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(map(int, f.read().split()))
        except OSError:
            continue
    return kids


class ProcessTree:
    """A child process that will never join the session (a compiler, a shell, a build tool a
    participant started) and its descendants, participants aside: their CPU work is the
    program's work, so the clock must not jump over it (DESIGN, rule 4), but nothing in them
    tells Revati when they wait. The kernel does: `busy()` is a tree-wide `asleep()`."""

    def __init__(self, pid: int, root_counts: bool = True) -> None:
        self.pid = pid
        self.root_counts = root_counts  # False: only its descendants are the tree's work
        self._last: tuple[frozenset[int], int] | None = None

    def busy(self, participants: frozenset[int]) -> bool:
        """Some process of the tree runs or waits on the disk, or one was scheduled, started
        or ended since the previous call (a build tool between two compiler runs sleeps)."""
        pids, switches, stack = set(), 0, [self.pid]
        while stack:
            pid = stack.pop()
            if pid in pids or (pid in participants and pid != self.pid):
                continue
            pids.add(pid)
            if pid != self.pid or self.root_counts:
                for tid in _tasks(pid):
                    if _state(pid, tid) in ("R", "D"):
                        self._last = None
                        return True
                    switches += _switches(pid, tid)
            stack.extend(_children(pid))
        now = (frozenset(pids), switches)
        quiet = self._last == now
        self._last = now
        return not quiet
