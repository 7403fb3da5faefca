"""Emulation sessions: one clock, one set of virtual GPUs, its participants and its trace.

Sessions are isolated from each other: each has its own session page (clock), timekeeper,
predictor, GPU timeline and trace. A participant is a process that joined over a connection;
it leaves when the connection closes or the process dies. A session whose last participant
left ends by itself after `linger_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from revati.adapters.clock._vclock import MAX_SLOTS, NO_DEADLINE, Page
from revati.predictors import registry
from revati.predictors.bundle import Bundle
from revati.predictors.skus import UnknownSku, device_spec, resolve
from revati.predictors.wake import WakeModel
from revati.revatid.gpu import GpuTimeline, Predictor
from revati.revatid.paths import page_dir
from revati.revatid.procwatch import (
    ProcessTree,
    ProcWatch,
    alive,
    exe_name,
    looks_like_python,
)
from revati.revatid.protocol import ErrorCode, ProtocolError
from revati.revatid.timekeeper import Timekeeper
from revati.revatid.trace import Trace

log = structlog.get_logger("revatid.session")

JOIN_TIMEOUT_S = 10.0  # a child that has not joined by then is not waited for

DEFAULT_OPTIONS: dict[str, Any] = {
    "rate": 1.0,  # virtual seconds per real second while time flows (--cpu-dilation)
    "grace_us": 50,  # quiescence must hold this long before a jump
    "proc_check": True,  # no jump while a participant's thread is runnable
    "linger_s": 5.0,  # a session with no participants ends after this long
    "stuck_warn_s": 10.0,  # the watchdog warns about a clock stuck for this long
    "fixed_ns": None,  # predictor: every kernel takes this long (tests)
    # host CPUs the session's processes share: while more of them run than this, virtual time
    # flows at cpus/running (each would have a core of its own on the emulated server);
    # None: the daemon's CPU affinity, 0: no contention model
    "cpus": None,
    "bundle": None,  # predictor: this bundle folder instead of the SKU's own (validate --from)
    # host seconds a launch of each named op costs on the real machine beyond its dispatch:
    # library work that a CPU-only build never runs (cuDNN attention builds a graph per call)
    "host_costs": {},
    "seed": 0,
    "name": "",
}


@dataclass
class Outsider:
    """A child a participant started that will not join (not Python: a compiler, a shell, a
    build tool), with its descendants; `lent`: its parent's slot counts a thread for it."""

    tree: ProcessTree
    parent: Participant
    lent: bool = False


@dataclass
class Participant:
    pid: int
    role: str
    name: str
    slot: int
    joined_wall: float
    pending_wake: int | None = None
    watch: ProcWatch = field(init=False)
    # its descendants that are no participants, announced or not (os.system forks in C)
    descendants: ProcessTree = field(init=False)

    def __post_init__(self) -> None:
        self.watch = ProcWatch(self.pid)
        self.descendants = ProcessTree(self.pid, root_counts=False)

    def info(self, page: Page) -> dict[str, Any]:
        _pid, running, _activity, deadline, waits, _freezes = page.slot_read(self.slot)
        return {"pid": self.pid, "role": self.role, "name": self.name, "slot": self.slot,
                "state": "running" if running > 0 else "waiting", "running_threads": running,
                "deadline_ns": None if deadline == NO_DEADLINE else deadline,
                "hooked_waits": waits,
                # real seconds its process spent inside Revati's own code (holding a freeze)
                "revati_s": page.slot_held_ns(self.slot) / 1e9}


def _load_predictor(sku: str, options: dict[str, Any]) -> Predictor:
    if options.get("fixed_ns") is not None:
        return registry.FixedPredictor(int(options["fixed_ns"]))
    if options.get("bundle"):  # a bundle built elsewhere (a GPU profile), not the SKU's own
        path = Path(options["bundle"])
        return registry.Predictor.from_bundle(Bundle.load(path), path)
    return registry.load_predictor(sku)


def _checked_spec(sku: str) -> dict[str, Any]:
    """The device's spec, its measured parts checked now: a bad one would otherwise fail the
    session's first launch, inside the program."""
    spec = device_spec(sku)
    try:
        WakeModel.from_spec(spec.get("wake"))
    except ValueError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{sku}'s bundle: {exc}") from None
    return spec


class Session:
    def __init__(self, gpu: str, num_gpus: int, options: dict[str, Any],
                 loop: asyncio.AbstractEventLoop, on_end: Callable[[Session], None]) -> None:
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown session options {sorted(unknown)}")
        try:
            self.gpu = resolve(gpu)  # a specs.json SKU or a profiled device (host-cpu)
        except UnknownSku as exc:
            raise ProtocolError(ErrorCode.UNKNOWN_GPU, str(exc)) from None
        if not 1 <= num_gpus <= 64:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "num_gpus must be between 1 and 64")
        self.num_gpus = num_gpus
        self.options = {**DEFAULT_OPTIONS, **options}
        rate = float(self.options["rate"])
        if not 0 < rate <= 1000:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "rate must be in (0, 1000]")
        cpus = self.options["cpus"]
        if cpus is not None and (not isinstance(cpus, int) or not 0 <= cpus <= 4096):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "cpus must be an integer in [0, 4096]")
        costs = self.options["host_costs"]
        if not isinstance(costs, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and 0 <= v <= 1
                for k, v in costs.items()):
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                "host_costs must map op names to seconds in [0, 1]")
        bundle = self.options["bundle"]
        if bundle and not (Path(bundle) / "bundle.json").is_file():
            # checked now: the predictor loads at the first launch, inside the program
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"no predictor bundle in {bundle} (no "
                                "bundle.json): build one with `revatictl predictors train`")
        self.id = secrets.token_hex(4)
        self.log = log.bind(session=self.id)
        self.loop = loop
        self.on_end = on_end
        self.state = "running"
        self.created_wall = time.time()
        self.created_mono = time.monotonic()
        self.ended_mono: float | None = None
        self.trace = Trace()
        self.timeline = GpuTimeline(lambda: _load_predictor(self.gpu, self.options), self.trace)
        self.timeline.synchronous = bool(_checked_spec(self.gpu).get("synchronous"))
        self.participants: dict[int, Participant] = {}  # by slot
        # child pid -> (monotonic time it was announced, the participant that started it)
        self.expected: dict[int, tuple[float, Participant]] = {}
        self.outsiders: dict[int, Outsider] = {}  # announced children that will not join
        self.exited: list[dict[str, Any]] = []
        directory = _page_dir()
        self.page_path = str(directory / f"session-{self.id}")
        cpus = self.options["cpus"]
        if cpus is None:
            cpus = len(os.sched_getaffinity(0))
        self.page = Page(self.page_path, create=True, rate=rate, cpus=int(cpus))
        self.timekeeper = Timekeeper(
            self.page, lambda: self.participants.values(), loop, self.awaiting_joiners,
            self.look_at_outsiders,
            grace_ns=int(self.options["grace_us"] * 1000),
            proc_check=bool(self.options["proc_check"]),
            on_jump=self.trace.jump)
        self.timekeeper.start()
        self._linger: asyncio.TimerHandle | None = None
        self._stuck_since: float | None = None
        self._warned = False
        self._arm_linger()
        self.log.info("session.created", gpu=self.gpu, num_gpus=num_gpus,
                      options={k: v for k, v in self.options.items() if v != DEFAULT_OPTIONS[k]})

    # -- participants
    def join(self, pid: int, role: str, name: str) -> Participant:
        if self.state != "running":
            raise ProtocolError(ErrorCode.NO_SESSION, f"session {self.id} has ended")
        if not alive(pid):
            raise ProtocolError(ErrorCode.NO_PROCESS, f"no process {pid}")
        used = set(self.participants)
        slot = next((i for i in range(MAX_SLOTS) if i not in used), None)
        if slot is None:
            raise ProtocolError(ErrorCode.SESSION_FULL, f"session {self.id} has {MAX_SLOTS} "
                                "participants already")
        p = Participant(pid, role, name, slot, time.time())
        self.participants[slot] = p
        self.expected.pop(pid, None)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.log.info("participant.joined", pid=pid, role=role, name=name, slot=slot)
        return p

    def expect(self, pid: int, parent: Participant) -> None:
        if all(p.pid != pid for p in self.participants.values()):
            self.expected[pid] = (time.monotonic(), parent)

    def awaiting_joiners(self) -> bool:
        """A child announced by a participant has not joined yet (and still may)."""
        now = time.monotonic()
        for pid, (since, parent) in list(self.expected.items()):
            if not alive(pid):
                del self.expected[pid]
            elif now - since > JOIN_TIMEOUT_S or not looks_like_python(pid):
                del self.expected[pid]
                self.outsiders[pid] = Outsider(ProcessTree(pid), parent)
                self.log.info("child.outsider", pid=pid, exe=exe_name(pid), parent=parent.pid)
        return bool(self.expected)

    def look_at_outsiders(self) -> bool:
        """Whether a child that will not join (or a descendant of one) computes: then its
        parent counts one more running thread, so that the clock flows at real rate through
        that work (program time, DESIGN rule 4) and never jumps over it; once the tree has
        been still between two looks, the thread is given back. True while any computes."""
        if not self.outsiders:
            return False
        participants = frozenset(p.pid for p in self.participants.values())
        busy = False
        for pid, o in list(self.outsiders.items()):
            if self.participants.get(o.parent.slot) is not o.parent:  # its slot went with it
                del self.outsiders[pid]
                continue
            live = alive(pid)
            computing = live and o.tree.busy(participants)
            if computing != o.lent:
                self.page.slot_running(o.parent.slot, 1 if computing else -1)
                o.lent = computing
            if not live:
                del self.outsiders[pid]
            busy |= computing
        return busy

    def leave(self, p: Participant, reason: str) -> None:
        if self.participants.get(p.slot) is not p:
            return
        del self.participants[p.slot]
        released = self.page.freeze_release(p.slot)
        revati_s = self.page.slot_held_ns(p.slot) / 1e9
        self.page.slot_free(p.slot)
        self.timeline.forget(p.pid)
        self.exited.append({"pid": p.pid, "name": p.name, "reason": reason,
                            "virtual_ns": self.page.now(), "revati_s": revati_s})
        self.log.info("participant.left", pid=p.pid, reason=reason, freezes_released=released)
        self.page.poke_quiesce()
        if not self.participants:
            self._arm_linger()

    def watchdog(self) -> None:
        """Once a second: remove participants that died, and say when the clock is stuck."""
        for p in list(self.participants.values()):
            if not alive(p.pid):
                self.leave(p, "died")
        held, _frozen, _n, idle, _contended, _credited = self.page.freeze_stats()
        stuck = None
        if held:
            stuck = "a participant has been inside Revati's code (clock frozen)"
        elif idle and self.participants and all(
                self.page.slot_read(p.slot)[3] == NO_DEADLINE
                for p in self.participants.values()):
            stuck = "every participant waits with no deadline (deadlock, or input from outside)"
        now = time.monotonic()
        if stuck is None:
            self._stuck_since = None
        elif self._stuck_since is None:
            self._stuck_since = now
        elif now - self._stuck_since > self.options["stuck_warn_s"] and not self._warned:
            self._warned = True
            self.log.warning("session.stuck", why=stuck, seconds=round(now - self._stuck_since))
        if stuck is None:
            self._warned = False

    def _arm_linger(self) -> None:
        if self.state == "running":
            self._linger = self.loop.call_later(float(self.options["linger_s"]), self._linger_end)

    def _linger_end(self) -> None:
        self._linger = None
        if not self.participants:
            self.end("no participants")

    # -- lifecycle
    def end(self, reason: str) -> None:
        if self.state != "running":
            return
        self.final = self.info()
        self.final["state"] = self.state = "ended"
        self.ended_mono = time.monotonic()
        self.timekeeper.stop()
        if self._linger is not None:
            self._linger.cancel()
        self.log.info("session.ended", reason=reason, **self.final["counters"])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.page_path)
        # files the adapters keep beside the page (vLLM's queue readers: adapters/vllm)
        for extra in glob.glob(glob.escape(self.page_path) + ".*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(extra)
        self.on_end(self)

    def info(self) -> dict[str, Any]:
        if self.state != "running":
            return self.final
        virtual_ns = self.page.now()
        wall = time.monotonic() - self.created_mono
        count, frozen_ns, freezes, _idle, contended_ns, credited_ns = self.page.freeze_stats()
        tk = self.timekeeper
        return {
            "id": self.id, "name": self.options["name"], "state": self.state, "gpu": self.gpu,
            "gpu_name": device_spec(self.gpu)["name"], "num_gpus": self.num_gpus,
            "options": self.options, "page": self.page_path, "created": self.created_wall,
            # virtual time 0 on the participants' monotonic and wall clocks, ns
            "origin_monotonic_ns": self.page.origins()[0],
            "origin_wall_ns": self.page.origins()[1],
            "participants": [p.info(self.page) for p in self.participants.values()],
            "exited": self.exited[-32:],
            "pending_collectives": self.timeline.pending_collectives()[:32],
            "blocked_streams": self.timeline.blocked_streams()[:32],
            "counters": {
                "virtual_s": virtual_ns / 1e9, "wall_s": wall,
                "speedup": (virtual_ns / 1e9) / wall if wall > 0 else 0.0,
                "launches": self.timeline.launches, "collectives": self.timeline.collectives,
                "jumps": tk.jumps, "jumped_s": tk.jumped_ns / 1e9,
                "flowed_s": max(0.0, (virtual_ns - tk.jumped_ns) / 1e9),
                "frozen_s": frozen_ns / 1e9, "freezes": freezes, "frozen_now": count,
                "contended_s": contended_ns / 1e9, "op_entry_s": credited_ns / 1e9,
                "quiescence_by_hook": tk.decisions["hook"],
                "quiescence_by_proc": tk.decisions["proc"],
                "unhooked_waits": tk.unhooked_waits(),
                "trace_dropped": self.trace.dropped,
                "predicted_by": self.timeline.prediction_sources(),
            },
        }

    def chrome_trace(self) -> dict[str, Any]:
        names = {p.pid: f"{p.name or p.role} {p.pid}" for p in self.participants.values()}
        names.update({e["pid"]: f"{e['name'] or 'process'} {e['pid']}" for e in self.exited})
        return self.trace.chrome(names)


def _page_dir() -> Path:
    directory = page_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory
