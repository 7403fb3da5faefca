"""Shared fixtures: a real revatid process on a temporary socket, and revatictl runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from revati.revatid.client import Client

REVATICTL = [sys.executable, "-m", "revati.revatid.ctl"]


class Daemon:
    def __init__(self, socket_path: Path, proc: subprocess.Popen, log: Path) -> None:
        self.socket = socket_path
        self.proc = proc
        self.log = log

    def client(self, timeout: float = 10) -> Client:
        return Client(self.socket, timeout=timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


def start_daemon(socket_path: Path, log: Path, env: dict[str, str] | None = None) -> Daemon:
    read_fd, write_fd = os.pipe()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "revati.revatid.main", "--socket", str(socket_path),
             "--ready-fd", str(write_fd), "--log-level", "debug"],
            pass_fds=(write_fd,), stdout=out, stderr=subprocess.STDOUT, env=env)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError("revatid did not start:\n" + log.read_text())
    return Daemon(socket_path, proc, log)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path / "revatid.sock", tmp_path / "revatid.log")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One revatid for a module of slow integration tests (the serving suites)."""
    tmp = tmp_path_factory.mktemp("revatid")
    d = start_daemon(tmp / "revatid.sock", tmp / "revatid.log")
    yield d
    d.stop()


ROOT = Path(__file__).parents[1]


def revatictl_run(daemon: Daemon, command: list[str], *options: str, timeout: float = 120,
                  ) -> tuple[subprocess.CompletedProcess, dict]:
    """`revatictl run` against the daemon (from the repository root, which is on the path so
    that the command may import test modules); returns the result and session summary."""
    summary = daemon.socket.parent / f"summary-{os.urandom(4).hex()}.json"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [*REVATICTL, "--socket", str(daemon.socket), "run", "--json", str(summary), *options,
         "--", *command], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path})
    assert summary.exists(), f"no summary; stderr:\n{result.stderr}"
    return result, json.loads(summary.read_text())
