"""Run under `revatictl run --fixed-ns 1000000`: a CUDA graph of 32 layers (a static kernel and
a dynamic node launching a KV write and an attention kernel each, as the vLLM backend's do),
replayed; and the same kernels as a graph of the static ones followed by 64 separate launches.
Each runs behind 100 ms of queued GPU work, so the host's own time does not show: prints the
exact virtual ns each took on the stream (event to event, from revatid) and how far past the
end the host sync returned."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from revati.adapters import cuda
from revati.adapters.cuda import graphs
from revati.adapters.cuda.state import S
from revati.predictors.launch import Family

LAYERS = 32


def node() -> None:
    cuda.launch(Family.MEMORY, "kv", "bf16", (8192, 2048))
    cuda.launch(Family.ATTENTION, "att", "bf16", (1, 1, 600, 600, 360_000, 32, 8, 128, 1))


def capture(dynamic: bool) -> torch.cuda.CUDAGraph:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(LAYERS):
            cuda.launch(Family.GEMM, "mm", "bf16", (1, 4096, 4096, 1))
            if dynamic:
                graphs.dynamic(node)
    return graph


def timed(run: Callable[[], None]) -> dict[str, int]:
    torch.cuda.synchronize()
    for _ in range(100):
        cuda.launch(Family.GEMM, "mm", "bf16", (1, 4096, 4096, 1))
    start, end = torch.cuda.Event(), torch.cuda.Event()
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    synced = S.link().now_ns()
    t0, t1 = S.link().event_time_ns(start.id), S.link().event_time_ns(end.id)
    return {"gpu_ns": t1 - t0, "sync_late_ns": synced - t1}


def main() -> None:
    with_nodes, static = capture(True), capture(False)

    def separate() -> None:
        static.replay()
        for _ in range(LAYERS):
            node()

    print(json.dumps({"replay": timed(with_nodes.replay), "separate": timed(separate)}))


if __name__ == "__main__":
    main()
