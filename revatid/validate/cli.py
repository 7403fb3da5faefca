"""`revatictl validate`: the accuracy harness (real versus emulated, end to end).

    revatictl validate --self [--size small|full] [--repeats N] [--keep DIR] [--json FILE]
                              [--png FILE]
    revatictl validate --from DIR [--json FILE] [--png FILE]

--self (no GPU): run the workload (workload.py) for real on this CPU; profile this CPU's
kernels at the workload model's shapes with the project's profiler (one torch thread), build
the `host-cpu` bundle from that profile (in this machine's bundle folder,
`revati.predictors.skus.user_bundles_dir()`), run the workload under Revati on a virtual
`host-cpu` device, and compare per-request metrics. The profile's passes are taken between
the real runs (cmd_self), so that both see the same spells of a host whose speed drifts.

--from DIR: a folder written on a GPU machine by `python -m revati.revatid.validate.gpu_run`
(real.json, profile/, provenance.json): build the SKU's bundle from that profile (plus the
Vidur data for SKUs Vidur measured), run the same workload under Revati on that SKU, and
compare with the committed real results.

Output: a text table on stdout, the JSON (per metric `real`, `emulated`, `error_pct`, the
speed-up and provenance) and a PNG of the latency CDFs. Exit status 1 when a checked metric is
off by more than its bound (--self: p50 TTFT, TPOT and E2E within 10%; --from: every p50
within 5% and every p99 within 10%).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from revati.revatid.validate import host_speed, kernels, metrics, plot, workload

SELF_BOUNDS = {"ttft_p50_ms": 10.0, "tpot_p50_ms": 10.0, "e2e_p50_ms": 10.0}
GPU_BOUNDS = {f"{m}_p{p}_ms": b for m in metrics.LATENCIES for p, b in ((50, 5.0), (99, 10.0))}
THREADS = 1  # torch threads in the real CPU run and in the CPU profile
# glibc's malloc for the real CPU run and the CPU profile: keep freed memory, as a GPU's caching
# allocator does. By default it unmaps large frees and trims the heap, and the next step faults
# the pages back in: 2,000-2,700 page faults a 128-token prefill of the self-check's model on a
# Xeon VM (the step 31-35 ms against 28-29 ms without; its silu 284 us against 129 us), a cost
# of the host's allocator that no kernel profile sees and a virtual device does not have.
KEEP_FREED_MEMORY = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296"


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without a Revati session (the real runs and the profiler
    must run on real time), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("REVATI_SESSION", "REVATI_HOOKS", "REVATI_SOCKET")}
    env.update(extra)
    return env


def _cpu_env() -> dict[str, str]:
    """The environment of the real CPU run and of the CPU profile: their thread count, and
    glibc's malloc keeping freed memory (KEEP_FREED_MEMORY)."""
    tunables = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), KEEP_FREED_MEMORY)))
    return _clean_env(OMP_NUM_THREADS=str(THREADS), MKL_NUM_THREADS=str(THREADS),
                      GLIBC_TUNABLES=tunables)


def _say(msg: str) -> None:
    print(f"validate: {msg}", file=sys.stderr, flush=True)


# -- profile and bundle

PROFILE_PASSES = 5  # the CPU profile's passes over its grid (its times pooled, per shape)


def profile_cmd(out: Path, passes: int = PROFILE_PASSES,
                merge: tuple[Path, ...] = ()) -> list[str]:
    """The CPU profile of the self-check: the shapes its model runs (`--model`: every linear
    layer at every batch size to the serving's batch token limit, the masked packed attention
    of `paged|sdpa`, the memory ops at its widths), as the real-GPU check profiles its model.
    The generic grid has no masked attention: its causal rows, fitted with half the score
    pairs of a masked one, made a 128-token prefill's attention 630 us a layer against 270 us
    measured (on a CPU the flash kernel costs as much causal as masked). The GEMMs' weight
    copies span the model's weights (the profiler's default with --model), so that they come
    from the cache where the model fits in it (Llama-tiny's 66 MiB in the 260-300 MiB L3 of
    the hosts CI runs on; timed from memory instead, a decode step came out 60% long).
    `merge`: pool these earlier passes instead of timing (and time the slowdown after idle,
    which the passes leave out)."""
    return [sys.executable, "-m", "revati.predictors.profiler", "--device", "cpu",
            "--model", workload.MODEL, "--max-tokens", str(workload.Serving().max_batch_tokens),
            *([a for d in merge for a in ("--merge", str(d))] if merge
              else ["--passes", str(passes), "--wake-rounds", "0"]), "--out", str(out)]


def _quiet(cmd: list[str], env: dict[str, str]) -> None:
    """Run `cmd`, showing its output only when it fails."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"validate: {' '.join(cmd[:4])} ... failed ({done.returncode})")


def profile_passes(out: Path, passes: int) -> Path:
    """`passes` passes of the CPU profile into `out` (one torch thread, as the real run)."""
    _say(f"profiling this CPU ({workload.MODEL}'s shapes, {THREADS} thread, {passes} "
         f"pass{'es' if passes > 1 else ''})")
    _quiet(profile_cmd(out, passes), _cpu_env())
    return out


def host_cpu_bundle(work: Path, passes: list[Path]) -> Path:
    """Pool the profile `passes` into one profile in `work` (timing the slowdown after idle
    there) and build the host-cpu bundle from it in this machine's bundle folder (where
    `revatictl run --gpu host-cpu` finds it). Returns the bundle folder."""
    from revati.predictors import skus

    prof = work / "profile"
    _quiet(profile_cmd(prof, merge=tuple(passes)), _cpu_env())
    root = skus.user_bundles_dir()
    _say(f"building the host-cpu bundle -> {root / 'host-cpu'}")
    _quiet([sys.executable, "-m", "revati.predictors", "train", "--sku", "host-cpu",
            "--profile", str(prof), "--out", str(root)], _clean_env())
    return root / "host-cpu"


def _write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


# -- the runs

def run_real(size: str, out: Path) -> float:
    """The workload for real on this CPU; returns its wall time (s)."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "revati.revatid.validate.workload", "--device", "cpu",
                    "--size", size, "--threads", str(THREADS), "--out", str(out)], check=True,
                   env=_cpu_env())
    return time.monotonic() - t0


def run_emulated(sku: str, size: str, dtype: str, out: Path, bundle: Path | None = None,
                 model: list[str] | None = None, host_costs: dict[str, float] | None = None,
                 ) -> tuple[float, dict[str, Any]]:
    """The workload under Revati on a virtual `sku` (a private revatid); returns the wall time
    (s) and the session summary. `model`: the workload's model options (--model, --layers);
    `host_costs`: revatictl run's --host-costs."""
    from revati.revatid.ctl import daemon_for_run

    with tempfile.TemporaryDirectory(prefix="revati-validate-") as tmp:
        summary = Path(tmp) / "session.json"
        env = _clean_env()
        with daemon_for_run(os.path.join(tmp, "private.sock")) as sock:
            cmd = [sys.executable, "-m", "revati.revatid.ctl", "--socket", sock, "run",
                   "--gpu", sku, "--json", str(summary),
                   *(["--bundle", str(bundle)] if bundle is not None else []),
                   *(["--host-costs", _write_json(Path(tmp) / "host_costs.json", host_costs)]
                     if host_costs else []), "--",
                   sys.executable, "-m", "revati.revatid.validate.workload", "--device", "cuda",
                   "--size", size, "--dtype", dtype, *(model or []), "--out", str(out)]
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, env=env)
            wall = time.monotonic() - t0
        return wall, json.loads(summary.read_text())


def report(real: dict[str, Any], emulated: dict[str, Any], runs: tuple[list[Any], list[Any]],
           real_wall: float | None, emu_wall: float, sessions: list[dict[str, Any]],
           bounds: dict[str, float], extra: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The comparison of each side's runs, `runs` (its median run, with the runs' spread
    where a side ran more than once), checked against `bounds`; `real` and `emulated` are
    each side's runs pooled (the steps, spans, provenance), `sessions` the emulated runs'
    session summaries (their counters summed)."""
    table = metrics.compare(*runs)
    failures = metrics.check(table, bounds)
    c = _summed_counters(sessions)
    speed = {"real_wall_s": real_wall, "emulated_wall_s": emu_wall,
             "speedup": real_wall / emu_wall if real_wall else None,
             "real_span_s": real["span_s"], "emulated_span_s": emulated["span_s"],
             "session_virtual_s": c["virtual_s"], "session_wall_s": c["wall_s"],
             "session_speedup": c["virtual_s"] / c["wall_s"] if c["wall_s"] else None,
             "kernel_launches": c["launches"], "predicted_by": c["predicted_by"],
             "op_entry_s": c["op_entry_s"],
             "op_credit_ns": [r["provenance"].get("op_credit_ns") for r in runs[1]]}
    steps = {name: {"steps": len(r.get("steps", [])),
                    "query_tokens": sum(s[2] for s in r.get("steps", [])),
                    **metrics.step_cycles(r)}
             for name, r in (("real", real), ("emulated", emulated))}
    out = {"metrics": table, "bounds_pct": bounds, "within_bounds": not failures,
           "failures": failures, "speed": speed, "steps": steps, **extra,
           "real": {k: real[k] for k in ("device", "size", "dtype", "serving", "provenance")},
           "emulated": {k: emulated[k] for k in ("device", "size", "dtype", "provenance")}}
    return out, failures


def _summed_counters(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """The emulated runs' session counters, summed: virtual and wall seconds, launches, the
    op entries' credited seconds, and launches by predictor."""
    out: dict[str, Any] = {"virtual_s": 0.0, "wall_s": 0.0, "launches": 0, "op_entry_s": 0.0,
                           "predicted_by": {}}
    for session in sessions:
        c = session.get("counters", {})
        for key in ("virtual_s", "wall_s", "launches", "op_entry_s"):
            out[key] += c.get(key) or 0
        for name, n in (c.get("predicted_by") or {}).items():
            out["predicted_by"][name] = out["predicted_by"].get(name, 0) + n
    return out


def _steps_line(name: str, steps: dict[str, Any]) -> str:
    line = f"{name} {steps['steps']}"
    if "cycle_p50_ms" in steps:
        line += (f" (cycle p50 {steps['cycle_p50_ms']:.1f} ms, p90 {steps['cycle_p90_ms']:.1f};"
                 f" {steps['stalls']} stalls, {steps['stalled_s']:.2f} s)")
    return line


def _finish(out: dict[str, Any], failures: list[str], real: dict[str, Any],
            emulated: dict[str, Any], args: argparse.Namespace, title: str) -> int:
    print(metrics.table(out["metrics"]))
    s = out["speed"]
    if s["speedup"]:
        print(f"wall time: real {s['real_wall_s']:.1f} s, emulated {s['emulated_wall_s']:.1f} s "
              f"(speed-up {s['speedup']:.2f}x)")
    else:
        print(f"wall time: emulated {s['emulated_wall_s']:.1f} s")
    print("forward steps: " + ", ".join(_steps_line(name, out["steps"][name])
                                        for name in ("real", "emulated")))
    if "host_speed" in out:
        h = out["host_speed"]
        print(f"host speed: the probe ({h['probe']}) took {h['real_ms']:.3f} ms around the real"
              f" runs, {h['profile_ms']:.3f} ms around the profiles ({h['drift_pct']:+.1f}%)"
              + (f"; {len(h['retried'])} steps taken again after a slow spell"
                 if h.get("retried") else ""))
    if args.json:
        _mkdir(Path(args.json).parent).joinpath(Path(args.json).name).write_text(
            json.dumps(out, indent=1) + "\n")
    png = Path(args.png) if args.png else (Path(args.json).with_suffix(".png") if args.json
                                           else None)
    if png is not None:
        plot.cdf_png(metrics.samples(real), metrics.samples(emulated), png, title)
        print(f"plot: {png}")
    for f in failures:
        print(f"out of bounds: {f}", file=sys.stderr)
    print("PASS" if not failures else "FAIL", "(bounds: " + ", ".join(
        f"{k} {v:.0f}%" for k, v in out["bounds_pct"].items()) + ")")
    return 0 if not failures else 1


def cmd_self(args: argparse.Namespace) -> int:
    """The real runs and the CPU profile's passes alternate, then the emulated runs follow
    on the bundle of those passes, each step taken again when the host was in a slow spell
    around it (host_speed.SteadyHost). The host's speed drifts by tens of percent within
    minutes (docs/validation.md): a profile taken apart from the real runs, even just before
    each emulated run, put the host's state at the profile's moments against its state at
    the runs' (TPOT +9% with the host 13% faster around the real runs than around the
    profiles). Spread between the real runs, the profile's passes sample the same host as
    the runs, and the pooled profile is the device the real runs ran on."""
    reals, emus, real_walls, emu_walls, sessions = [], [], [], [], []
    around_real: list[float] = []
    around_profile: list[float] = []
    per_slot = math.ceil(PROFILE_PASSES / args.repeats)
    host = host_speed.SteadyHost()
    with tempfile.TemporaryDirectory(prefix="revati-validate-") as tmp:
        passes = []
        for i in range(args.repeats):
            real_path = Path(tmp) / f"real{i}.json"
            # alternate the order, so that a drift in the host's speed biases neither
            for step in (("profile", "real") if i % 2 == 0 else ("real", "profile")):
                if step == "real":
                    _say(f"real run on this CPU ({args.size}, {i + 1}/{args.repeats})")
                    wall, probes = host.run(partial(run_real, args.size, real_path),
                                            f"real run {i + 1}")
                    real_walls.append(wall)
                    around_real += probes
                else:
                    pass_dir, probes = host.run(partial(
                        profile_passes, Path(tmp) / f"pass{i}", per_slot), f"profile {i + 1}")
                    passes.append(pass_dir)
                    around_profile += probes
            reals.append(json.loads(real_path.read_text()))
        bundle = host_cpu_bundle(Path(tmp), passes)
        for i in range(args.repeats):
            emu_path = Path(tmp) / f"emulated{i}.json"
            _say(f"emulated run on a virtual host-cpu ({i + 1}/{args.repeats})")
            (wall, session), _ = host.run(partial(
                run_emulated, "host-cpu", args.size, "fp32", emu_path), f"emulated run {i + 1}")
            emu_walls.append(wall)
            sessions.append(session)
            emus.append(json.loads(emu_path.read_text()))
        if args.keep:
            _keep(Path(tmp), Path(args.keep), args.repeats, sessions)
    extra = {"mode": "self", "sku": "host-cpu", "bundle": str(bundle), "repeats": args.repeats,
             "profile": profile_cmd(Path("DIR"), per_slot)[1:],
             "profile_passes": per_slot * args.repeats,
             "host_speed": {**host_speed.drift(around_real, around_profile),
                            "retried": host.retried}}
    real, emulated = metrics.pooled(reals), metrics.pooled(emus)
    out, failures = report(real, emulated, (reals, emus), sum(real_walls) / len(real_walls),
                           sum(emu_walls) / len(emu_walls), sessions, SELF_BOUNDS, extra)
    return _finish(out, failures, real, emulated, args, f"SELF EMULATION {args.size}")


def _keep(tmp: Path, dest: Path, repeats: int, sessions: list[dict[str, Any]]) -> None:
    """--keep: each run's own result (its requests' token times, its forward steps), each
    emulated run's session summary (its counters, its processes' time in Revati) and the
    pooled profile, out of the check's temporary folder, to look into step by step."""
    _mkdir(dest)
    for i in range(repeats):
        for side in ("real", "emulated"):
            shutil.copyfile(tmp / f"{side}{i}.json", dest / f"{side}-{i + 1}.json")
        _write_json(dest / f"emulated-{i + 1}.session.json", sessions[i])
    shutil.copytree(tmp / "profile", dest / "profile", dirs_exist_ok=True)
    _say(f"each run's result and the profile kept in {dest}")


RUN_KEYS = ("device", "size", "dtype", "model", "layers", "seed", "serving")  # a repeat's


def real_runs(src: Path) -> list[Path]:
    """The real runs of a GPU results folder: real.json, then real-2.json, real-3.json, ...
    (gpu_run --repeats N), in order; compared by their median run (metrics.typical)."""
    more = {int(p.stem[5:]): p for p in src.glob("real-*.json") if p.stem[5:].isdigit()}
    return [src / "real.json", *(more[i] for i in sorted(more))]


def cmd_from(args: argparse.Namespace) -> int:
    src = Path(args.from_dir)
    missing = [name for name in ("real.json", "provenance.json", "profile")
               if not (src / name).exists()]
    if missing:
        raise SystemExit(f"validate: {src} is not a GPU results folder (no {', '.join(missing)}"
                         "): write one with scripts/gpu_validate.sh on a GPU machine")
    runs = real_runs(src)
    results = [json.loads(p.read_text()) for p in runs]
    for p, r in zip(runs[1:], results[1:], strict=True):
        differs = [k for k in RUN_KEYS if r.get(k) != results[0].get(k)]
        if differs:
            raise SystemExit(f"validate: {p} is not a repeat of {runs[0]} (its "
                             f"{', '.join(differs)} differ): one workload per folder")
    real = metrics.pooled(results)
    prov = json.loads((src / "provenance.json").read_text())
    sku = prov["sku"]
    with tempfile.TemporaryDirectory(prefix="revati-validate-") as tmp:
        root = Path(tmp) / "bundles"
        _say(f"building the {sku} bundle from {src / 'profile'}")
        subprocess.run([sys.executable, "-m", "revati.predictors", "train", "--sku", sku,
                        "--profile", str(src / "profile"), "--out", str(root)], check=True,
                       env=_clean_env(), stdout=sys.stderr)
        emu_path = Path(tmp) / "emulated.json"
        _say(f"emulated run on a virtual {sku}")
        model = ["--model", real.get("model", workload.MODEL)]
        if real.get("layers"):
            model += ["--layers", str(real["layers"])]
        costs = kernels.host_costs(src / "kernels.csv")
        if costs:
            top = sorted(costs.items(), key=lambda kv: -kv[1])[:3]
            _say(f"host time per launch of {len(costs)} ops, as the real run measured it ("
                 + ", ".join(f"{op} {s * 1e6:.0f} us" for op, s in top) + ", ...)")
        emu_wall, session = run_emulated(sku, real["size"], real["dtype"], emu_path,
                                         bundle=root / sku, model=model, host_costs=costs)
        emulated = json.loads(emu_path.read_text())
        by_kernel = kernels.check(src, root / sku, sku, real["dtype"]) if \
            (src / "kernels.csv").is_file() else {}
    if by_kernel:
        print("kernel by kernel (the real run's own kernel times against the predictions):")
        print(kernels.table(by_kernel))
    extra = {"mode": "from", "sku": sku, "source": str(src), "real_runs": len(runs),
             "gpu_provenance": prov, "host_costs_s": costs, "kernels": by_kernel}
    out, failures = report(real, emulated, (results, [emulated]), prov.get("workload_wall_s"),
                           emu_wall, [session], GPU_BOUNDS, extra)
    return _finish(out, failures, real, emulated, args, f"{sku} {real['size']}")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("validate", help="accuracy harness: the same workload real and emulated",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--self", action="store_true", dest="self_",
                      help="self-emulation on this CPU (no GPU needed)")
    mode.add_argument("--from", dest="from_dir", metavar="DIR",
                      help="real results and profile from a GPU machine (gpu_run)")
    p.add_argument("--size", choices=sorted(workload.SIZES), default="small")
    from revati.revatid.ctl import at_least

    # Three by default: on a shared host one run of a side in a few meets a slow spell, and a
    # lone run's p50s move 5-25% (docs/validation.md, items 12-13); a median of three does not.
    p.add_argument("--repeats", type=at_least(1), default=3,
                   help="--self: run each side this many times (the real runs between the "
                   "profile's passes) and compare each side's median run (default 3)")
    p.add_argument("--keep", metavar="DIR", help="--self: keep each run's own result "
                   "(real-1.json, ..., emulated-1.json, ...) and the pooled profile in DIR")
    p.add_argument("--json", help="write the comparison JSON here")
    p.add_argument("--png", help="write the CDF plot here (default: beside --json)")


def main(args: argparse.Namespace) -> int:
    return cmd_self(args) if args.self_ else cmd_from(args)
