"""The real-GPU side of the accuracy harness, for a lent GPU machine, in one lease:

    python -m revati.revatid.validate.gpu_run --out DIR [--size full] [--dtype bf16]
        [--full-profile]

1. runs the validation workload (workload.py) for real on `cuda:0` -> DIR/real.json;
2. profiles the GPU's kernels with the project's profiler (`--quick` grid unless
   --full-profile) -> DIR/profile/ (CSV + spec.json);
3. writes DIR/provenance.json: the SKU (specs.json key of the device's name), device name,
   driver, torch / CUDA / transformers versions, git commit, host, dates, the commands.

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
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except OSError:
        return None


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m revati.revatid.validate.gpu_run",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", choices=sorted(workload.SIZES), default="full")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--full-profile", action="store_true")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_run: no CUDA device", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVATI_SESSION")}
    run_cmd = [sys.executable, "-m", "revati.revatid.validate.workload", "--device", "cuda",
               "--size", args.size, "--dtype", args.dtype, "--threads", "0",
               "--out", str(args.out / "real.json")]
    t0 = time.monotonic()
    subprocess.run(run_cmd, check=True, env=env)
    workload_wall = time.monotonic() - t0
    prof_cmd = [sys.executable, "-m", "revati.predictors.profiler", "--device", "cuda",
                "--out", str(args.out / "profile"), *([] if args.full_profile else ["--quick"])]
    t0 = time.monotonic()
    subprocess.run(prof_cmd, check=True, env=env)
    profile_wall = time.monotonic() - t0
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
            "workload_wall_s": workload_wall, "profile_wall_s": profile_wall,
            "commands": [" ".join(run_cmd), " ".join(prof_cmd)]}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    print(f"gpu_run: {name} ({prov['sku']}): real.json, profile/, provenance.json in "
          f"{args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
