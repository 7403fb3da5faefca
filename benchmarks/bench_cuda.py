"""Costs of virtual CUDA on the host (prints medians).

  hook cost per virtual op: the wall time of one op on virtual tensors whose signature is
      cached (a linear layer, an add, a view, an assignment, a sampled-token read), under
      inference mode as serving code runs, with a link that only buffers launches as the
      session link does; and
      a free list sliced over and over (a view of a view of ...);
  vLLM's state stand-ins (adapters/vllm/triton_kernels.py) for one decode step of 1 and 8
      rows, on host-backed virtual tensors as the V2 model runner passes them; and
  decode steps per wall second of a Llama-3.1-8B-shaped 32-layer model, batch 8, eager and
      with the step captured once as a CUDA graph and replayed.

    python benchmarks/bench_cuda.py [--reps N] [--steps N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' Llama model

from revati.adapters import cuda
from revati.predictors.launch import LaunchEvent
from tests.cuda.llama import LLAMA_8B, Llama

DURATION_NS = 20_000


class BufferLink:
    """A GpuLink that costs what the session link costs per launch (one list append) and
    keeps a fixed-duration timeline for the waits."""

    def __init__(self) -> None:
        self.clock = 0
        self.ready: dict[tuple[int, int], int] = {}
        self.buf: list[tuple[LaunchEvent, int]] = []  # (launch, count)
        self.graphs: dict[int, int] = {}

    def now_ns(self) -> int:
        return self.clock

    def freeze(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    op_freeze = freeze

    def launch(self, ev: LaunchEvent) -> None:
        self.launch_run(ev, 1)

    def launch_run(self, ev: LaunchEvent, count: int) -> None:
        self.buf.append((ev, count))
        if len(self.buf) >= 4096:
            self._apply()

    def _apply(self) -> None:
        for ev, count in self.buf:
            key = (ev.device, ev.stream)
            d = self.graphs[ev.feats[0]] if ev.family == 7 else DURATION_NS
            self.ready[key] = max(self.ready.get(key, 0), ev.t_ns) + count * d
        self.buf.clear()

    def record_event(self, device: int, stream: int, event_id: int) -> None:
        pass

    def stream_wait_event(self, device: int, stream: int, event_id: int) -> None:
        pass

    def collective(self, ev: LaunchEvent, group: str, rank: int) -> None:
        self.launch(ev)

    def register_graph(self, events: list[LaunchEvent]) -> int:
        graph_id = len(self.graphs) + 1
        self.graphs[graph_id] = DURATION_NS * len(events)
        return graph_id

    def synchronize(self, device: int, stream: int | None) -> int:
        self._apply()
        self.clock = max([self.clock, *self.ready.values()])
        return self.clock

    def event_time_ns(self, event_id: int) -> int | None:
        return self.clock

    def synchronize_event(self, event_id: int) -> int:
        return self.synchronize(0, None)


def median_us(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(min(reps, 200)):
        fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e3


def hook_costs(reps: int) -> None:
    bf16 = torch.bfloat16
    x = torch.empty(8, 4096, dtype=bf16, device="cuda")
    w = torch.empty(4096, 4096, dtype=bf16, device="cuda")
    y = torch.empty(8, 4096, dtype=bf16, device="cuda")
    logits = torch.empty(8, 128256, dtype=bf16, device="cuda")
    ids = torch.arange(8, device="cuda")
    cpu_x, cpu_w = torch.empty(8, 4096, dtype=bf16), torch.empty(4096, 4096, dtype=bf16)
    with torch.inference_mode():
        rows = [
            ("linear [8,4096] x [4096,4096] bf16", median_us(lambda: F.linear(x, w), reps)),
            ("add [8,4096] bf16", median_us(lambda: x + y, reps)),
            ("slice x[:, :128] (a view)", median_us(lambda: x[:, :128], reps)),
            ("assign ids[:4] = ids[4:] (host-backed)",
             median_us(lambda: ids.__setitem__(slice(None, 4), ids[4:]), reps)),
            ("embedding lookup of 8 ids", median_us(lambda: F.embedding(ids, w), reps)),
            ("argmax + tolist (sync + oracle)",
             median_us(lambda: logits.argmax(-1).tolist(), reps)),
            ("torch.zeros(8, int32, device=cuda)",
             median_us(lambda: torch.zeros(8, dtype=torch.int32, device="cuda"), reps)),
            ("torch.arange(9, int32, device=cuda)",
             median_us(lambda: torch.arange(9, dtype=torch.int32, device="cuda"), reps)),
            ("for scale: eager CPU meta linear",
             median_us(lambda: F.linear(cpu_x.to("meta"), cpu_w.to("meta")), reps)),
        ]
    rows.append(("free = free[2:], after 2,000 of them", free_list_us(2000)))
    for n in (1, 8):
        rows.append((f"vLLM state stand-ins, decode step, {n} rows", stand_ins_us(n, reps // 10)))
    print("hook cost per virtual op (median, cached signature)")
    for name, us in rows:
        print(f"  {name:42s} {us:8.2f} us")


def stand_ins_us(rows: int, reps: int) -> float:
    """Median wall time of the stand-ins a decode step of `rows` one-token rows runs (V2
    model runner, no drafts, sampled ids read back), over 256 request slots."""
    from revati.adapters.vllm import triton_kernels as k

    slots, i32 = 256, torch.int32

    def dev(values: Any, dtype: torch.dtype = i32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device="cuda")

    idx = dev(list(range(rows)))
    qsl, cu = dev(list(range(rows + 1))), dev(list(range(rows + 1)))
    done, prefill = dev([600] * slots), dev([512] * slots)
    seq, pos = dev([0] * slots), dev([0] * 2048, torch.int64)
    ids, last = dev([0] * 2048), dev([[7]] * slots, torch.int64)
    logits_at, total = dev([0] * rows, torch.int64), dev([600] * slots)
    sampled, n_sampled = dev([[3]] * rows, torch.int64), dev([1] * rows)
    rejected = dev([0] * rows)

    def step() -> None:
        k._prepare_pos_seq_lens_kernel(pos, seq, idx, qsl, done, slots)
        k._combine_sampled_and_draft_tokens_kernel(ids, idx, last, qsl, seq, prefill, None, 0,
                                                   cu, logits_at)
        k._get_num_sampled_and_rejected_kernel(n_sampled, rejected, seq, cu, idx, prefill)
        k._post_update_kernel(idx, done, last, None, 0, sampled, 1, n_sampled, rejected, qsl,
                              None, 0, total)

    return median_us(step, reps)


def free_list_us(slices: int) -> float:
    """Median wall time of `free = free[2:]` over the last 200 of `slices` slices of a
    470k-entry free list outside inference mode (SGLang's KV allocator): each slice's shape is
    new (no cached signature), and PyTorch chains a view function per view of a subclass
    unless the slice is taken off the base (adapters/cuda/tensor.py, REROOT_DEPTH)."""
    free = torch.arange(1, 470_001, dtype=torch.int64, device="cuda")
    for _ in range(slices - 200):
        free = free[2:]
    samples = []
    for _ in range(200):
        t0 = time.perf_counter_ns()
        free = free[2:]
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e3


def decode_rate(steps: int, batch: int, context: int) -> None:
    cfg = LLAMA_8B
    t0 = time.perf_counter()
    with torch.device("cuda"):
        model = Llama(cfg).to(torch.bfloat16)
    build = time.perf_counter() - t0
    cache = model.kv_cache(batch, context + steps + 1)
    tokens = torch.zeros(batch, 1, dtype=torch.long, device="cuda")
    position = torch.zeros(1, dtype=torch.long, device="cuda")
    print(f"Llama-3.1-8B shapes, 32 layers, batch {batch}: built in {build:.2f} s, "
          f"{torch.cuda.memory_allocated() / 2**30:.1f} GiB virtual")
    with torch.inference_mode():
        def eager(step: int) -> None:
            logits = model(tokens, position, cache, context + step)
            tokens.copy_(logits.argmax(-1))
            tokens.tolist()

        eager(0)  # signatures seen once
        t0 = time.perf_counter()
        for step in range(steps):
            eager(step)
        eager_rate = steps / (time.perf_counter() - t0)

        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = model(tokens, position, cache, context)
            sampled = logits.argmax(-1)

        def replayed() -> None:
            graph.replay()
            tokens.copy_(sampled)
            tokens.tolist()

        replayed()
        t0 = time.perf_counter()
        for _ in range(steps):
            replayed()
        graph_rate = steps / (time.perf_counter() - t0)
        with torch.device("meta"):  # the same forward on plain meta tensors: no emulation
            meta_model = Llama(cfg).to(torch.bfloat16)
        meta_cache = meta_model.kv_cache(batch, context + steps + 1)
        meta_tokens = torch.zeros(batch, 1, dtype=torch.long, device="meta")
        meta_position = torch.zeros(1, dtype=torch.long, device="meta")
        meta_model(meta_tokens, meta_position, meta_cache, context)
        t0 = time.perf_counter()
        for step in range(steps):
            meta_model(meta_tokens, meta_position, meta_cache, context + step)
        meta_rate = steps / (time.perf_counter() - t0)
    print("decode steps per wall second")
    print(f"  for scale: the forward on meta tensors     {meta_rate:8.1f} steps/s "
          f"({1e3 / meta_rate:.2f} ms/step)")
    print(f"  eager                                      {eager_rate:8.1f} steps/s "
          f"({1e3 / eager_rate:.2f} ms/step)")
    print(f"  CUDA graph replay                          {graph_rate:8.1f} steps/s "
          f"({1e3 / graph_rate:.3f} ms/step)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    cuda.install("h100", 1, link=BufferLink())
    hook_costs(args.reps)
    decode_rate(args.steps, batch=8, context=512)


if __name__ == "__main__":
    main()
