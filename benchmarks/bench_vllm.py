"""vLLM on a virtual H100: speed-up (virtual / wall) of `vllm serve` + `vllm bench serve`
(Llama-3.1-8B, random 512 in / 128 out) at several request rates, and where the host's time
went per decode step while the benchmark ran.

    .venv-vllm/bin/python -m benchmarks.bench_vllm [--rates 1 4 16] [--num-prompts 60]
        [--cpu-dilation 1.0]

Prints, per rate: the benchmark phase's virtual and wall seconds and their ratio, the whole
session's ratio (start-up included) and TPOT; then, per decode step of the benchmark phase
(graph replays in the session trace), the CPU milliseconds of each process (the engine core,
the API server, the benchmark client, revatid), the real milliseconds each served process
spent inside Revati's own code (its held freezes: CPU, and the waits for revatid's replies
inside them), and the session's frozen milliseconds (any process inside Revati, or all of them
waiting for a jump). Last, `ceiling`: the speed-up the host could give at most if Revati cost
nothing in the served processes: virtual time over the served processes' own CPU time (CPU
less time inside Revati) spread over all of this host's CPUs. An upper bound: the engine's
step is a chain of its own work that no spare core shortens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._common import private_daemon


def run(sock: str, rate: float, n: int, dilation: float, tmp: Path) -> dict:
    out, trace = tmp / f"demo-{rate}.json", tmp / f"trace-{rate}.json"
    env = {**os.environ, "REVATI_VLLM_PYTHON": sys.executable}
    proc = subprocess.run(
        [sys.executable, "-m", "revati.revatid.ctl", "--socket", sock, "demo",
         "--num-prompts", str(n), "--request-rate", str(rate), "--cpu-dilation", str(dilation),
         "--json", str(out), "--trace", str(trace)],
        capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    result = json.loads(out.read_text())
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    v0, v1 = result["host_use"]["virtual_window_s"]
    result["decode_steps"] = sum(1 for e in events if e.get("name") == "cuda_graph"
                                 and v0 <= e["ts"] / 1e6 <= v1)
    return result


ROLES = (("engine core", "VLLM::EngineCor"),  # /proc comm: 15 characters
         ("API server", "server"), ("bench client", "benchmark client"), ("revatid", "revatid"))
SERVED = ROLES[:3]


def ceiling(use: dict, virtual_s: float) -> float:
    """Virtual seconds over the served processes' own CPU seconds per host CPU."""
    own = sum(max(0.0, use["cpu_s"].get(key, 0.0) - use["revati_s"].get(key, 0.0))
              for _, key in SERVED)
    return virtual_s / (own / len(os.sched_getaffinity(0))) if own else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    ap.add_argument("--num-prompts", type=int, default=60)
    ap.add_argument("--cpu-dilation", type=float, default=1.0)
    args = ap.parse_args()
    print(f"{'req/s':>6} {'bench virt s':>12} {'bench wall s':>12} {'speed-up':>9} "
          f"{'session':>8} {'TPOT p50 ms':>11} {'steps':>6} | host ms per decode step, CPU: "
          + " ".join(f"{name:>12}" for name, _ in ROLES) + " | inside Revati: "
          + " ".join(f"{name:>12}" for name, _ in SERVED) + f" {'frozen':>8} {'ceiling':>8}")
    with private_daemon() as sock, tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates:
            r = run(sock, rate, args.num_prompts, args.cpu_dilation, Path(tmp))
            use, steps = r["host_use"], max(r["decode_steps"], 1)
            cpu = [use["cpu_s"].get(key, 0.0) * 1e3 / steps for _, key in ROLES]
            inside = [use["revati_s"].get(key, 0.0) * 1e3 / steps for _, key in SERVED]
            v0, v1 = use["virtual_window_s"]
            print(f"{rate:6.1f} {r['bench_virtual_s']:12.2f} {r['bench_wall_s']:12.2f} "
                  f"{r['bench_speedup']:9.2f} {r['speedup']:8.2f} {r['median_tpot_ms']:11.2f} "
                  f"{r['decode_steps']:6d} | {'':29}" + " ".join(f"{ms:12.2f}" for ms in cpu)
                  + f" | {'':15}" + " ".join(f"{ms:12.2f}" for ms in inside)
                  + f" {use['frozen_s'] * 1e3 / steps:8.2f} {ceiling(use, v1 - v0):7.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
