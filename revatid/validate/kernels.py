"""Op by op: the real run's kernel times against the predictions, no host in between.

    python -m revati.revatid.validate.kernels DIR [--bundle BUNDLE]

DIR is a folder written by gpu_run on a GPU machine: `kernels.csv` holds, per op and input
shapes, the device time of the kernels each op launched itself in a real run of the workload
(torch.profiler), and `profile/` the profiler's measurements the SKU's bundle is built from
(unless --bundle names one). The end-to-end comparison (`revatictl validate --from`) mixes the
predicted kernel times with everything the host does; this one isolates the GPU side: for the
GEMMs and the attention of the real run, the measured device time against the bundle's
prediction for the same shapes, summed per family and per call. The same table gives the host
costs of `validate --from` (host_costs): the CPU time per launch the emulation does not run.
"""

from __future__ import annotations

import argparse
import ast
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from revati.predictors.launch import Family, LaunchEvent

# the real run's op (its kernels' device time) -> the op the adapter launches for it
ATTENTION_OPS = {
    "aten::_cudnn_attention_forward": "aten::_scaled_dot_product_cudnn_attention",
    "aten::_efficient_attention_forward": "aten::_scaled_dot_product_efficient_attention",
    "aten::_flash_attention_forward": "aten::_scaled_dot_product_flash_attention",
}
GEMM_OPS = ("aten::mm", "aten::addmm")


# ops whose host work on the real machine is in a child op the emulation never dispatches: the
# adapter's op -> the real run's child (cuDNN attention builds its graph in the child)
HOST_WORK = {"aten::_scaled_dot_product_cudnn_attention": "aten::_cudnn_attention_forward"}


def host_costs(kernel_table: Path) -> dict[str, float]:
    """Seconds of host time per launch of each op as the real run measured it (the mean own
    CPU time per call in gpu_run's kernel table: dispatch, launch and library work, which the
    emulation does not run), plus the child's for HOST_WORK ops; {} without a table."""
    if not kernel_table.is_file():
        return {}
    totals: dict[str, list[float]] = {}
    with open(kernel_table, newline="") as f:
        for row in csv.DictReader(f):
            if row["op"].startswith("aten::") and int(row["calls"]):
                t = totals.setdefault(row["op"], [0.0, 0])
                t[0] += float(row["self_cpu_us"])
                t[1] += int(row["calls"])
    per_call = {op: cpu / calls * 1e-6 for op, (cpu, calls) in totals.items()}
    for op, child in HOST_WORK.items():
        if child in per_call:
            per_call[op] = per_call.get(op, 0.0) + per_call[child]
    return per_call


def launch_for(op: str, shapes: list[Any], dtype: str) -> LaunchEvent | None:
    """The adapter's launch for one kernel-table row, or None for an op this does not cover."""
    if op in GEMM_OPS:
        a, b = (shapes[1], shapes[2]) if op == "aten::addmm" else (shapes[0], shapes[1])
        if len(a) != 2 or len(b) != 2:
            return None
        feats: tuple[int, ...] = (a[0], b[1], a[1], 1)
        return LaunchEvent(int(Family.GEMM), op, dtype, 0, 0, 0, feats)
    if op in ATTENTION_OPS:
        q, k = shapes[0], shapes[1]
        if len(q) != 4 or len(k) != 4:
            return None
        b, h, sq, d = q
        hkv, skv = k[1], k[2]
        # transformers' paged|sdpa: one packed sequence, a mask (not is_causal)
        feats = (b, b * sq, b * skv, skv, b * skv * skv, h, hkv, d, 0)
        return LaunchEvent(int(Family.ATTENTION), ATTENTION_OPS[op], dtype, 0, 0, 0, feats)
    return None


def read_table(path: Path, dtype: str) -> list[tuple[LaunchEvent, int, float]]:
    """(launch, calls, measured device ns per call) for each covered row of a kernel table."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            calls, device_us = int(row["calls"]), float(row["self_device_us"])
            if not calls or device_us <= 0:
                continue
            ev = launch_for(row["op"], ast.literal_eval(row["input_shapes"]), dtype)
            if ev is not None:
                rows.append((ev, calls, device_us * 1e3 / calls))
    return rows


def compare(rows: list[tuple[LaunchEvent, int, float]], predictor: Any) -> dict[str, Any]:
    """Per family: measured and predicted device time of all calls, their error, and the
    median absolute error per shape."""
    predicted = predictor.predict([ev for ev, _, _ in rows])
    out: dict[str, Any] = {}
    for family in sorted({ev.family for ev, _, _ in rows}):
        picked = [(ev, calls, real, pred) for (ev, calls, real), pred in
                  zip(rows, predicted, strict=True) if ev.family == family]
        real_ns = sum(calls * real for _, calls, real, _ in picked)
        pred_ns = sum(calls * pred for _, calls, _, pred in picked)
        ape = [abs(pred - real) / real * 100 for _, _, real, pred in picked]
        out[Family(family).name] = {
            "shapes": len(picked), "calls": sum(calls for _, calls, _, _ in picked),
            "measured_ms": real_ns / 1e6, "predicted_ms": pred_ns / 1e6,
            "error_pct": (pred_ns - real_ns) / real_ns * 100,
            "shape_ape_p50_pct": statistics.median(ape)}
    return out


def table(result: dict[str, Any]) -> str:
    lines = [f"{'family':<10} {'shapes':>6} {'calls':>6} {'measured ms':>12} "
             f"{'predicted ms':>13} {'error %':>8} {'per shape |err| p50 %':>22}"]
    for name, r in result.items():
        lines.append(f"{name:<10} {r['shapes']:>6} {r['calls']:>6} {r['measured_ms']:>12.2f} "
                     f"{r['predicted_ms']:>13.2f} {r['error_pct']:>+8.1f} "
                     f"{r['shape_ape_p50_pct']:>22.1f}")
    return "\n".join(lines)


def build_bundle(sku: str, profile: Path, root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "revati.predictors", "train", "--sku", sku,
                    "--profile", str(profile), "--out", str(root)], check=True,
                   stdout=subprocess.DEVNULL)
    return root / sku


def check(src: Path, bundle: Path, sku: str, dtype: str) -> dict[str, Any]:
    from revati.predictors.bundle import Bundle
    from revati.predictors.registry import Predictor

    predictor = Predictor.from_bundle(Bundle.load(bundle), bundle)
    return compare(read_table(src / "kernels.csv", dtype), predictor)


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(prog="python -m revati.revatid.validate.kernels",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--bundle", type=Path, help="a bundle folder (default: built from DIR/profile)")
    args = ap.parse_args(argv)
    prov = json.loads((args.dir / "provenance.json").read_text())
    dtype = json.loads((args.dir / "real.json").read_text())["dtype"]
    with tempfile.TemporaryDirectory(prefix="revati-kernels-") as tmp:
        bundle = args.bundle or build_bundle(prov["sku"], args.dir / "profile", Path(tmp))
        print(table(check(args.dir, bundle, prov["sku"], dtype)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
