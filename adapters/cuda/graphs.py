"""Virtual CUDA graphs.

Capture records the launches issued on the capturing stream instead of queuing them (as on a
GPU, nothing runs during capture); the end of capture hands the trace to revatid
(`register_graph`), which predicts its duration once. A replay is then one GRAPH launch on the
current stream: no Python op runs again, so replaying a decode step costs what a GPU replay
costs the host, a few microseconds.

Tensors written by a graph keep the values they had after capture: replay reruns no host-backed
op either (the values of small control tensors that a graph itself computes are not refreshed).

Some kernels in a graph take time that depends on device data the host refreshes before each
replay (attention reads the current context lengths). Framework glue records such a kernel
as a *dynamic node* (`dynamic(fn)`): at capture it is kept out of the static trace, and each
replay calls `fn()`, which launches the kernel with the current step's features.

A replay is one launch on a GPU, so the dynamic nodes' host time is Revati's own: the whole
replay runs frozen, and every launch in it carries the replay's launch time. Launched back to
back at one time on a stream, kernels leave it ready at the same time in any order (each one
after the first starts where the previous one ended), so the replay counts identical launches
(a decode step's 32 KV-cache writes and 32 attention calls) and hands them to the link as runs
after the GRAPH launch: `link.launch_run(ev, count)`, one protocol item and one prediction
each, with exactly the stream times that `count` separate launches would give.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from operator import eq
from threading import get_ident
from typing import Any

from revati.adapters.cuda import streams
from revati.adapters.cuda.state import S
from revati.adapters.gpu_link import CALLS_BESIDES_LAUNCH
from revati.predictors.launch import Family, LaunchEvent

MAX_PERIOD = 8  # launches per dynamic-node layer that _runs looks for before it hashes


class CUDAGraph:
    """torch.cuda.CUDAGraph on a virtual GPU."""

    def __init__(self, keep_graph: bool = False) -> None:
        self.events: list[LaunchEvent] = []
        self.dynamic: list[Callable[[], None]] = []
        self.graph_id: int | None = None
        self.device = 0
        self.dtype = "fp32"
        self._pool: tuple[int, int] | None = None
        self._stream: streams.Stream | None = None

    def capture_begin(self, pool: tuple[int, int] | None = None,
                      capture_error_mode: str = "global") -> None:
        stream = streams.current_stream()
        if stream.capture is not None:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        if stream.stream_id == 0:
            raise RuntimeError("CUDA graphs must be captured on a non-default stream. (However, "
                               "after capture, it's ok to replay them on the default stream.)")
        self.events = []
        self.dynamic = []
        self.device = stream.device_index
        self._pool = pool if pool is not None else graph_pool_handle()
        self._stream = stream
        stream.capture = self

    def capture_end(self) -> None:
        stream = self._stream
        if stream is None:
            raise RuntimeError("capture_end() without capture_begin()")
        stream.capture = None
        self._stream = None
        self.dtype = graph_dtype(e.dtype for e in self.events)
        link = S.link()
        with link.freeze():
            self.graph_id = link.register_graph(self.events)

    def replay(self) -> None:
        if self.graph_id is None:
            raise RuntimeError("CUDAGraph.replay() before a completed capture")
        stream = streams.current_stream(self.device)
        link = S.link()
        with link.freeze():
            ev = LaunchEvent(int(Family.GRAPH), "cuda_graph", self.dtype, self.device,
                             stream.stream_id, link.now_ns(), (self.graph_id,))
            launch_graph(link, ev, self.dynamic)

    def reset(self) -> None:
        self.events = []
        self.dynamic = []
        self.graph_id = None

    def pool(self) -> tuple[int, int]:
        if self._pool is None:
            raise RuntimeError("CUDAGraph.pool() before capture_begin()")
        return self._pool

    def enable_debug_mode(self) -> None:
        pass

    def debug_dump(self, debug_path: str) -> None:
        with open(debug_path, "w") as f:
            for e in self.events:
                f.write(f"{e.op} {e.dtype} {e.feats}\n")


def graph_dtype(dtypes: Iterable[str]) -> str:
    """A GRAPH launch's dtype: its kernels' most common (the first seen among equals)."""
    counts = Counter(dtypes)
    return counts.most_common(1)[0][0] if counts else "fp32"


def launch_graph(link: Any, ev: LaunchEvent, nodes: list[Callable[[], None]]) -> None:
    """Launch a registered graph (`ev`, a GRAPH launch) and its dynamic nodes, whose launches
    go to the link as runs; the caller holds the link's freeze. The link sends them at once
    when it can (`flush`, see revati.adapters.gpu_link)."""
    if nodes:
        runs = _Runs(link, ev)
        saved, S.link_override = S.link_override, runs
        try:
            _run_nodes(runs, nodes)
        finally:
            S.link_override = saved
            runs.send()
    else:
        link.launch(ev)
    flush = getattr(link, "flush", None)
    if flush is not None:
        flush()


def _run_nodes(runs: _Runs, nodes: list[Callable[[], None]]) -> None:
    """Each node's launches, in order, into `runs`. A node with a `key()` equal to the node
    before it launches what that node launched (a layer's attention with the step's batch,
    32 times over): those launches are repeated rather than built again."""
    last_key: Any = _NO_KEY
    launched: list[LaunchEvent] = []  # what the last node that ran launched
    end = 0  # where the runs' list ended after it (or its repeats)
    for node in nodes:
        key_of = getattr(node, "key", None)
        key = _NO_KEY if key_of is None else key_of()
        events = runs.events
        if key is not _NO_KEY and key == last_key and len(events) == end:
            events.extend(launched)
            end = len(events)
            continue
        first = len(events)
        node()  # launches of its own, on this stream
        # Repeated only while the node's launches are still where they were put: a node
        # that asks the link anything else has them sent first (_after_runs)
        if runs.events is events:
            launched, end = events[first:], len(events)
        else:
            end = -1
        last_key = key


_NO_KEY = object()


def _after_runs(name: str) -> Callable[..., Any]:
    """A GpuLink call of _Runs other than a launch: on the replaying thread, what was counted
    goes to the link first, so the call sees every launch before it."""

    def call(self: _Runs, *args: Any, **kwargs: Any) -> Any:
        if get_ident() == self.thread:
            self.send()
        return getattr(self.link, name)(*args, **kwargs)

    call.__name__ = name
    return call


class _Runs:
    """The link while a replay's dynamic nodes run: the replaying thread's launches are kept
    (a list append each: this is the hot path) and go to the link as runs of identical ones,
    first seen first, once the nodes are done. Other threads' calls pass straight through."""

    __slots__ = ("events", "freeze", "link", "now_ns", "op_freeze", "t_ns", "thread")

    def __init__(self, link: Any, first: LaunchEvent) -> None:
        self.link = link
        self.thread = get_ident()
        self.now_ns, self.freeze, self.op_freeze = link.now_ns, link.freeze, link.op_freeze
        self.t_ns = first.t_ns
        self.events = [first]

    def launch(self, ev: LaunchEvent) -> None:
        if ev.t_ns == self.t_ns and get_ident() == self.thread:
            self.events.append(ev)
        else:
            self.launch_run(ev, 1)

    def launch_run(self, ev: LaunchEvent, count: int) -> None:
        if get_ident() != self.thread:
            _launch_run(self.link, ev, count)
            return
        if ev.t_ns != self.t_ns:  # reordering is exact only among launches of one time
            self.send()
            self.t_ns = ev.t_ns
        self.events.extend([ev] * count)

    def send(self) -> None:
        events, self.events = self.events, []
        if not events:
            return
        try:
            runs = _runs(events)
        except TypeError:  # unhashable features (a list): sent one by one, in order
            runs = [(ev, 1) for ev in events]
        for ev, count in runs:
            _launch_run(self.link, ev, count)


for _name in CALLS_BESIDES_LAUNCH:
    setattr(_Runs, _name, _after_runs(_name))


def _runs(events: list[LaunchEvent]) -> list[tuple[LaunchEvent, int]]:
    """Identical launches counted, first seen first. The nodes repeat per layer, so what
    follows the first launch (the graph's) is most often a few launches repeated: that is
    checked with one comparison per launch; anything else is counted by hash."""
    head, rest = events[0], events[1:]
    n = len(rest)
    for period in range(1, min(MAX_PERIOD, n // 2) + 1):
        if n % period == 0 and rest[period] == rest[0] \
                and all(map(eq, rest[period:], rest[:-period])):
            return [(head, 1), *((ev, n // period) for ev in rest[:period])]
    return list(Counter(events).items())


def _launch_run(link: Any, ev: LaunchEvent, count: int) -> None:
    if count == 1:
        link.launch(ev)
        return
    run = getattr(link, "launch_run", None)
    if run is not None:
        run(ev, count)
    else:  # a GpuLink without runs
        for _ in range(count):
            link.launch(ev)


def graph_pool_handle() -> tuple[int, int]:
    """An opaque memory-pool token, as torch.cuda.graph_pool_handle() returns."""
    return (0, next(S.graph_pools))


class MemPool:
    """torch.cuda.MemPool(allocator=None, use_on_oom=False, no_split=False): a private pool of
    the caching allocator, whose `id` graph captures take as their pool (transformers' CB
    captures its graphs into one). A virtual device counts an allocation the same whichever
    pool it comes from, so the pool is its token; it holds no segments of its own."""

    def __init__(self, allocator: Any = None, use_on_oom: bool = False,
                 no_split: bool = False) -> None:
        self._id = graph_pool_handle()
        self._allocator = allocator

    @property
    def id(self) -> tuple[int, int]:
        return self._id

    @property
    def allocator(self) -> Any:
        return self._allocator

    def use_count(self) -> int:
        return 1

    def snapshot(self, include_traces: bool = True) -> list[dict[str, Any]]:
        return []


@contextlib.contextmanager
def use_mem_pool(pool: MemPool, device: Any = None) -> Iterator[None]:
    """torch.cuda.use_mem_pool: this thread's allocations come from `pool` (on a virtual
    device, counted as any other)."""
    if not isinstance(pool, MemPool):
        raise TypeError(f"use_mem_pool() takes a torch.cuda.MemPool, not {type(pool).__name__}")
    S.device_index(device)  # an unknown device fails as it would on the GPU
    yield


def dynamic(node: Callable[[], None]) -> None:
    """Launch `node()`'s kernels now, or, while the current stream captures a graph, at each
    replay of that graph instead. A forward template (templates.py) that records the current
    forward keeps the node, to run it at each replay of the template.

    A node may have a `key()` method returning everything its launches depend on at a replay
    (compared with ==): a replay runs one node of each run of consecutive
    nodes with equal keys and repeats its launches for the others."""
    graph = streams.current_stream().capture
    if graph is not None:
        graph.dynamic.append(node)
        return
    recorder = getattr(S.link_override, "run_node", None)  # a forward template's recording
    if recorder is not None:
        recorder(node)
    else:
        node()


def is_current_stream_capturing() -> bool:
    return streams.current_stream().capture is not None


class graph(AbstractContextManager):
    """torch.cuda.graph(cuda_graph, pool=None, stream=None, capture_error_mode="global")."""

    default_capture_stream: streams.Stream | None = None

    def __init__(self, cuda_graph: CUDAGraph, pool: tuple[int, int] | None = None,
                 stream: streams.Stream | None = None,
                 capture_error_mode: str = "global") -> None:
        if stream is None:
            if graph.default_capture_stream is None:
                graph.default_capture_stream = streams.Stream()
            stream = graph.default_capture_stream
        self.cuda_graph = cuda_graph
        self.pool = pool
        self.capture_error_mode = capture_error_mode
        self.stream_ctx = streams.StreamContext(stream)

    def __enter__(self) -> None:
        streams.synchronize()
        self.stream_ctx.__enter__()
        self.cuda_graph.capture_begin(self.pool, capture_error_mode=self.capture_error_mode)

    def __exit__(self, *exc: Any) -> None:
        self.cuda_graph.capture_end()
        self.stream_ctx.__exit__(*exc)
