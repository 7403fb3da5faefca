"""Revati's host cost of one CUDA-graph decode step, end to end through a real revatid session.

A batch-1 decode step of a Llama-3.1-8B-shaped model as vLLM runs it under Revati: one replay
of a captured graph (static GEMMs and norms of 32 layers) whose dynamic nodes launch each
layer's KV-cache write and attention with the step's context length (64 launches, as
adapters/vllm/attention.py does), then a host sync. Timed inside `revatictl run` on the
session's virtual H100 with its trained predictor:

  replay us       real time of `graph.replay()` (the participant's bookkeeping, frozen)
  sync us         real time of `torch.cuda.synchronize()`: the round trip to revatid, and
                  the wait for the GPU in virtual time (a timekeeper jump)
  client cpu us   the participant's CPU time per step
  revatid cpu us  the daemon's CPU time per step (predicting and queueing the launches,
                  the timekeeper's jump), and the part of it in the kernel (sys)

    python -m benchmarks.bench_replay [--steps N] [--runs N] [--layers N]

Prints the median over runs of each run's per-step medians (replay, sync) and means (CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from benchmarks._common import private_daemon
from revati.revatid.client import Client

REVATICTL = [sys.executable, "-m", "revati.revatid.ctl"]

IN_SESSION = r"""
import json, resource, statistics, sys
import torch
from revati.adapters import cuda
from revati.adapters.clock._vclock import real_monotonic_ns
from revati.adapters.cuda import graphs
from revati.predictors.launch import Family

layers, steps, runs, daemon_pid = map(int, sys.argv[1:5])
ctx = [512]  # the step's context length: the dynamic nodes read it, as vLLM's do


def node():
    kv = ctx[0]
    cuda.launch(Family.MEMORY, "vllm::reshape_and_cache_flash", "bf16", (8192, 2048))
    cuda.launch(Family.ATTENTION, "vllm::flash_attn_varlen", "bf16",
                (1, 1, kv, kv, kv * kv, 32, 8, 128, 1))


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def daemon_cpu_s():
    # the daemon's user and system CPU seconds
    with open(f"/proc/{daemon_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / 100, int(fields[12]) / 100  # utime, stime in clock ticks


graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    for _ in range(layers):
        cuda.launch(Family.MEMORY, "vllm::rms_norm", "bf16", (16384, 4096))
        cuda.launch(Family.GEMM, "aten::mm", "bf16", (1, 6144, 4096, 1))
        graphs.dynamic(node)
        cuda.launch(Family.GEMM, "aten::mm", "bf16", (1, 4096, 4096, 1))
        cuda.launch(Family.MEMORY, "vllm::rms_norm", "bf16", (16384, 4096))
        cuda.launch(Family.GEMM, "aten::mm", "bf16", (1, 28672, 4096, 1))
        cuda.launch(Family.GEMM, "aten::mm", "bf16", (1, 4096, 14336, 1))

for _ in range(50):  # warm-up: predictor loaded, caches filled
    graph.replay()
    torch.cuda.synchronize()
out = []
for _ in range(runs):
    replay, sync = [], []
    cpu0, daemon0, wall0 = cpu_s(), daemon_cpu_s(), real_monotonic_ns()
    for _ in range(steps):
        ctx[0] += 1
        t0 = real_monotonic_ns()
        graph.replay()
        t1 = real_monotonic_ns()
        torch.cuda.synchronize()
        sync.append(real_monotonic_ns() - t1)
        replay.append(t1 - t0)
    out.append({"replay_us": statistics.median(replay) / 1e3,
                "sync_us": statistics.median(sync) / 1e3,
                "wall_us": (real_monotonic_ns() - wall0) / 1e3 / steps,
                "client_cpu_us": (cpu_s() - cpu0) * 1e6 / steps,
                "revatid_cpu_us": (sum(daemon_cpu_s()) - sum(daemon0)) * 1e6 / steps,
                "revatid_sys_us": (daemon_cpu_s()[1] - daemon0[1]) * 1e6 / steps})
print(json.dumps(out))
"""

COLUMNS = ("replay_us", "sync_us", "wall_us", "client_cpu_us", "revatid_cpu_us",
           "revatid_sys_us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000, help="decode steps per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--layers", type=int, default=32, help="two dynamic launches per layer")
    args = ap.parse_args()
    with private_daemon() as sock:
        with Client(sock) as c:
            daemon_pid = c.request("ping")["pid"]
        out = subprocess.run(
            [*REVATICTL, "--socket", sock, "run", "--gpu", "h100", "--", sys.executable, "-c",
             IN_SESSION, str(args.layers), str(args.steps), str(args.runs), str(daemon_pid)],
            capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
        runs = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"graph replay with {2 * args.layers} dynamic launches + sync, {args.steps} steps x "
          f"{args.runs} runs (per step; median over runs, per-run values in brackets)")
    for col in COLUMNS:
        values = [r[col] for r in runs]
        print(f"  {col:16s} {statistics.median(values):9.1f}   "
              f"[{', '.join(f'{v:.1f}' for v in values)}]")


if __name__ == "__main__":
    main()
