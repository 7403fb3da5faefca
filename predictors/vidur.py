"""Vidur's measured operator times (../shared/data/vidur, see its README) as launch events.

Each `mlp.csv` row is one decoder layer of a model at `num_tokens` tokens (T) on TP ranks
(tp); every operator column becomes the launch(es) it times, with the shapes that follow from
the model columns (H = n_embd, F = n_expanded_embd, hd = H / n_head, fp16):

  attn_pre_proj     GEMM m=T, k=H, n=(n_head + 2 n_kv_head) hd / tp
  attn_post_proj    GEMM m=T, k=n_head hd / tp, n=H
  mlp_up_proj       GEMM m=T, k=H, n=2F/tp (gated) or F/tp
  mlp_down_proj     GEMM m=T, k=F/tp, n=H
  emb               MEMORY embedding: gathers T rows of H (+ int64 ids), writes T x H
  *_layernorm       MEMORY rms_norm (layer_norm for phi-2): reads and writes T x H
  attn_rope         MEMORY rotary on q and k heads of this rank (whole heads: phi-2's partial
                    rotary factor, 0.4, does not show in its times, which scale with hd)
  mlp_act           MEMORY silu_and_mul (reads 2F/tp, writes F/tp per token) or gelu
  add               MEMORY residual add: two inputs and one output of T x H; phi-2's parallel
                    block sums three tensors, i.e. two adds

network/<topology>/all_reduce.csv gives COLLECTIVE all-reduce times, and send_recv.csv both P2P
copy times and two-rank BROADCAST times (the adapter costs a send/recv pair as one), by size in
bytes and ranks; only single-node rows (num_workers <= devices_per_node) are used, as a
session's GPUs share one node.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from revati.predictors.dataset import Measured, event
from revati.predictors.launch import Collective, Family, LaunchEvent

REPO_ROOT = Path(__file__).resolve().parent.parent

# SKU key in specs.json -> (compute folder, network topology folder) in the Vidur data
SKU_DATA: dict[str, tuple[str, str]] = {
    "a100": ("a100", "a100_dgx"),
    "h100": ("h100", "h100_dgx"),
    "a40": ("a40", "a40_pairwise_nvlink"),
}

GEMM_OPERATORS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
MEMORY_OPERATORS = ("emb", "input_layernorm", "attn_rope", "post_attention_layernorm",
                    "mlp_act", "add")
DTYPE = "fp16"
BYTES = 2


class DataMissing(FileNotFoundError):
    pass


def data_dir() -> Path:
    """$REVATI_VIDUR_DATA, else ../shared/data/vidur beside the repository."""
    env = os.environ.get("REVATI_VIDUR_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "vidur"
    if not (path / "compute").is_dir():
        raise DataMissing(f"Vidur data not found at {path} (expected compute/ and network/ "
                          "there); set REVATI_VIDUR_DATA to the folder")
    return path


@dataclass(frozen=True)
class Arch:
    """What the mlp.csv columns do not say about a model's layer."""

    norm: str = "vllm::rms_norm"
    residual_adds: int = 1


ARCHS: dict[str, Arch] = {
    "microsoft/phi-2": Arch(norm="aten::layer_norm", residual_adds=2),
}


def operator_events(operator: str, row: dict[str, str], arch: Arch) -> tuple[LaunchEvent, ...]:
    """The launches one Vidur operator column times, for one mlp.csv row."""
    t, tp = int(row["num_tokens"]), int(row["num_tensor_parallel_workers"])
    h, f = int(row["n_embd"]), int(row["n_expanded_embd"])
    nq, nkv = int(row["n_head"]), int(row["n_kv_head"])
    hd = h // nq
    gated = row["use_gated_mlp"] == "True"
    gemm = {
        "attn_pre_proj": (t, (nq + 2 * nkv) * hd // tp, h),
        "attn_post_proj": (t, h, nq * hd // tp),
        "mlp_up_proj": (t, (2 if gated else 1) * f // tp, h),
        "mlp_down_proj": (t, h, f // tp),
    }
    if operator in gemm:
        m, n, k = gemm[operator]
        return (event(Family.GEMM, "aten::linear", DTYPE, (m, n, k, 1)),)
    if operator == "emb":
        return (event(Family.MEMORY, "aten::embedding", DTYPE,
                      (2 * t * h * BYTES + 8 * t, t * h)),)
    if operator in ("input_layernorm", "post_attention_layernorm"):
        params = 2 if arch.norm == "aten::layer_norm" else 1  # weight (and bias)
        return (event(Family.MEMORY, arch.norm, DTYPE,
                      (2 * t * h * BYTES + params * h * BYTES, t * h)),)
    if operator == "attn_rope":
        elems = t * (nq + nkv) // tp * hd
        # q and k rotated in place, int64 positions, one cos/sin cache row per token
        return (event(Family.MEMORY, "vllm::rotary_embedding", DTYPE,
                      (2 * elems * BYTES + 8 * t + t * hd * BYTES, elems)),)
    if operator == "mlp_act":
        elems = t * f // tp
        if gated:
            return (event(Family.MEMORY, "vllm::silu_and_mul", DTYPE, (3 * elems * BYTES, elems)),)
        return (event(Family.MEMORY, "aten::gelu", DTYPE, (2 * elems * BYTES, elems)),)
    if operator == "add":
        ev = event(Family.MEMORY, "aten::add", DTYPE, (3 * t * h * BYTES, t * h))
        return (ev,) * arch.residual_adds
    raise KeyError(f"unknown Vidur operator {operator!r}")


def read_mlp_csv(path: Path, group: str, arch: Arch) -> Iterator[Measured]:
    """Every operator time of one Vidur mlp.csv (median over its repeats, ms -> ns)."""
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for operator in (*GEMM_OPERATORS, *MEMORY_OPERATORS):
                value = row.get(f"time_stats.{operator}.median")
                if value:  # phi-2 has no post_attention_layernorm
                    yield Measured(operator, operator_events(operator, row, arch),
                                   float(value) * 1e6, group)


def model_files(sku: str, root: Path | None = None) -> dict[str, Path]:
    """The mlp.csv of each model measured on a SKU, by model name ("org/model")."""
    compute = (root or data_dir()) / "compute" / SKU_DATA[sku][0]
    return {str(p.parent.relative_to(compute)): p for p in sorted(compute.glob("*/*/mlp.csv"))}


def _read_models(files: dict[str, Path]) -> list[Measured]:
    return [m for name, path in files.items()
            for m in read_mlp_csv(path, name, ARCHS.get(name, Arch()))]


def compute_data(sku: str, root: Path | None = None) -> list[Measured]:
    return _read_models(model_files(sku, root))


def network_files(sku: str, root: Path | None = None) -> list[Path]:
    folder = (root or data_dir()) / "network" / SKU_DATA[sku][1]
    return sorted(folder.glob("*.csv"))


def network_data(sku: str, root: Path | None = None) -> list[Measured]:
    out = []
    for path in network_files(sku, root):
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                ranks, size = int(row["num_workers"]), int(row["size"])
                if ranks > int(row["devices_per_node"]):
                    continue
                kind = row["collective"]
                t = float(row[f"time_stats.{kind}.median"]) * 1e6
                if kind == "all_reduce":
                    events = [event(Family.COLLECTIVE, "c10d::allreduce_", DTYPE,
                                    (Collective.ALL_REDUCE, size, ranks))]
                else:  # send_recv: a device-to-device copy, and a send/recv pair (two ranks)
                    events = [event(Family.P2P, "nccl::send_recv", DTYPE, (size, 1)),
                              event(Family.COLLECTIVE, "c10d::send", DTYPE,
                                    (Collective.BROADCAST, size, 2))]
                out += [Measured(kind, (ev,), t, path.parent.name) for ev in events]
    return out


def training_data(sku: str, root: Path | None = None, exclude: Iterable[str] = (),
                  ) -> tuple[list[Measured], list[Path]]:
    """All Vidur data for a SKU, less the models in `exclude`, and the files it came from."""
    files = {name: p for name, p in model_files(sku, root).items() if name not in set(exclude)}
    return _read_models(files) + network_data(sku, root), \
        [*files.values(), *network_files(sku, root)]
