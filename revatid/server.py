"""revatid's socket server: frames in, one reply per request out, never a crash.

Each connection is an asyncio Protocol. Frames are decoded as they arrive; a request is
validated (protocol.validate), dispatched to a handler, and answered in order. A handler may
return a Future (a GPU wait on a collective not yet complete): the connection then holds
later frames until it resolves, so replies stay in order. Malformed frames get an error reply;
a frame over MAX_FRAME or a wrong-uid peer gets an error reply and a closed connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import structlog

from revati.revatid import attach
from revati.revatid.gpu import BadBatch
from revati.revatid.protocol import (
    HEADER,
    MAX_FRAME,
    PROTOCOL_VERSION,
    ROLES,
    ErrorCode,
    ProtocolError,
    error,
    ok,
    pack,
    unpack_body,
    validate,
)
from revati.revatid.sessions import Participant, Session

log = structlog.get_logger("revatid")

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
REAP_PERIOD_S = 1.0


class Daemon:
    """Sessions and request handlers; shared by every connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, socket_path: str) -> None:
        self.loop = loop
        self.socket_path = socket_path
        self.sessions: dict[str, Session] = {}
        self.ended: dict[str, dict[str, Any]] = {}  # recent ended sessions' final info
        self._reaper = loop.call_later(REAP_PERIOD_S, self._reap)

    def _reap(self) -> None:
        for s in list(self.sessions.values()):
            s.watchdog()
        self._reaper = self.loop.call_later(REAP_PERIOD_S, self._reap)

    def session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise ProtocolError(ErrorCode.NO_SESSION, f"no session {sid!r}")
        return s

    def _ended(self, s: Session) -> None:
        self.sessions.pop(s.id, None)
        self.ended[s.id] = s.final
        while len(self.ended) > 64:
            self.ended.pop(next(iter(self.ended)))

    def shutdown(self) -> None:
        self._reaper.cancel()
        for s in list(self.sessions.values()):
            s.end("daemon stopping")

    # -- handlers for any connection
    def ping(self, conn: Connection, msg: dict) -> dict:
        return {"version": PROTOCOL_VERSION, "pid": os.getpid(), "sessions": len(self.sessions)}

    def session_create(self, conn: Connection, msg: dict) -> dict:
        gpu = msg.get("gpu", "h100")
        num_gpus = msg.get("num_gpus", 1)
        options = msg.get("options") or {}
        if not (isinstance(gpu, str) and isinstance(num_gpus, int) and isinstance(options, dict)):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "gpu: str, num_gpus: int, options: map")
        s = Session(gpu, num_gpus, options, self.loop, self._ended)
        self.sessions[s.id] = s
        return {"session": s.info()}

    def session_list(self, conn: Connection, msg: dict) -> dict:
        return {"sessions": [s.info() for s in self.sessions.values()]}

    def session_status(self, conn: Connection, msg: dict) -> dict:
        sid = msg["session"]
        if sid in self.ended:
            return {"session": self.ended[sid]}
        return {"session": self.session(sid).info()}

    def session_stop(self, conn: Connection, msg: dict) -> dict:
        s = self.session(msg["session"])
        s.end("stopped")
        return {"session": s.final}

    def session_join(self, conn: Connection, msg: dict) -> dict:
        if conn.member is not None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "this connection has joined already")
        if msg["role"] not in ROLES:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"role must be one of {ROLES}")
        s = self.session(msg["session"])
        name = msg.get("name") or ""
        p = s.join(msg["pid"], msg["role"], str(name))
        conn.member = (s, p)
        return {"slot": p.slot, "page": s.page_path,
                "session": {"id": s.id, "gpu": s.gpu, "num_gpus": s.num_gpus,
                            "seed": s.options["seed"],
                            "host_costs": s.options["host_costs"]}}

    def session_attach(self, conn: Connection, msg: dict) -> dict:
        s = self.session(msg["session"])
        moved = attach.signal_tree(msg["pid"], s.id, self.socket_path)
        if not moved:
            raise ProtocolError(ErrorCode.NO_PROCESS, f"process {msg['pid']} (or a descendant) "
                                "is not waiting to be attached: start it under the Revati hook "
                                "environment (revatictl env)")
        return {"attached": moved}

    def session_expect(self, conn: Connection, msg: dict) -> dict:
        s, p = conn.joined()
        s.expect(msg["pid"], p)
        return {}

    def trace(self, conn: Connection, msg: dict) -> dict:
        return {"trace": self.session(msg["session"]).chrome_trace()}

    # -- handlers for participants
    def gpu_launch(self, conn: Connection, msg: dict) -> dict:
        s, p = conn.joined()
        recorded = _submit(s, p, msg["batch"])
        # The times of the events it records: a host sync on one needs no round trip then.
        if not recorded:
            return {}
        return {"events": [[e, s.timeline.event_time(p.pid, e)] for e in recorded]}

    def gpu_graph(self, conn: Connection, msg: dict) -> dict:
        s, p = conn.joined()
        try:
            return {"graph": s.timeline.register_graph(p.pid, msg["events"])}
        except (BadBatch, ValueError) as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None

    def gpu_sync(self, conn: Connection, msg: dict) -> dict | asyncio.Future:
        s, p = conn.joined()
        stream = msg.get("stream")
        if stream is not None and not isinstance(stream, int):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "stream must be an int or nil")
        _submit(s, p, msg.get("batch"))
        return self._gpu_wait(s, p, bool(msg.get("wait")), "sync",
                              lambda: s.timeline.stream_ready(p.pid, msg["device"], stream,
                                                              s.page.now()))

    def gpu_event_time(self, conn: Connection, msg: dict) -> dict:
        s, p = conn.joined()
        _submit(s, p, msg.get("batch"))
        return {"t_ns": s.timeline.event_time(p.pid, msg["event"])}

    def gpu_sync_event(self, conn: Connection, msg: dict) -> dict | asyncio.Future:
        s, p = conn.joined()
        _submit(s, p, msg.get("batch"))
        return self._gpu_wait(s, p, bool(msg.get("wait")), "event",
                              lambda: s.timeline.event_time(p.pid, msg["event"]))

    def _gpu_wait(self, s: Session, p: Participant, wait: bool, what: str,
                  ready: Callable[[], int | None]) -> dict | asyncio.Future:
        """Reply with the ready time; while it is pending, reply {pending} or, with wait,
        hold the reply until it resolves. A participant answered with a time is about to
        wait for it: it counts as running until it does (no jump races its wake-up)."""
        t = ready()
        if t is not None:
            p.pending_wake = s.page.slot_read(p.slot)[2]
            now = s.page.now()
            if t > now:
                s.trace.wait(p.pid, what, now, t)
            return {"ready_ns": t}
        if not wait:
            return {"pending": True}
        fut = self.loop.create_future()
        start = s.page.now()

        def resolved() -> None:
            if fut.done():
                return
            t = ready()
            if t is not None:
                p.pending_wake = s.page.slot_read(p.slot)[2]
                s.trace.wait(p.pid, f"{what} (collective)", start, max(start, t))
                fut.set_result({"ready_ns": t})

        s.timeline.on_change(resolved)
        fut.add_done_callback(lambda _: s.timeline._listeners.remove(resolved))
        return fut


def _submit(s: Session, p: Participant, batch: Any) -> list[int]:
    """Queue a participant's launch batch (a gpu.launch's, or one sent with a query, which
    sees it); revatid's work on it is kept out of virtual time. Returns the ids of the events
    it records."""
    if batch is None:
        return []
    if not isinstance(batch, list):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'batch' must be list")
    s.page.freeze_enter()
    try:
        return s.timeline.submit(p.pid, batch)
    except BadBatch as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None
    finally:
        s.page.freeze_exit()


HANDLERS: dict[str, Callable[[Daemon, Connection, dict], Any]] = {
    "ping": Daemon.ping,
    "session.create": Daemon.session_create,
    "session.list": Daemon.session_list,
    "session.status": Daemon.session_status,
    "session.stop": Daemon.session_stop,
    "session.join": Daemon.session_join,
    "session.attach": Daemon.session_attach,
    "session.expect": Daemon.session_expect,
    "trace": Daemon.trace,
    "gpu.launch": Daemon.gpu_launch,
    "gpu.graph": Daemon.gpu_graph,
    "gpu.sync": Daemon.gpu_sync,
    "gpu.event_time": Daemon.gpu_event_time,
    "gpu.sync_event": Daemon.gpu_sync_event,
}


class Connection(asyncio.Protocol):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.member: tuple[Session, Participant] | None = None
        self.waiting: asyncio.Future | None = None
        self.held: deque[bytes] = deque()
        self.peer_pid = 0

    def joined(self) -> tuple[Session, Participant]:
        if self.member is None:
            raise ProtocolError(ErrorCode.NOT_JOINED, "join a session first (session.join)")
        s, _p = self.member
        if s.state != "running":
            raise ProtocolError(ErrorCode.NO_SESSION, f"session {s.id} has ended")
        return self.member

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      _CRED.size))
        self.peer_pid = pid
        if uid not in (os.getuid(), 0):  # root may reach any user's daemon, as it can anyway
            self._send(error(None, ErrorCode.BAD_REQUEST, "connection refused: peer uid "
                             f"{uid} is not the daemon's uid {os.getuid()}"))
            log.warning("peer.refused", uid=uid, pid=pid)
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.member is not None:
            s, p = self.member
            s.leave(p, "disconnected")
            self.member = None
        if self.waiting is not None:
            self.waiting.cancel()

    def _send(self, msg: dict) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(pack(msg))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (size,) = HEADER.unpack_from(self.buf)
            if size > MAX_FRAME:
                self._send(error(None, ErrorCode.BAD_FRAME,
                                 f"frame of {size} bytes exceeds the limit of {MAX_FRAME}"))
                self.transport.close()  # type: ignore[union-attr]
                self.buf.clear()
                return
            if len(self.buf) < 4 + size:
                return
            body = bytes(self.buf[4:4 + size])
            del self.buf[:4 + size]
            if self.waiting is not None:
                self.held.append(body)
            else:
                self._handle(body)

    def _handle(self, body: bytes) -> None:
        req_id = None
        try:
            msg = unpack_body(body)
            req_id = msg.get("id") if isinstance(msg.get("id"), int) else None
            kind = validate(msg)
            result = HANDLERS[kind](self.daemon, self, msg)
        except ProtocolError as exc:
            self._send(error(req_id, exc.code, exc.message))
            return
        except Exception as exc:  # a handler bug must not take the daemon down
            log.exception("handler.failed", request=repr(body[:200]))
            self._send(error(req_id, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
            return
        if isinstance(result, asyncio.Future):
            self.waiting = result
            result.add_done_callback(lambda f: self._resolved(req_id, f))
        else:
            self._send(ok(req_id, **result))

    def _resolved(self, req_id: int | None, fut: asyncio.Future) -> None:
        self.waiting = None
        if fut.cancelled():
            return
        self._send(ok(req_id, **fut.result()))
        while self.held and self.waiting is None:
            self._handle(self.held.popleft())
