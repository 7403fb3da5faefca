"""What the kernel knows about a participant's threads: the fallback for waits Revati does not
hook, and the check that no message is in flight (a receiver woken by a socket write is
runnable before it runs any hooked code)."""

from __future__ import annotations

import os


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


def looks_like_python(pid: int) -> bool:
    """The process runs a Python interpreter (so, started under Revati, it will join)."""
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    return exe.startswith("python")


class ProcWatch:
    """Samples one process's threads: run states and context-switch counts."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last_switches: int | None = None

    def runnable(self) -> bool:
        """Some thread of the process is running or waiting for a CPU."""
        return any(_state(self.pid, t) == "R" for t in _tasks(self.pid))

    def asleep(self) -> bool:
        """Every thread sleeps now and none was scheduled since the previous call."""
        tasks = _tasks(self.pid)
        if not tasks or any(_state(self.pid, t) not in ("S", "I") for t in tasks):
            self._last_switches = None
            return False
        switches = sum(_switches(self.pid, t) for t in tasks)
        quiet = self._last_switches == switches
        self._last_switches = switches
        return quiet
