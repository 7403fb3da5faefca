"""The real-GPU side of the accuracy harness, for a lent GPU machine, in one lease:

    python -m revati.revatid.validate.gpu_run --out DIR [--size full] [--dtype bf16]
        [--model Llama-3.1-405B --layers 10] [--no-kernel-table] [--repeats N]

1. runs the validation workload (workload.py) for real on `cuda:0` -> DIR/real.json;
2. profiles the GPU's kernels with the project's profiler, on the shapes of the workload's
   model (`--model`, batches up to the serving's token budget) -> DIR/profile/ (CSV +
   spec.json);
3. runs the workload's small size once more under torch.profiler -> DIR/kernels.csv (every
   op's kernel time in the real run, to compare with the predictions op by op);
4. writes DIR/provenance.json: the SKU (specs.json key of the device's name), device name,
   driver, torch / CUDA / transformers versions, git commit, host, dates, the commands, wall
   times, and a host CPU benchmark (`host_bench`: the host's own speed matters wherever a
   step is bound by Python rather than by the GPU).

Bring DIR back (small files) and compare on any machine, no GPU needed:
`revatictl validate --from DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from revati.revatid.validate import workload


def _git_commit() -> str | None:
    if os.environ.get("REVATI_GIT_COMMIT"):  # a copy of the tree without .git
        return os.environ["REVATI_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except OSError:
        return None


def _cpu() -> str:
    from revati.predictors.profiler import _cpu_name

    return f"{_cpu_name()} x{os.cpu_count()}"


def _sku(name: str) -> str:
    from revati.predictors.skus import UnknownSku, canonical

    for candidate in (name, name.replace("NVIDIA ", "")):
        try:
            return canonical(candidate)
        except UnknownSku:
            pass
    low = name.lower()
    for key in ("h200", "h100", "a100", "l40s", "a40", "b200"):
        if key in low:
            return key
    return low.replace(" ", "-")


def host_bench() -> dict[str, float]:
    """This host's single-thread speed on the work a serving loop's host does: interpreted
    Python and small eager torch ops on the CPU (medians of five, per second)."""
    import torch

    def python_loop() -> None:
        d: dict[int, int] = {}
        for i in range(200_000):
            d[i & 1023] = d.get(i & 1023, 0) + i

    a, b = torch.ones(8), torch.ones(8)

    def torch_ops() -> None:
        for _ in range(5_000):
            torch.add(a, b)

    out = {}
    for name, fn, work in (("python_loop_iters_per_s", python_loop, 200_000),
                           ("torch_cpu_ops_per_s", torch_ops, 5_000)):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = work / sorted(times)[2]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m revati.revatid.validate.gpu_run",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", choices=sorted(workload.SIZES), default="full")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--model", default=workload.GPU_MODEL)
    ap.add_argument("--layers", type=int, default=workload.GPU_LAYERS)
    ap.add_argument("--no-kernel-table", action="store_true")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the workload this many times (real.json, real-2.json, ...)")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_run: no CUDA device", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    model = ["--model", args.model, *(["--layers", str(args.layers)] if args.layers else [])]
    run_cmd = [sys.executable, "-m", "revati.revatid.validate.workload", "--device", "cuda",
               "--size", args.size, "--dtype", args.dtype, "--threads", "0", *model,
               "--out", str(args.out / "real.json")]
    tokens = workload.Serving().max_batch_tokens
    prof_cmd = [sys.executable, "-m", "revati.predictors.profiler", "--device", "cuda",
                "--model", args.model, "--max-tokens", str(tokens),
                "--out", str(args.out / "profile")]
    table_cmd = [*run_cmd[:run_cmd.index("--size")], "--size", "small", "--dtype", args.dtype,
                 "--threads", "0", *model, "--out", os.devnull,
                 "--kernel-table", str(args.out / "kernels.csv")]
    steps = [("workload", run_cmd), ("profile", prof_cmd)]
    if not args.no_kernel_table:
        steps.append(("kernel_table", table_cmd))
    for i in range(2, args.repeats + 1):  # run-to-run spread of the real side
        steps.append((f"workload-{i}", [*run_cmd[:-1], str(args.out / f"real-{i}.json")]))
    bench = host_bench()
    walls, codes = {}, {}
    for step, cmd in steps:  # each step on its own: a failed one keeps the others' results
        t0 = time.monotonic()
        codes[step] = subprocess.run(cmd).returncode
        walls[step] = time.monotonic() - t0
        print(f"gpu_run: {step} exited {codes[step]} after {walls[step]:.0f} s",
              file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True,
                                timeout=30).stdout.split("\n")[0].strip()
    except OSError:
        driver = ""
    import transformers

    prov = {"sku": _sku(name), "device_name": name, "driver": driver,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "host": platform.node(), "git_commit": _git_commit(), "started": started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "workload_wall_s": walls.get("workload"), "wall_s": walls, "exit_codes": codes,
            "host_bench": bench, "cpu": _cpu(), "commands": [" ".join(c) for _, c in steps]}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    print(f"gpu_run: {name} ({prov['sku']}): real.json, profile/, provenance.json in "
          f"{args.out}", file=sys.stderr)
    return 0 if not any(codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
