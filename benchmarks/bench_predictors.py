"""Kernel-duration predictions per second (prints medians of repeats; not a timed test).

The workload is what revatid sees from a TP-2 Llama-3-8B-shaped decoder serving decode steps
of batch 1..256 (and a few prefills): per layer and step, 4 GEMMs, norms, rotary, silu_and_mul,
adds, one attention and one all-reduce; launches arrive in batches.

  warm:  every key already cached (the steady state: decode shapes repeat step after step)
  cold:  an empty cache each repeat (each distinct shape predicted once, then hits)
  misses: every launch a new key (GEMMs of every m; decode attention whose KV lengths grow
          every step), i.e. features + one LightGBM or analytical call per family and batch

    python benchmarks/bench_predictors.py [--sku h100] [--reps 7] [--batch 4096]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from revati.predictors.dataset import event
from revati.predictors.launch import Collective, Family, LaunchEvent
from revati.predictors.registry import Predictor, load_predictor

H, F, HEADS, KV_HEADS, HEAD_DIM, TP = 4096, 14336, 32, 8, 128, 2


def layer(tokens: int, seqs: int, kv_len: int) -> list[LaunchEvent]:
    """The launches of one decoder layer over `tokens` tokens of `seqs` sequences."""
    hd, q, kv = HEAD_DIM, HEADS // TP, KV_HEADS // TP
    norm = event(Family.MEMORY, "vllm::rms_norm", "bf16", (4 * tokens * H + 2 * H, tokens * H))
    return [
        norm,
        event(Family.GEMM, "aten::mm", "bf16", (tokens, (q + 2 * kv) * hd, H, 1)),
        event(Family.MEMORY, "vllm::rotary_embedding", "bf16",
              (4 * tokens * (q + kv) * hd + 8 * tokens + 2 * tokens * hd,
               tokens * (q + kv) * hd)),
        event(Family.ATTENTION, "vllm::unified_attention", "bf16",
              (seqs, tokens, seqs * kv_len, kv_len, seqs * kv_len**2, q, kv, hd, 1)),
        event(Family.GEMM, "aten::mm", "bf16", (tokens, H, q * hd, 1)),
        event(Family.COLLECTIVE, "c10d::allreduce_", "bf16",
              (Collective.ALL_REDUCE, 2 * tokens * H, TP)),
        event(Family.MEMORY, "aten::add", "bf16", (6 * tokens * H, tokens * H)),
        norm,
        event(Family.GEMM, "aten::mm", "bf16", (tokens, 2 * F // TP, H, 1)),
        event(Family.MEMORY, "vllm::silu_and_mul", "bf16",
              (6 * tokens * F // TP, tokens * F // TP)),
        event(Family.GEMM, "aten::mm", "bf16", (tokens, H, F // TP, 1)),
        event(Family.COLLECTIVE, "c10d::allreduce_", "bf16",
              (Collective.ALL_REDUCE, 2 * tokens * H, TP)),
        event(Family.MEMORY, "aten::add", "bf16", (6 * tokens * H, tokens * H)),
    ]


def workload(n: int) -> list[LaunchEvent]:
    """`n` launches: decode steps at batch sizes 1..256 (KV length fixed per batch size,
    so keys repeat as they do between the steps of a CUDA-graph batch size) and prefills."""
    shapes = [(b, b, 1024) for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    shapes += [(t, 1, t) for t in (512, 2048, 8192)]
    out: list[LaunchEvent] = []
    while len(out) < n:
        for tokens, seqs, kv in shapes:
            out += layer(tokens, seqs, kv) * 32
    return out[:n]


def rate(predictor_factory: Callable[[], Predictor], events: list[LaunchEvent], batch: int,
         reps: int, warm: bool) -> float:
    """Median predictions per second over `reps` passes over `events` in `batch`-sized calls."""
    rates = []
    p: Predictor = predictor_factory()
    if warm:
        p.predict(events)
    for _ in range(reps):
        if not warm:
            p = predictor_factory()
        t0 = time.perf_counter()
        for i in range(0, len(events), batch):
            p.predict(events[i:i + batch])
        rates.append(len(events) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sku", default="h100")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args()

    def factory() -> Predictor:
        return load_predictor(args.sku)

    events = workload(args.events)
    unique = len({(e.family, e.op, e.dtype, e.feats) for e in events})
    print(f"predictor {args.sku}: {len(events)} launches, {unique} distinct keys, "
          f"median of {args.reps} repeats")
    for batch in (1, 64, 4096):
        print(f"  warm cache, batches of {batch:>4}: "
              f"{rate(factory, events, batch, args.reps, True):>12,.0f} predictions/s")
    print(f"  cold cache, batches of 4096: "
          f"{rate(factory, events, 4096, max(1, args.reps // 2), False):>12,.0f} predictions/s")
    misses = {
        "GEMM (LightGBM)": [event(Family.GEMM, "aten::mm", "bf16", (m, 4096, 4096, 1))
                            for m in range(1, 20_001)],
        "decode attention (analytical)": [
            event(Family.ATTENTION, "vllm::unified_attention", "bf16",
                  (64, 64, 64 * kv, kv, 64 * kv * kv, 16, 4, 128, 1))
            for kv in range(1, 20_001)],
    }
    for name, evs in misses.items():
        for batch in (64, 4096):
            print(f"  every launch a new key, {name}, batches of {batch:>4}: "
                  f"{rate(factory, evs, batch, 3, False):>12,.0f} predictions/s")
    p = factory()
    p.predict(events[:10_000])
    print(f"  sources over the first 10k launches: {dict(p.counts)}")


if __name__ == "__main__":
    main()
