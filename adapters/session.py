"""Joining a session from inside an emulated process, and the GPU link to revatid.

`boot()` runs at interpreter start in every Python process started under `revatictl run` (the
boot directory's sitecustomize calls it):
  REVATI_SESSION set  join it now: map the session page, hook the clock, and install virtual
                      CUDA when (and if) torch is imported;
  only REVATI_HOOKS   stay dormant on real time, listening for `revatictl attach`;
  neither             do nothing (the boot directory is not on the path anyway).
Forked children join as participants of their own.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import msgpack

from revati.adapters import gpu_link
from revati.adapters import transformers as transformers_glue
from revati.adapters.clock import hooks
from revati.adapters.clock.runtime import VirtualClock
from revati.adapters.postimport import when_imported
from revati.predictors.launch import LaunchEvent
from revati.revatid.client import Client
from revati.revatid.protocol import (
    ITEM_COLLECTIVE,
    ITEM_HOST_WAIT,
    ITEM_LAUNCH,
    ITEM_RECORD,
    ITEM_RUN,
    ITEM_WAIT,
)

ENV_SOCKET = "REVATI_SOCKET"
ENV_SESSION = "REVATI_SESSION"
ENV_HOOKS = "REVATI_HOOKS"
ENV_ROLE = "REVATI_ROLE"
ENV_NAME = "REVATI_NAME"
ENV_CUDA = "REVATI_CUDA"  # "0": never install virtual CUDA in this process tree

FLUSH_ITEMS = 256  # launches buffered before a batch goes to revatid
MAX_UNREAD = 512  # pipelined batches whose replies we have not read yet


class Participant:
    """This process's membership: its connection, slot and clock."""

    def __init__(self, socket_path: str, session: str, role: str, name: str, late: bool,
                 ) -> None:
        self.socket_path = socket_path
        self.session_id = session
        self.role = role
        self.name = name
        self.lock = threading.Lock()  # one connection, shared by every thread
        # Event times from gpu.launch replies (see SessionLink.record_event): an event's time,
        # once the reply to its latest record is read; records sent whose reply is unread.
        self.event_ns: dict[int, int] = {}
        self.events_unread: dict[int, int] = {}
        self.client, reply = self._join()
        self.session = reply["session"]
        running = sum(1 for t in threading.enumerate() if not getattr(t, "_revati_internal", 0))
        self.clock = VirtualClock(reply["page"], reply["slot"], running, late)

    def _join(self) -> tuple[Client, dict[str, Any]]:
        client = Client(self.socket_path)
        client.on_reply = self._on_reply
        self.event_ns.clear()
        self.events_unread.clear()
        reply = client.request("session.join", session=self.session_id, pid=os.getpid(),
                               role=self.role, name=self.name)
        return client, reply

    def _on_reply(self, reply: dict[str, Any]) -> None:
        events = reply.get("events")
        if not events:
            return
        unread = self.events_unread
        for event_id, t_ns in events:
            left = unread.pop(event_id, 0) - 1
            if left > 0:  # recorded again since: that reply tells
                unread[event_id] = left
            elif t_ns is not None:
                self.event_ns[event_id] = t_ns

    def rejoin_after_fork(self) -> None:
        self.lock = threading.Lock()
        self.client.sock.close()  # the parent's connection: only our copy of the fd
        self.client, reply = self._join()
        self.clock.rebind(reply["slot"])


class SessionLink:
    """GpuLink over the participant's connection (see revati.adapters.gpu_link)."""

    def __init__(self, member: Participant) -> None:
        self.member = member
        self.clock = member.clock
        self.now_ns = member.clock.now_ns
        self.buf: list[tuple] = []

    def freeze(self) -> AbstractContextManager[None]:
        return self.clock.freeze()

    def op_freeze(self) -> AbstractContextManager[None]:
        return self.clock.op_freeze()

    def launch(self, ev: LaunchEvent) -> None:
        self.buf.append((ITEM_LAUNCH, *ev))
        if len(self.buf) >= FLUSH_ITEMS:
            self.flush()

    def launch_run(self, ev: LaunchEvent, count: int) -> None:
        """`count` launches of `ev` back to back, as one item: revatid predicts it once
        (a graph replay's identical dynamic nodes, see revati.adapters.cuda.graphs)."""
        self.buf.append((ITEM_RUN, count, *ev))
        if len(self.buf) >= FLUSH_ITEMS:
            self.flush()

    def record_event(self, device: int, stream: int, event_id: int) -> None:
        # Sent now: revatid times the event while the host goes on, and its reply (read by a
        # later request) tells the time, so a sync on it needs no round trip of its own.
        m = self.member
        with self.clock.freeze(), m.lock:  # replies are read (and counted) under the lock
            m.event_ns.pop(event_id, None)
            m.events_unread[event_id] = m.events_unread.get(event_id, 0) + 1
        self.buf.append((ITEM_RECORD, device, stream, event_id))
        self.flush()

    def stream_wait_event(self, device: int, stream: int, event_id: int) -> None:
        self.buf.append((ITEM_WAIT, device, stream, event_id))

    def collective(self, ev: LaunchEvent, group: str, rank: int) -> None:
        # Sent now: other ranks wait for it, and this one may go idle without another flush
        # (a pipeline stage's send of its activations, then a wait for the next step).
        self.buf.append((ITEM_COLLECTIVE, group, rank, *ev))
        self.flush()

    def flush(self) -> None:
        """Send the buffered launches now (pipelined: the reply is read by a later request)."""
        if not self.buf:
            return
        batch, self.buf = self.buf, []
        m = self.member
        with self.clock.freeze(), m.lock:
            m.client.send("gpu.launch", batch=batch)
            if m.client._outstanding > MAX_UNREAD:
                m.client.request("ping")

    def _request(self, kind: str, **fields: Any) -> dict[str, Any]:
        m = self.member
        with m.lock:
            return m.client.request(kind, **fields)

    def _query(self, kind: str, **fields: Any) -> dict[str, Any]:
        """A request that must see every launch so far: the buffered ones go with it, as its
        `batch` (one message and one reply instead of a gpu.launch and the request)."""
        if self.buf:
            fields["batch"], self.buf = self.buf, []
        return self._request(kind, **fields)

    def register_graph(self, events: list[LaunchEvent]) -> int:
        with self.clock.freeze():
            self.flush()
            return self._request("gpu.graph", events=[list(e) for e in events])["graph"]

    def _wait(self, kind: str, **fields: Any) -> int:
        with self.clock.freeze():
            reply = self._query(kind, **fields)
        if reply.get("pending"):
            # A collective whose other ranks have not arrived: wait for them, unfrozen.
            with self.clock.waiting():
                reply = self._request(kind, wait=True, **fields)
        return self._sleep_until(reply["ready_ns"])

    def _sleep_until(self, ready: int) -> int:
        """The host waits (unfrozen: the clock may jump) until `ready`; returns the time."""
        if ready > self.clock.now_ns():
            self.clock.sleep_until(ready)
        return self.clock.now_ns()

    def synchronize(self, device: int, stream: int | None) -> int:
        return self._wait("gpu.sync", device=device, stream=stream)

    def _known_event_ns(self, event_id: int) -> int | None:
        """The event's time from the reply to its latest record, reading the replies not yet
        read (they have come in while the host worked, as a rule); None if revatid has yet
        to tell it (a pending collective, an event recorded by another process's link)."""
        m = self.member
        t = m.event_ns.get(event_id)
        if t is None and m.events_unread.get(event_id):
            with m.lock:
                m.client.drain()
            t = m.event_ns.get(event_id)
        return t

    def synchronize_event(self, event_id: int) -> int:
        with self.clock.freeze():
            ready = self._known_event_ns(event_id)
            if ready is not None:
                now = self.clock.now_ns()
                if ready > now:
                    self.buf.append((ITEM_HOST_WAIT, "event", now, ready))
                self.flush()
        if ready is None:
            return self._wait("gpu.sync_event", event=event_id)
        return self._sleep_until(ready)

    def event_time_ns(self, event_id: int) -> int | None:
        with self.clock.freeze():
            t = self._known_event_ns(event_id)
            if t is None:
                t = self._query("gpu.event_time", event=event_id)["t_ns"]
            return t

    def spend_host(self, ns: int) -> None:
        self.clock.sleep_until(self.clock.now_ns() + ns)  # the clock may jump over it


_member: Participant | None = None


def member() -> Participant | None:
    return _member


def join(socket_path: str, session: str, role: str | None = None, name: str | None = None,
         late: bool = False) -> Participant:
    """Join `session`: hook the clock, and arrange virtual CUDA for when torch is imported.
    `late`: the process has been running on real time (attach)."""
    global _member
    if _member is not None:
        return _member
    role = role or os.environ.get(ENV_ROLE, "observer")
    name = name or os.environ.get(ENV_NAME) or _process_name()
    _member = Participant(socket_path, session, role, name, late)
    hooks.install(_member.clock)
    _install_spawn_hooks()
    os.register_at_fork(after_in_child=_after_fork)
    if os.environ.get(ENV_CUDA, "1") != "0":
        when_imported("torch", _install_cuda)
        when_imported(transformers_glue.CB_MODULE, transformers_glue.on_import)
        when_imported(transformers_glue.MODELING_MODULE, transformers_glue.on_modeling_import)
    return _member


def _entry(argv: list[str]) -> tuple[str, str]:
    """What an interpreter command line (sys.orig_argv) runs: ("-m", module), ("-c", command),
    ("script", path), or ("", "") for an interactive interpreter (sys.argv is not set yet when
    sitecustomize runs)."""
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-m", "-c"):
            return arg, next(args, "")
        if arg in ("-W", "-X"):  # options that take a value
            next(args, None)
        elif arg and not arg.startswith("-"):
            return "script", arg
    return "", ""


def _process_name() -> str:
    """What the process runs: a script's name, a -m module, or -c."""
    kind, what = _entry(sys.orig_argv)
    if kind == "-m":
        return what
    if kind == "-c":
        return "python -c"
    return os.path.basename(what) if what else "python"


def _announce(pid: int) -> None:
    """Tell revatid that a child will join, so that no jump happens before it does."""
    m = _member
    if m is None or pid <= 0:
        return
    with m.clock.freeze(), m.lock:
        m.client.request("session.expect", pid=pid)


def _install_spawn_hooks() -> None:
    import _posixsubprocess
    import subprocess

    fork = os.fork

    def hooked_fork() -> int:
        pid = fork()
        _announce(pid)
        return pid

    os.fork = hooked_fork
    fork_exec = _posixsubprocess.fork_exec

    def hooked_fork_exec(*args: Any) -> int:
        pid = fork_exec(*args)
        _announce(pid)
        return pid

    _posixsubprocess.fork_exec = hooked_fork_exec
    subprocess._fork_exec = hooked_fork_exec  # type: ignore[attr-defined]
    for name in ("posix_spawn", "posix_spawnp"):
        spawn = getattr(os, name)

        def hooked_spawn(*args: Any, _spawn: Callable[..., int] = spawn, **kw: Any) -> int:
            pid = _spawn(*args, **kw)
            _announce(pid)
            return pid

        setattr(os, name, hooked_spawn)


def _after_fork() -> None:
    if _member is not None:
        _member.rejoin_after_fork()


def _install_cuda(_torch: Any) -> None:
    from revati.adapters import cuda

    assert _member is not None
    link = SessionLink(_member)
    gpu_link.install(link)
    cuda.install(_member.session["gpu"], _member.session["num_gpus"], link=link,
                 host_costs=_member.session.get("host_costs"))
    # Measured here, as torch's import ends: the program's other threads cannot use virtual
    # CUDA yet, so the probe link stands in for nobody else's launches.
    with link.freeze():
        from revati.adapters.cuda import entry_cost

        _member.clock.set_op_credit(entry_cost.measure_ns())


# -- dormant processes and attach
def _listen_for_attach() -> None:
    from revati.revatid.attach import address

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(address(os.getpid()))
    except OSError:
        return

    def serve() -> None:
        while _member is None:
            data = sock.recv(4096)
            try:
                msg = msgpack.unpackb(data)
                join(msg["socket"], msg["session"], late=True)
            except Exception as exc:
                print(f"revati: attach failed: {exc}", file=sys.stderr)
        sock.close()

    t = threading.Thread(target=serve, name="revati-attach", daemon=True)
    t._revati_internal = True  # type: ignore[attr-defined]
    t.start()


# Helper processes that serve nobody's request and that nobody waits for, each blocked in a
# read Revati does not hook: multiprocessing's resource tracker (started by every program that
# spawns workers: vLLM, SGLang) reads lines from a pipe for the whole run. Counted as running,
# one keeps the timekeeper on its /proc path and the idle freeze off for good, so virtual time
# flowed at real rate through every GPU wait of the other processes. They join (their parent
# announced them) and then wait, for the timekeeper, from start to exit.
BYSTANDER_COMMANDS = ("from multiprocessing.resource_tracker import main",)


def is_bystander(argv: list[str]) -> bool:
    """`argv` (sys.orig_argv) starts one of the helper processes in BYSTANDER_COMMANDS."""
    kind, what = _entry(argv)
    return kind == "-c" and what.lstrip().startswith(BYSTANDER_COMMANDS)


def boot() -> None:
    """Called at interpreter start (sitecustomize) in processes started by Revati."""
    session = os.environ.get(ENV_SESSION)
    if session:
        from revati.revatid.paths import default_socket

        try:
            member = join(os.environ.get(ENV_SOCKET) or str(default_socket()), session)
        except Exception as exc:
            print(f"revati: could not join session {session}: {exc}; this process runs on "
                  "real time, unemulated", file=sys.stderr)
        else:
            if is_bystander(sys.orig_argv):
                member.clock.wait_begin()  # never ended: the process waits until it exits
    elif os.environ.get(ENV_HOOKS):
        _listen_for_attach()
        os.register_at_fork(after_in_child=_listen_for_attach)
