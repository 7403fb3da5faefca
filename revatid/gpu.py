"""The virtual GPUs of one session: stream timelines, events, collectives and graphs.

Every launch on a stream starts at max(stream ready, launch time) and makes the stream ready
`predicted duration` later. A run of `count` identical launches (protocol item 4) is predicted
once and queued back to back: it starts where its first launch would and leaves the stream
ready count x duration later, exactly where `count` launches one by one would (each after the
first starts at the previous one's end, which is past the launch time); the trace keeps the
run as one record and shows one entry per kernel. A collective blocks its stream until every
rank of its group has arrived; it then completes on every rank at max(arrival) + duration
(DESIGN rule 5). Items queued behind a blocked stream wait in order and run when it is
released.

Streams are keyed by (pid, device, stream): each process owns its streams; streams of one
device run concurrently (no contention model between them).

A synchronous device (`synchronous`: a profiled CPU, spec "synchronous") runs each kernel on
the launching thread, so the host's own time between launches does not overlap kernels: a
stream keeps `shift`, the kernel time launched since the host last waited, and a launch at host
time t starts at max(ready, t + shift). A host sync at time `now` waits until now + shift (the
host's time since its last launch comes after the kernels, not beside them) and clears the
shift. The host waits once per sync, as on a GPU, instead of after every launch.

A device whose profile measured a slowdown after idle (`wake`, predictors/wake.py) runs the
kernels that follow an idle spell slower: each process's device keeps when its last kernel
(or collective) ends and how cold it is; a launch that starts after a gap takes the model's
extra time for that gap, and the launches after it theirs while the cold fades with the work
done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from revati.predictors.launch import Family, LaunchEvent
from revati.predictors.wake import COLD_FLOOR, WakeModel
from revati.revatid.protocol import (
    ITEM_COLLECTIVE,
    ITEM_HOST_WAIT,
    ITEM_LAUNCH,
    ITEM_RECORD,
    ITEM_RUN,
    ITEM_WAIT,
    MAX_RUN,
)
from revati.revatid.trace import Trace


class Predictor(Protocol):
    def predict(self, events: Sequence[LaunchEvent]) -> list[int]: ...


class BadBatch(ValueError):
    """A launch batch item that does not follow the protocol."""


@dataclass
class Stream:
    ready: int = 0
    shift: int = 0  # synchronous device: kernel time launched since the host last waited
    blocked: deque = field(default_factory=deque)  # items waiting behind a dependency


@dataclass
class Rendezvous:
    ranks: int
    duration: int = 0
    arrivals: dict[int, tuple[tuple[int, int, int], int, str]] = field(default_factory=dict)


StreamKey = tuple[int, int, int]  # pid, device, stream


class GpuTimeline:
    def __init__(self, predictor: Callable[[], Predictor], trace: Trace) -> None:
        self._load_predictor = predictor  # loaded at the first launch: most sessions' first
        self._predictor: Predictor | None = None  # seconds are spent on CPU start-up anyway
        self.trace = trace
        self.streams: dict[StreamKey, Stream] = {}
        self.events: dict[tuple[int, int], int | None] = {}  # None: pending
        self.rendezvous: dict[tuple[str, int], Rendezvous] = {}
        self.group_seq: dict[tuple[int, str], int] = {}
        self.graphs: dict[tuple[int, int], int] = {}  # (pid, graph id) -> duration ns
        self.graph_count: dict[int, int] = {}  # per pid: forward templates register thousands
        self.launches = 0
        self.collectives = 0
        self.synchronous = False  # the device runs kernels on the launching thread (a CPU)
        self.wake: WakeModel | None = None  # from the predictor's device, when it loads
        self.warmth: dict[tuple[int, int], tuple[int, float]] = {}  # (pid, device) ->
        # (when its last kernel ends, how cold it is)
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called after a blocked stream or pending event resolves."""
        self._listeners.append(callback)

    # -- input
    def submit(self, pid: int, batch: list[Any]) -> list[int]:
        """Put a participant's batch on its streams; returns the ids of the events it records,
        in order."""
        items = [_parse(item) for item in batch]
        launches = [item[-1] for item in items if item[0] == ITEM_LAUNCH
                    or item[0] == ITEM_COLLECTIVE]
        durations = iter(self._durations(pid, launches))
        resolved = False
        for parsed in items:
            kind = parsed[0]
            if kind == ITEM_HOST_WAIT:
                self.trace.wait(pid, *parsed[1:])
                continue
            if kind == ITEM_LAUNCH:
                self.launches += parsed[3]
                parsed = (*parsed, next(durations))
            elif kind == ITEM_COLLECTIVE:
                self.launches += 1
                parsed = (*parsed, next(durations))
            resolved |= self._apply(pid, parsed)
        if resolved:
            self._notify()
        return [parsed[3] for parsed in items if parsed[0] == ITEM_RECORD]

    def register_graph(self, pid: int, events: list[Any]) -> int:
        parsed = [_parse([ITEM_LAUNCH, *e])[-1] for e in events]
        graph_id = self.graph_count[pid] = self.graph_count.get(pid, 0) + 1
        self.graphs[(pid, graph_id)] = sum(self._durations(pid, parsed))
        self.launches += len(parsed)
        return graph_id

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            self._predictor = self._load_predictor()
            self.wake = getattr(getattr(self._predictor, "hw", None), "wake", None)
        return self._predictor

    def prediction_sources(self) -> dict[str, int]:
        """How many launches each model source predicted (lightgbm, roofline, ...)."""
        return dict(getattr(self._predictor, "counts", {}))

    def _durations(self, pid: int, events: list[LaunchEvent]) -> list[int]:
        plain = [e for e in events if e.family != Family.GRAPH]
        predicted = iter(self.predictor.predict(plain)) if plain else iter(())
        out = []
        for e in events:
            if e.family == Family.GRAPH:
                out.append(self.graphs.get((pid, e.feats[0]), 0))
            else:
                out.append(max(0, int(next(predicted))))
        return out

    # -- the stream model
    def _stream(self, key: StreamKey) -> Stream:
        s = self.streams.get(key)
        if s is None:
            s = self.streams[key] = Stream()
        return s

    def _apply(self, pid: int, item: tuple) -> bool:
        """Apply one item; returns True when something that others wait for resolved."""
        kind = item[0]
        key = (pid, item[1], item[2])
        s = self._stream(key)
        if s.blocked:
            s.blocked.append(item)
            if kind == ITEM_RECORD:
                self.events[(pid, item[3])] = None
            return False
        return self._run(pid, key, s, item)

    def _run(self, pid: int, key: StreamKey, s: Stream, item: tuple) -> bool:
        kind = item[0]
        if kind == ITEM_LAUNCH:
            _, device, stream, count, ev, dur = item
            start = max(s.ready, ev.t_ns + s.shift) if self.synchronous else max(s.ready, ev.t_ns)
            if self.wake is not None:
                dur += self._woken(pid, device, start, count * dur) // count
            s.ready = start + count * dur
            if self.synchronous:
                s.shift = s.ready - ev.t_ns
            self.trace.kernel(pid, device, stream, ev, start, dur, count)
            return False
        if kind == ITEM_RECORD:
            self.events[(pid, item[3])] = s.ready
            return True
        if kind == ITEM_WAIT:
            t = self.events.get((pid, item[3]), 0)
            if t is None:
                s.blocked.append(item)
                return False
            s.ready = max(s.ready, t)
            return False
        # collective
        _, device, stream, group, rank, ev, dur = item
        seq_key = (pid, group)
        seq = self.group_seq.get(seq_key, 0)
        self.group_seq[seq_key] = seq + 1
        ranks = max(1, ev.feats[2]) if ev.family == Family.COLLECTIVE else 2  # P2P: a pair
        rv = self.rendezvous.setdefault((group, seq), Rendezvous(ranks=ranks))
        rv.duration = max(rv.duration, dur)
        rv.arrivals[rank] = (key, max(s.ready, ev.t_ns), ev.op)
        # At the head: when this item was drained from behind a dependency, what was queued
        # after it is still in the deque, and must wait for the collective too.
        s.blocked.appendleft(("collective", group, seq))
        if len(rv.arrivals) < rv.ranks:
            return False
        self._complete(group, seq, rv)
        return True

    def _woken(self, pid: int, device: int, start: int, busy: int) -> int:
        """The extra ns of `busy` ns of kernels from `start` on a device that may have idled
        (the wake model); a process's first kernel finds its device idle since ever."""
        assert self.wake is not None
        until, cold = self.warmth.get((pid, device), (-1 << 62, 0.0))
        extra = 0
        if start > until:
            extra, fresh = self.wake.after(start - until)
            cold = max(cold, fresh)
        if cold >= COLD_FLOOR:
            fading, cold = self.wake.run(cold, busy)
            extra += fading
        self.warmth[(pid, device)] = (max(until, start + busy + extra), cold)
        return extra

    def _complete(self, group: str, seq: int, rv: Rendezvous) -> None:
        del self.rendezvous[(group, seq)]
        start = max(arrival for _, arrival, _ in rv.arrivals.values())
        end = start + rv.duration
        self.collectives += 1
        for rank, (key, arrival, op) in rv.arrivals.items():
            self.trace.collective(key, op, group, rank, arrival, start, rv.duration)
            if self.wake is not None:  # a device in a collective is busy, not idle
                until, cold = self.warmth.get(key[:2], (end, 0.0))
                self.warmth[key[:2]] = (max(until, end), cold)
            s = self.streams[key]
            s.blocked.popleft()  # the collective marker
            s.ready = max(s.ready, end)
            self._drain(key, s)

    def _drain(self, key: StreamKey, s: Stream) -> None:
        while s.blocked and s.blocked[0][0] != "collective":
            item = s.blocked.popleft()
            if item[0] == ITEM_WAIT and self.events.get((key[0], item[3]), 0) is None:
                s.blocked.appendleft(item)
                return
            self._run(key[0], key, s, item)

    def _notify(self) -> None:
        # A resolved event may release streams waiting on it.
        for key, s in self.streams.items():
            if s.blocked and s.blocked[0][0] == ITEM_WAIT:
                self._drain(key, s)
        for callback in self._listeners:
            callback()

    # -- queries
    def stream_ready(self, pid: int, device: int, stream: int | None, now: int | None = None,
                     ) -> int | None:
        """Ready time of one stream (None: every stream of the device); None while blocked.
        `now`: the host syncs at this time (a synchronous device catches up, see above)."""
        if self.synchronous and now is not None:
            for (p, d, st), s in self.streams.items():
                if p == pid and d == device and (stream is None or st == stream) \
                        and not s.blocked:
                    s.ready, s.shift = max(s.ready, now + s.shift), 0
        if stream is not None:
            s = self.streams.get((pid, device, stream))
            if s is None:
                return 0
            return None if s.blocked else s.ready
        ready = 0
        for (p, d, _), s in self.streams.items():
            if p == pid and d == device:
                if s.blocked:
                    return None
                ready = max(ready, s.ready)
        return ready

    def pending_collectives(self) -> list[dict[str, Any]]:
        """Rendezvous some rank has reached and others not yet: what a hung job waits for."""
        return [{"group": group, "seq": seq, "ranks": rv.ranks, "op": next(iter(
                    rv.arrivals.values()))[2],
                 "arrived": {str(rank): key[0] for rank, (key, _, _) in rv.arrivals.items()}}
                for (group, seq), rv in self.rendezvous.items()]

    def blocked_streams(self) -> list[dict[str, Any]]:
        """Streams held by a dependency: a collective, or a wait on an event not yet known."""
        out = []
        for (pid, device, stream), s in self.streams.items():
            if s.blocked:
                head = s.blocked[0]
                behind = (f"collective #{head[2]} on {head[1]}" if head[0] == "collective"
                          else f"event {head[3]}")
                out.append({"pid": pid, "device": device, "stream": stream, "behind": behind,
                            "queued": len(s.blocked)})
        return out

    def event_time(self, pid: int, event_id: int) -> int | None:
        return self.events.get((pid, event_id), 0)

    def forget(self, pid: int) -> None:
        """A process left: drop its streams; collectives it will never join stay pending."""
        for key in [k for k in self.streams if k[0] == pid]:
            del self.streams[key]
        for key in [k for k in self.events if k[0] == pid]:
            del self.events[key]
        for key in [k for k in self.warmth if k[0] == pid]:
            del self.warmth[key]


_FAMILIES = {int(f): f for f in Family}
_new_tuple = tuple.__new__  # builds a LaunchEvent without its Python-level __new__ (hot path)


def _event(family: Any, op: Any, dtype: Any, device: Any, stream: Any, t_ns: Any,
           feats: Any) -> LaunchEvent:
    return _new_tuple(LaunchEvent, (_FAMILIES[family], str(op), str(dtype), int(device),
                                    int(stream), int(t_ns), tuple(map(int, feats))))


def _parse(item: Any) -> tuple:
    """Check one batch item; returns it normalised, the launch event (if any) last:
    (ITEM_LAUNCH, device, stream, count, ev), (ITEM_RECORD | ITEM_WAIT, device, stream,
    event_id), (ITEM_COLLECTIVE, device, stream, group, rank, ev), (ITEM_HOST_WAIT, what,
    start, end)."""
    try:
        kind = item[0]
        if kind == ITEM_LAUNCH:
            ev = _event(*item[1:])
            return (ITEM_LAUNCH, ev.device, ev.stream, 1, ev)
        if kind == ITEM_RUN:
            _, count, *fields = item
            if type(count) is not int or not 1 <= count <= MAX_RUN:
                raise ValueError(f"a run's count must be an integer in [1, {MAX_RUN}]")
            ev = _event(*fields)
            return (ITEM_LAUNCH, ev.device, ev.stream, count, ev)
        if kind in (ITEM_RECORD, ITEM_WAIT):
            _, device, stream, event_id = item
            return (kind, int(device), int(stream), int(event_id))
        if kind == ITEM_HOST_WAIT:
            _, what, start, end = item
            return (kind, str(what)[:64], int(start), int(end))
        if kind == ITEM_COLLECTIVE:
            _, group, rank, family, op, dtype, device, stream, t_ns, feats = item
            ev = _event(family, op, dtype, device, stream, t_ns, feats)
            if not ((ev.family == Family.COLLECTIVE and len(ev.feats) >= 3)
                    or (ev.family == Family.P2P and len(ev.feats) >= 2)):
                raise ValueError("collective items need family COLLECTIVE and (kind, bytes, "
                                 "ranks), or P2P and (bytes, peer)")
            return (ITEM_COLLECTIVE, ev.device, ev.stream, str(group), int(rank), ev)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise BadBatch(f"bad launch item {item!r:.200}: {exc}") from None
    raise BadBatch(f"unknown launch item kind {item!r:.100}")
