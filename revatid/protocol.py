"""The revatid wire protocol, version 2 (version 1 requests are still served: 2 only adds).

Transport: a Unix stream socket. Each message is a frame: a 4-byte big-endian length, then
that many bytes of msgpack encoding a map. Frames larger than MAX_FRAME are refused (the
connection is closed after an error reply, since the rest of the stream cannot be trusted).

Every request carries:   v (int, PROTOCOL_VERSION), type (str), id (int, chosen by the client)
Every request gets exactly one reply, in order on its connection:
    {"v": 1, "id": <id>, "type": "ok", ...result fields}
    {"v": 1, "id": <id>, "type": "error", "code": <ErrorCode>, "message": <str>}

Requests (fields beyond v/type/id; `?` = optional) -> reply fields:

  ping                                              -> version, pid, sessions
  session.create   gpu?, num_gpus?, options?        -> session (a SessionInfo map)
  session.list                                      -> sessions (list of SessionInfo)
  session.status   session                          -> session
  session.stop     session                          -> session
  session.join     session, pid, role, name?        -> slot, page, session
      The connection becomes the participant's; closing it leaves the session.
  session.attach   session, pid                     -> attached (list of pids moved onto the clock)
  session.expect   pid                              -> (nothing)
      A participant started a child that will join: until it does (or exits, or looks
      like no Python interpreter), the clock does not jump.
  gpu.launch       batch (list of items, see below) -> events?; pipelined, replied in order
      events (v2): [event_id, t_ns | None] for each event the batch records, its time as
      that batch leaves it (None while a collective keeps it pending): a host that syncs on
      the event later already knows when to wake, with no round trip.
  gpu.sync         device, stream (int | None), batch?   -> ready_ns
  gpu.event_time   event, batch?                    -> t_ns (int | None while pending)
  gpu.sync_event   event, batch?                    -> ready_ns (replied once the event resolves)
      batch (v2): launch items queued before the query is answered, as a gpu.launch just
      before it would be: a host sync is one message and one reply, not two.
  gpu.graph        events                           -> graph
  trace            session                          -> trace (Chrome trace JSON object)

gpu.launch batch items (tuples, packed as arrays):
  [0, family, op, dtype, device, stream, t_ns, feats]   a kernel launch (LaunchEvent fields)
  [1, device, stream, event_id]                         record an event on a stream
  [2, device, stream, event_id]                         stream waits for an event
  [3, group, rank, family, op, dtype, device, stream, t_ns, feats]   a collective launch
  [4, count, family, op, dtype, device, stream, t_ns, feats]   (v2) a run: `count` launches of
      one kernel back to back, queued as `count` items 0 with these fields would be (one
      prediction; the stream is ready count x duration after the run starts); 1 <= count <=
      MAX_RUN. A CUDA graph replay sends the identical launches of its dynamic nodes so.
  [5, what, start_ns, end_ns]                           (v2) the host waited from start to end
      for the GPU (`what`: "event"), on a time it knew from an `events` reply: for the trace.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import Any

import msgpack

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # a request of any of these is served
MAX_FRAME = 64 * 1024 * 1024  # 64 MiB: a large launch batch or a session trace fits
HEADER = struct.Struct(">I")

ITEM_LAUNCH, ITEM_RECORD, ITEM_WAIT, ITEM_COLLECTIVE, ITEM_RUN, ITEM_HOST_WAIT = 0, 1, 2, 3, 4, 5
MAX_RUN = 1 << 20  # launches in one run item (the trace keeps one entry per kernel)


class ErrorCode(StrEnum):
    BAD_FRAME = "bad_frame"  # not msgpack, not a map, or over MAX_FRAME
    BAD_REQUEST = "bad_request"  # missing or wrong-typed fields
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    NO_SESSION = "no_session"
    NOT_JOINED = "not_joined"  # a participant-only request on a plain connection
    UNKNOWN_GPU = "unknown_gpu"
    NO_PROCESS = "no_process"
    SESSION_FULL = "session_full"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A request that gets an error reply."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Each request's required fields and their types (checked before dispatch).
REQUESTS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "ping": {},
    "session.create": {},
    "session.list": {},
    "session.status": {"session": str},
    "session.stop": {"session": str},
    "session.join": {"session": str, "pid": int, "role": str},
    "session.attach": {"session": str, "pid": int},
    "session.expect": {"pid": int},
    "gpu.launch": {"batch": list},
    "gpu.sync": {"device": int},
    "gpu.event_time": {"event": int},
    "gpu.sync_event": {"event": int},
    "gpu.graph": {"events": list},
    "trace": {"session": str},
}

ROLES = ("actor", "observer")

_packer = msgpack.Packer(use_bin_type=True)


def pack(msg: dict[str, Any]) -> bytes:
    """One frame: length header + msgpack body."""
    body = _packer.pack(msg)
    return HEADER.pack(len(body)) + body


def unpack_body(body: bytes) -> dict[str, Any]:
    """Decode a frame body; raises ProtocolError(BAD_FRAME) on anything but a map."""
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(ErrorCode.BAD_FRAME, f"undecodable frame: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame is a {type(msg).__name__}, not a map")
    return msg


def validate(msg: dict[str, Any]) -> str:
    """Check envelope and fields; returns the request type."""
    v = msg.get("v")
    if v not in SUPPORTED_VERSIONS or isinstance(v, bool):
        raise ProtocolError(ErrorCode.BAD_VERSION,
                            f"protocol version {v!r}, want one of {SUPPORTED_VERSIONS}")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'type' must be a string")
    if not isinstance(msg.get("id"), int) or isinstance(msg.get("id"), bool):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'id' must be an integer")
    fields = REQUESTS.get(kind)
    if fields is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {kind!r}")
    for name, typ in fields.items():
        value = msg.get(name)
        if not isinstance(value, typ) or isinstance(value, bool):
            want = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{kind}: field {name!r} must be {want}")
    return kind


def ok(req_id: int, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "type": "ok", **fields}


def error(req_id: int | None, code: ErrorCode, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": req_id, "type": "error", "code": str(code),
            "message": message}
