"""Per-request latency metrics of a workload result, and the real-versus-emulated comparison.

TTFT: first token time - arrival. TPOT: (last token - first token) / (tokens - 1), requests
with two or more tokens. ITL: every gap between consecutive tokens of a request. E2E: finish -
arrival. Throughput: output tokens / span from the first arrival to the last finish.
Percentiles are numpy's (linear interpolation). Times in the JSON are milliseconds. A side that
ran several times is compared by its median run (typical()).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2e")
STALL_FACTOR = 5  # a step this many times its peers' median is a stall (a first use, say)


def samples(result: dict[str, Any]) -> dict[str, list[float]]:
    """Latency samples in seconds, by metric."""
    out: dict[str, list[float]] = {m: [] for m in LATENCIES}
    for r in result["requests"]:
        t = r["token_times"]
        out["ttft"].append(t[0] - r["arrival"])
        out["e2e"].append(r["finish"] - r["arrival"])
        if len(t) > 1:
            out["tpot"].append((t[-1] - t[0]) / (len(t) - 1))
            out["itl"].extend(b - a for a, b in itertools.pairwise(t))
    return out


def summary(result: dict[str, Any]) -> dict[str, float]:
    """Flat metrics: ttft_p50_ms ... e2e_p99_ms, throughput_tok_s, throughput_req_s."""
    out: dict[str, float] = {}
    for metric, xs in samples(result).items():
        arr = np.asarray(xs) * 1e3
        for p in PERCENTILES:
            out[f"{metric}_p{p}_ms"] = float(np.percentile(arr, p)) if arr.size else float("nan")
    reqs = result["requests"]
    runs = result.get("runs", 1)
    # a pooled result holds `runs` runs, each starting at 0: the mean span of one run
    span = (max(r["finish"] for r in reqs) - min(r["arrival"] for r in reqs)) if runs == 1 \
        else result["span_s"]
    out["throughput_tok_s"] = sum(len(r["token_times"]) for r in reqs) / runs / span
    out["throughput_req_s"] = len(reqs) / runs / span
    return out


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one workload as one result (the plot's CDFs, the steps): their
    requests together, steps together, the mean span; the first run's other fields."""
    if len(results) == 1:
        return results[0]
    out = dict(results[0])
    out["requests"] = [r for res in results for r in res["requests"]]
    out["steps"] = [s for res in results for s in res.get("steps", [])]
    out["span_s"] = sum(res["span_s"] for res in results) / len(results)
    out["runs"] = len(results)
    return out


def step_cycles(result: dict[str, Any]) -> dict[str, float]:
    """The engine's pace, from its forward steps ([start, end, query tokens, ...]): a cycle is
    from one step's start to the next one's (host and device work of a step and the scheduling
    between steps; within a run: pooled runs restart at 0), its p50 and p90 in ms. Stalls:
    steps whose own span is over STALL_FACTOR x the median span of their peers (steps of as
    many query tokens, to the power of two; at least three): a first use of a kernel, say,
    where a long prefill or an idle engine between requests is none. Their count and summed
    seconds."""
    steps = result.get("steps", [])
    starts = [s[0] for s in steps]
    cycles = np.asarray([b - a for a, b in itertools.pairwise(starts) if b > a]) * 1e3
    if not cycles.size:
        return {}
    peers: dict[int, list[float]] = {}
    for s in steps:
        peers.setdefault(int(s[2]).bit_length(), []).append(s[1] - s[0])
    stalled = [span for group in peers.values() if len(group) >= 3
               for span in group if span > STALL_FACTOR * float(np.median(group))]
    return {"cycle_p50_ms": float(np.percentile(cycles, 50)),
            "cycle_p90_ms": float(np.percentile(cycles, 90)),
            "stalls": len(stalled), "stalled_s": float(sum(stalled))}


def typical(results: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """One side's runs of the same workload: per metric the median of each run's own value
    (a run's p50 TTFT, say), and how far the runs differ among themselves, (max - min) /
    median in percent. The median run, not the runs' requests pooled: on a shared VM one run
    in a few is caught in a long slow spell of the host (a run's p50s 20-75% over the
    others'), which a pool of requests mixes into every percentile and the median of three
    runs leaves out. The spread is the noise floor an error is read against (a few percent
    to 25% on a p50 on that VM)."""
    per_run = [summary(r) for r in results]
    value, spread = {}, {}
    for k in per_run[0]:
        xs = [s[k] for s in per_run]
        mid = float(np.median(xs))
        value[k] = mid
        spread[k] = (max(xs) - min(xs)) / mid * 100 if mid else float("nan")
    return value, spread


def compare(real: list[dict[str, Any]], emulated: list[dict[str, Any]],
            ) -> dict[str, dict[str, float]]:
    """Per metric: `real` and `emulated`, each side's median run (typical()), error_pct =
    (emulated - real) / real * 100, and `<side>_spread_pct` for a side that ran more than
    once."""
    (a, a_spread), (b, b_spread) = typical(real), typical(emulated)
    out = {}
    for k in a:
        out[k] = {"real": a[k], "emulated": b[k],
                  "error_pct": (b[k] - a[k]) / a[k] * 100 if a[k] else float("nan")}
        for side, runs, spread in (("real", real, a_spread), ("emulated", emulated, b_spread)):
            if len(runs) > 1:
                out[k][f"{side}_spread_pct"] = spread[k]
    return out


def table(metrics: dict[str, dict[str, float]]) -> str:
    """The comparison as text; with the run-to-run spread of each side that has one."""
    sides = [s for s in ("real", "emulated")
             if all(f"{s}_spread_pct" in v for v in metrics.values())]
    head = "".join(f"{s[:4] + ' spread %':>14}" for s in sides)
    lines = [f"{'metric':<20}{'real':>12}{'emulated':>12}{'error %':>10}{head}"]
    for k, v in metrics.items():
        cols = "".join(f"{v[f'{s}_spread_pct']:>14.1f}" for s in sides)
        lines.append(f"{k:<20}{v['real']:>12.3f}{v['emulated']:>12.3f}{v['error_pct']:>+10.1f}"
                     f"{cols}")
    return "\n".join(lines)


def check(metrics: dict[str, dict[str, float]], bounds: dict[str, float]) -> list[str]:
    """The metrics whose |error_pct| passes their bound, as messages (empty: all within)."""
    return [f"{k}: real {metrics[k]['real']:.3f} emulated {metrics[k]['emulated']:.3f} "
            f"({metrics[k]['error_pct']:+.1f}%, bound {bound:.0f}%"
            + (f"; the real runs spread {metrics[k]['real_spread_pct']:.0f}%"
               if "real_spread_pct" in metrics[k] else "") + ")"
            for k, bound in bounds.items() if not abs(metrics[k]["error_pct"]) <= bound]
