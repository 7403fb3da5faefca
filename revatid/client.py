"""A small blocking client for revatid, used by revatictl and by participants.

Requests may be pipelined with `send()`: their replies are read (and their errors raised) by
the next `request()`, in order.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from revati.revatid.protocol import HEADER, PROTOCOL_VERSION, pack

# Bound before any clock hook can wrap them: a participant talks to revatid inside a freeze,
# and its own socket calls are not waits of the program.
_recv = socket.socket.recv
_sendall = socket.socket.sendall


class DaemonError(Exception):
    """An error reply from revatid."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class NotRunning(ConnectionError):
    """No daemon listens on the socket."""


class Client:
    def __init__(self, path: str | Path, timeout: float | None = None) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise NotRunning(f"revatid is not running (no daemon on {self.path}): start it with "
                             "`revatid`, or its systemd socket") from exc
        self._ids = itertools.count(1)
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._outstanding = 0
        # called with every reply read, a pipelined request's too (errors included)
        self.on_reply: Callable[[dict[str, Any]], None] | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, kind: str, **fields: Any) -> None:
        """Send a request without waiting for its reply."""
        _sendall(self.sock, pack({"v": PROTOCOL_VERSION, "type": kind, "id": next(self._ids),
                                  **fields}))
        self._outstanding += 1

    def _read_reply(self) -> dict[str, Any]:
        header = self._recv_exact(4)
        (size,) = HEADER.unpack(header)
        reply = msgpack.unpackb(self._recv_exact(size), raw=False, strict_map_key=False)
        if self.on_reply is not None:
            self.on_reply(reply)
        return reply

    def _recv_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = _recv(self.sock, n - got)
            if not chunk:
                raise ConnectionError("revatid closed the connection")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _read_outstanding(self) -> dict[str, Any]:
        """Read the reply of every request sent and not yet answered; returns the last one
        ({} if none was due). Raises DaemonError for the first error reply among them."""
        reply: dict[str, Any] = {}
        error = None
        while self._outstanding:
            reply = self._read_reply()
            self._outstanding -= 1
            if error is None and reply.get("type") == "error":
                error = DaemonError(reply.get("code", "?"), reply.get("message", ""))
        if error is not None:
            raise error
        return reply

    def drain(self) -> None:
        """Read the replies of every pipelined request. Raises DaemonError for the first
        error reply among them."""
        self._read_outstanding()

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request and return its reply's fields. Raises DaemonError for an error
        reply, to it or to a request pipelined before it."""
        self.send(kind, **fields)
        return self._read_outstanding()  # the last reply is this request's own
