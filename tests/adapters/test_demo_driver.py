"""The demo drivers' port choice (a server started later must be able to bind it) and their
held benchmark client (started early, run when released)."""

import os
import select
import socket
import sys

import pytest

from revati.adapters import demo_driver
from revati.adapters.held_start import NOT_STARTED


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_the_port_is_free_and_outside_the_ephemeral_range() -> None:
    ephemeral = demo_driver._ephemeral_ports()
    ports = {demo_driver.free_port() for _ in range(20)}
    assert all(p not in ephemeral and _bindable(p) for p in ports)
    assert len(ports) > 1  # random, so two drivers on one host rarely collide


def test_a_taken_port_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        # everything but `port` counts as ephemeral, so the taken `port` is the only candidate
        monkeypatch.setattr(demo_driver, "_ephemeral_ports", lambda: _AllBut(port))
        chosen = demo_driver.free_port()
        assert chosen != port and _bindable(chosen)


class _AllBut:
    def __init__(self, port: int) -> None:
        self.port = port

    def __contains__(self, p: int) -> bool:
        return p != self.port


# `python -m calendar 2026 1` prints January 2026: a module run with arguments
CALENDAR = [sys.executable, "-m", "calendar", "2026", "1"]


def test_a_held_client_runs_its_module_only_once_released() -> None:
    with demo_driver.HeldClient(CALENDAR, preload=("calendar", "json")) as client:
        ready, _, _ = select.select([client.output], [], [], 1.0)
        assert not ready and client.proc.poll() is None  # imported, and waiting
        client.release()
        out = b""
        while chunk := os.read(client.output, 4096):
            out += chunk
        assert client.proc.wait(timeout=30) == 0
    assert b"January 2026" in out


def test_a_client_never_released_ends_without_running() -> None:
    with demo_driver.HeldClient(CALENDAR, preload=()) as client:
        pass
    assert client.proc.returncode == NOT_STARTED


def test_a_held_client_must_run_a_module() -> None:
    with pytest.raises(ValueError, match="runs a module"):
        demo_driver.HeldClient([sys.executable, "script.py"], preload=())
