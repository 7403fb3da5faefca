"""The seam between the virtual CUDA layer and the virtual-time runtime.

The virtual CUDA adapter (revati.adapters.cuda) produces launches and asks for waits through a
`GpuLink`; the session runtime (revati.adapters.session) implements it by streaming batches to
revatid, which keeps each virtual stream's ready time and rendezvouses collectives. Tests of the
CUDA layer may install their own link with `install()`.

Stream ids are per (process, device); 0 is the default stream. Event ids are per process.

A link may also offer `launch_run(ev, count)`: `count` launches of `ev` back to back, as one
item (the session link does; revati.adapters.cuda.graphs uses it for a replay's identical
dynamic launches and falls back to `count` calls of `launch` on a link without it), and
`flush()`: send what it buffered now. A graph replay calls it: the replay is the bulk of a
serving step's launches, and revatid then predicts and queues them while the host goes on
(sampling, the next step's inputs) instead of when the step's sync asks for them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from revati.predictors.launch import LaunchEvent


class GpuLink(Protocol):
    def now_ns(self) -> int:
        """The session's virtual time, ns."""

    def freeze(self) -> AbstractContextManager[None]:
        """Context in which the session clock stands still (Revati's own overhead)."""

    def op_freeze(self) -> AbstractContextManager[None]:
        """freeze() around the handling of one intercepted op; the op's way into Revati
        before the handler ran and the previous op's way back (the dispatcher's detour
        through Python) are kept out too."""

    def launch(self, ev: LaunchEvent) -> None:
        """Queue one kernel launch; it starts at max(stream ready, ev.t_ns)."""

    def record_event(self, device: int, stream: int, event_id: int) -> None:
        """Mark `event_id` as completing when every launch queued so far on the stream has."""

    def stream_wait_event(self, device: int, stream: int, event_id: int) -> None:
        """Later launches on the stream start no earlier than `event_id` completes."""

    def collective(self, ev: LaunchEvent, group: str, rank: int) -> None:
        """Queue a collective launch of `group` (a key equal on every rank); it completes on
        every rank at max(rank arrival) + predicted duration."""

    def register_graph(self, events: list[LaunchEvent]) -> int:
        """Record a captured CUDA graph's launches; returns the graph id for GRAPH events."""

    def synchronize(self, device: int, stream: int | None) -> int:
        """Block, in virtual time, until the stream (None: every stream of the device) has
        finished all queued work. Returns the virtual time after the wait, ns."""

    def event_time_ns(self, event_id: int) -> int | None:
        """Virtual completion time of a recorded event, or None while it is still pending
        (a collective whose other ranks have not arrived, say)."""

    def synchronize_event(self, event_id: int) -> int:
        """Block, in virtual time, until the event completes. Returns the virtual time, ns."""

    def spend_host(self, ns: int) -> None:
        """Let `ns` of host time pass in virtual time: work the real machine's host does that
        does not run here (the CUDA side of launches: state.settle_host_time)."""


# The GpuLink calls other than launches, for links that stand in front of another (a graph
# replay's runs, a forward template's recorder) and treat them alike.
CALLS_BESIDES_LAUNCH = ("record_event", "stream_wait_event", "collective", "register_graph",
                        "synchronize", "event_time_ns", "synchronize_event", "spend_host")

_link: GpuLink | None = None


def install(link: GpuLink | None) -> None:
    """Set the process's link (the session runtime does this when the process joins)."""
    global _link
    _link = link


def current() -> GpuLink:
    if _link is None:
        raise RuntimeError(
            "no Revati session in this process: run it under `revatictl run` "
            "(or install a GpuLink with revati.adapters.gpu_link.install)"
        )
    return _link
