"""`revatid`: the Revati daemon (asyncio on uvloop, one Unix socket)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import structlog
import uvloop

from revati.revatid import log as logsetup
from revati.revatid.paths import SYSTEM_SOCKET, default_socket
from revati.revatid.server import Connection, Daemon

log = structlog.get_logger("revatid")
SD_LISTEN_FDS_START = 3


def _activated_socket() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX:
        raise SystemExit("revatid: the activated socket is not a Unix socket")
    return sock


def _bind(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a daemon that died
        else:
            raise SystemExit(f"revatid: another daemon is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is created 0600
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    return sock


async def serve(path: Path | None, ready_fd: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    sock = _activated_socket()
    owned = sock is None
    if sock is None:
        assert path is not None
        sock = _bind(path)
    bound = sock.getsockname()
    daemon = Daemon(loop, str(bound))
    server = await loop.create_unix_server(lambda: Connection(daemon), sock=sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("revatid.listening", socket=str(bound), activated=not owned, pid=os.getpid())
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    await stop.wait()
    log.info("revatid.stopping", sessions=len(daemon.sessions))
    server.close()
    daemon.shutdown()
    if owned:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(bound)
    log.info("revatid.stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="revatid", description="Revati emulation daemon")
    ap.add_argument("--socket", type=Path, help="listening socket path "
                    "(default: $XDG_RUNTIME_DIR/revati/revatid.sock)")
    ap.add_argument("--system", action="store_true", help=f"listen on {SYSTEM_SOCKET}")
    ap.add_argument("--log-level", default=os.environ.get("REVATI_LOG_LEVEL", "info"))
    ap.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # revatictl's start-up pipe
    args = ap.parse_args(argv)
    logsetup.configure(args.log_level)
    path = args.socket or (SYSTEM_SOCKET if args.system else default_socket())
    uvloop.run(serve(path, args.ready_fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
