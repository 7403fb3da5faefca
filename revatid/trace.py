"""A session's timeline, kept compactly and rendered as Chrome trace / Perfetto JSON.

Tracks: one per virtual GPU stream (pid "GPU <device> (pid N)", tid = stream) with every
kernel and collective, one per participant with its waits on the GPU, and one for the
timekeeper's jumps. Times are virtual; the JSON uses microseconds.

A run of identical kernels back to back (a graph replay's per-layer attention) is kept as one
record with its count and expanded when the trace is read: recording is on revatid's path of
every launch batch, reading happens once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from revati.predictors.launch import Family, LaunchEvent

MAX_RECORDS = 2_000_000  # beyond this, records are counted but not kept


class Trace:
    def __init__(self) -> None:
        # (pid, device, stream, op, start, duration, family, feats, count)
        self.kernels: list[tuple[int, int, int, str, int, int, int, tuple[int, ...], int]] = []
        self.collectives: list[tuple[int, int, int, str, str, int, int, int, int]] = []
        self.waits: list[tuple[int, str, int, int]] = []
        self.jumps: list[tuple[int, int]] = []
        self.dropped = 0

    def _room(self) -> bool:
        if len(self.kernels) + len(self.waits) + len(self.jumps) < MAX_RECORDS:
            return True
        self.dropped += 1
        return False

    def kernel(self, pid: int, device: int, stream: int, ev: LaunchEvent, start: int,
               dur: int, count: int = 1) -> None:
        """`count` launches of `ev` back to back from `start`, `dur` each."""
        if self._room():
            self.kernels.append((pid, device, stream, ev.op, start, dur, ev.family, ev.feats,
                                 count))

    def kernel_spans(self) -> Iterator[tuple[int, int, int, str, int, int, int, tuple[int, ...]]]:
        """Every kernel, runs expanded: (pid, device, stream, op, start, duration, family,
        feats)."""
        for pid, device, stream, op, start, dur, family, feats, count in self.kernels:
            for i in range(count):
                yield pid, device, stream, op, start + i * dur, dur, family, feats

    def collective(self, key: tuple[int, int, int], op: str, group: str, rank: int,
                   arrival: int, start: int, dur: int) -> None:
        pid, device, stream = key
        self.collectives.append((pid, device, stream, op, group, rank, arrival, start, dur))

    def wait(self, pid: int, what: str, start: int, end: int) -> None:
        if self._room():
            self.waits.append((pid, what, start, end))

    def jump(self, start: int, end: int) -> None:
        if self._room():
            self.jumps.append((start, end))

    def stream_busy_ns(self, pid: int, device: int, stream: int) -> int:
        return sum(k[5] * k[8] for k in self.kernels if k[:3] == (pid, device, stream))

    def chrome(self, names: dict[int, str]) -> dict[str, Any]:
        """The trace as a Chrome trace JSON object (names: pid -> process label)."""
        out: list[dict[str, Any]] = []
        gpu_pids: dict[tuple[int, int], int] = {}

        def gpu_track(pid: int, device: int) -> int:
            if (pid, device) not in gpu_pids:
                track = 1_000_000 + len(gpu_pids)
                gpu_pids[(pid, device)] = track
                label = f"GPU {device} ({names.get(pid, pid)})"
                out.append({"ph": "M", "name": "process_name", "pid": track,
                            "args": {"name": label}})
            return gpu_pids[(pid, device)]

        for pid, device, stream, op, start, dur, family, feats in self.kernel_spans():
            out.append({"ph": "X", "name": op, "cat": Family(family).name.lower(),
                        "pid": gpu_track(pid, device), "tid": stream, "ts": start / 1e3,
                        "dur": dur / 1e3, "args": {"feats": list(feats)}})
        for pid, device, stream, op, group, rank, arrival, start, dur in self.collectives:
            out.append({"ph": "X", "name": op, "cat": "collective",
                        "pid": gpu_track(pid, device), "tid": stream, "ts": start / 1e3,
                        "dur": dur / 1e3,
                        "args": {"group": group, "rank": rank, "arrival_us": arrival / 1e3}})
        for pid, label in names.items():
            out.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": label}})
        for pid, what, start, end in self.waits:
            out.append({"ph": "X", "name": what, "cat": "wait", "pid": pid, "tid": 0,
                        "ts": start / 1e3, "dur": (end - start) / 1e3})
        out.append({"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "timekeeper"}})
        for start, end in self.jumps:
            out.append({"ph": "X", "name": "jump", "cat": "jump", "pid": 0, "tid": 0,
                        "ts": start / 1e3, "dur": (end - start) / 1e3})
        return {"traceEvents": out, "displayTimeUnit": "ms",
                "otherData": {"dropped_records": self.dropped}}
