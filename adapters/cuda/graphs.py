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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from revati.adapters.cuda import streams
from revati.adapters.cuda.state import S
from revati.predictors.launch import Family, LaunchEvent


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
        counts = Counter(e.dtype for e in self.events)
        self.dtype = counts.most_common(1)[0][0] if counts else "fp32"
        link = S.link()
        with link.freeze():
            self.graph_id = link.register_graph(self.events)

    def replay(self) -> None:
        if self.graph_id is None:
            raise RuntimeError("CUDAGraph.replay() before a completed capture")
        stream = streams.current_stream(self.device)
        ev_stream = stream.stream_id
        link = S.link()
        with link.freeze():
            link.launch(LaunchEvent(int(Family.GRAPH), "cuda_graph", self.dtype, self.device,
                                    ev_stream, link.now_ns(), (self.graph_id,)))
        for node in self.dynamic:  # launches of their own, on this stream
            node()

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


def graph_pool_handle() -> tuple[int, int]:
    """An opaque memory-pool token, as torch.cuda.graph_pool_handle() returns."""
    return (0, next(S.graph_pools))


def dynamic(node: Callable[[], None]) -> None:
    """Launch `node()`'s kernels now, or, while the current stream captures a graph, at each
    replay of that graph instead."""
    graph = streams.current_stream().capture
    if graph is None:
        node()
    else:
        graph.dynamic.append(node)


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
