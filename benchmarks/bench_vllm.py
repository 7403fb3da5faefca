"""vLLM on a virtual H100: speed-up (virtual / wall) of `vllm serve` + `vllm bench serve`
(Llama-3.1-8B, random 512 in / 128 out) at several request rates, and Revati's own CPU time
per decode step (time the clock was frozen for Revati's bookkeeping, per graph replay).

    .venv-vllm/bin/python -m benchmarks.bench_vllm [--rates 1 4 16] [--num-prompts 60]
        [--cpu-dilation 1.0]

Prints one row per rate: the benchmark phase's virtual seconds, wall seconds and their ratio,
the whole session's ratio (start-up included), and frozen ms per decode step (* the
session's frozen time, start-up included, over its decode steps: an upper bound).
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
    result["decode_steps"] = sum(1 for e in events if e.get("name") == "cuda_graph")
    summary = [line for line in proc.stderr.splitlines() if "frozen" in line]
    result["frozen_s"] = float(summary[-1].split()[1]) if summary else float("nan")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    ap.add_argument("--num-prompts", type=int, default=60)
    ap.add_argument("--cpu-dilation", type=float, default=1.0)
    args = ap.parse_args()
    print(f"{'req/s':>6} {'bench virt s':>12} {'bench wall s':>12} {'speed-up':>9} "
          f"{'session':>8} {'TPOT p50 ms':>11} {'frozen ms/step*':>15}")
    with private_daemon() as sock, tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates:
            r = run(sock, rate, args.num_prompts, args.cpu_dilation, Path(tmp))
            per_step = r["frozen_s"] * 1e3 / max(r["decode_steps"], 1)
            print(f"{rate:6.1f} {r['bench_virtual_s']:12.2f} {r['bench_wall_s']:12.2f} "
                  f"{r['bench_speedup']:9.2f} {r['speedup']:8.2f} {r['median_tpot_ms']:11.2f} "
                  f"{per_step:15.2f}", flush=True)


if __name__ == "__main__":
    main()
