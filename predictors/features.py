"""Model features of a launch event: one definition, used to train the models and to query
them at run time.

The launch event carries an integer feature tuple per family (`launch.py`); the models see
physics-informed features derived from it and the SKU: log sizes, log FLOPs and bytes,
arithmetic intensity, the roofline time and, for GEMMs, how tiles quantise into waves over the
SKU's SMs. A model predicts log(time) as an offset from a reference time `base` (the
roofline, or the analytical attention time): a tree model cannot extrapolate, so what it
learns is the part of the time that physics does not already explain. Transfers are the
exception (see MONOTONE).

The tuples follow the adapter's conventions (docs/virtual-cuda.md, "Launch events"), and the
rows built from Vidur data (vidur.py) follow them too:

- GEMM (m, n, k, batch): C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]; a linear layer on
  T tokens is m = T, k = in features, n = out features (per TP rank).
- MEMORY (bytes, elements): bytes read by every input plus bytes written by every output (a
  gather reads only the rows it gathers), elements of the largest output. The small excess
  over the streamed bytes (token ids, a norm's weight, cos/sin rows) carries the row width
  that per-token kernels depend on; the model uses it. The op name picks the kind.
- COLLECTIVE (kind, bytes, ranks): bytes per rank (the tensor for all-reduce and broadcast,
  one rank's shard for all-gather and reduce-scatter); a send/recv pair is a two-rank
  broadcast.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from enum import IntEnum
from functools import cache
from typing import NamedTuple

import numpy as np

from revati.predictors.attention import attention_backend, flops_bytes
from revati.predictors.launch import Family, LaunchEvent
from revati.predictors.roofline import (
    Hardware,
    dtype_bytes,
    feats_matrix,
    gemm_flops_bytes,
    roofline_ns,
)


class MemKind(IntEnum):
    ELEMENTWISE = 0
    NORM = 1
    ACTIVATION = 2
    ROTARY = 3
    EMBEDDING = 4
    COPY = 5
    REDUCTION = 6


# First match wins, on the op name after its namespace ("vllm::rms_norm" -> "rms_norm").
_MEM_KEYWORDS: tuple[tuple[MemKind, tuple[str, ...]], ...] = (
    (MemKind.ROTARY, ("rotary", "rope")),  # before EMBEDDING: "rotary_embedding"
    (MemKind.EMBEDDING, ("embedding",)),
    (MemKind.ELEMENTWISE, ("normal", "uniform", "bernoulli", "rand", "exponential")),  # RNG
    (MemKind.NORM, ("norm",)),
    (MemKind.ACTIVATION, ("silu", "gelu", "relu", "swiglu", "sigmoid", "tanh", "and_mul")),
    (MemKind.REDUCTION, ("softmax", "sum", "mean", "amax", "max", "min", "argmax", "topk",
                         "cumsum", "sort")),
    (MemKind.COPY, ("copy", "clone", "contiguous", "cat", "index", "gather", "scatter", "fill",
                    "zero", "cache", "to_copy", "expand", "repeat")),
)


@cache  # few distinct op names, looked up per event
def memory_kind(op: str) -> MemKind:
    """The kind of a memory-bound op from its name; plain element-wise ops by default."""
    name = op.rsplit("::", 1)[-1].lower()
    for kind, words in _MEM_KEYWORDS:
        if any(w in name for w in words):
            return kind
    return MemKind.ELEMENTWISE


def dtype_class(dtype: str) -> str:
    """fp16 and bf16 run at the same tensor-core rate on every SKU here, so a model trained
    on one covers the other."""
    return "half" if dtype in ("fp16", "bf16") else dtype


def coverage_key(family: Family, op: str, dtype: str, feats: tuple[int, ...]) -> Hashable:
    """What a trained model must have seen for its prediction of this event to count:
    the dtype class of a GEMM or attention, the kind of a memory op or collective."""
    if family == Family.GEMM:
        return dtype_class(dtype)
    if family == Family.ATTENTION:
        return (dtype_class(dtype), attention_backend(op).name)
    if family == Family.MEMORY:
        return memory_kind(op).name
    if family == Family.COLLECTIVE:
        return (int(feats[0]), int(feats[2]))  # kind, ranks
    return None


FEATURE_DECIMALS = 4


class Inputs(NamedTuple):
    X: np.ndarray  # model features, one row per event
    base: np.ndarray  # log of the reference time (ns) the model's output is added to


# Output tiles CUTLASS/cuBLAS kernels commonly use; the fraction of the last wave that is
# busy explains most of the steps in a GEMM's time as m or n grows.
_TILES = ((64, 64), (64, 128), (128, 64), (128, 128), (128, 256), (256, 128))

MODEL_FEATURES: dict[Family, tuple[str, ...]] = {
    Family.GEMM: (
        "log_m", "log_n", "log_k", "log_batch", "log_flops", "log_bytes", "log_intensity",
        "log_t_compute", "log_t_memory",
        *(f"{w}_{tm}x{tn}" for tm, tn in _TILES for w in ("waves", "wave_fill", "log_t_waves")),
        "m_mod_64", "n_mod_128", "k_mod_128",
    ),
    Family.MEMORY: ("kind", "log_bytes", "log_elements", "bytes_per_element", "log_t_memory",
                    "log_waves"),
    Family.COLLECTIVE: ("kind", "log_bytes", "ranks"),
    Family.P2P: ("log_bytes",),
    Family.ATTENTION: ("backend", "prefill", "causal", "log_seqs", "log_q", "log_kv_sum",
                       "log_kv_max", "log_kv_sq_sum", "log_heads", "gqa", "head_dim",
                       "log_flops", "log_bytes", "log_t_analytical"),
}

# Transfers are modelled as log time itself (reference 1 ns), constrained to grow with bytes
# and ranks: measured NCCL times jitter between protocols at small sizes (Vidur's a100
# all-reduce on 4 ranks alternates between ~20 and ~60 us), and a residual over the roofline
# would carry that jitter into predictions that shrink as messages grow. Outside the measured
# sizes, `models.FamilyModel` scales the nearest measured size by the roofline.
MONOTONE: dict[Family, tuple[str, ...]] = {
    Family.COLLECTIVE: ("log_bytes", "ranks"), Family.P2P: ("log_bytes",),
}
TRANSFER_BYTES = {Family.COLLECTIVE: 1, Family.P2P: 0}  # index of bytes in the launch tuple

CATEGORICAL: dict[Family, tuple[str, ...]] = {
    Family.MEMORY: ("kind",), Family.COLLECTIVE: ("kind",), Family.ATTENTION: ("backend",),
}


def _log(x: np.ndarray) -> np.ndarray:
    return np.log2(np.maximum(x, 1.0))


def _gemm(events: Sequence[LaunchEvent], hw: Hardware) -> np.ndarray:
    f = feats_matrix(events)
    m, n, k, batch = f[:, 0], f[:, 1], f[:, 2], np.maximum(f[:, 3], 1)
    flops, nbytes = gemm_flops_bytes(f, dtype_bytes(events))
    peak = np.array([hw.peak_flops(e.dtype) for e in events])
    cols = [_log(m), _log(n), _log(k), _log(batch), _log(flops), _log(nbytes),
            _log(flops) - _log(nbytes), _log(flops / peak * 1e9),
            _log(nbytes / hw.hbm_bytes_per_s * 1e9)]
    for tm, tn in _TILES:
        tiles = np.ceil(m / tm) * np.ceil(n / tn) * batch
        waves = np.ceil(tiles / hw.sm_count)
        # each wave runs one tile per SM at the SM's share of the peak
        t_waves = waves * 2 * tm * tn * k / (peak / hw.sm_count) * 1e9
        cols += [waves, tiles / (waves * hw.sm_count), _log(t_waves)]
    cols += [m % 64, n % 128, k % 128]
    return np.column_stack(cols)


def _memory(events: Sequence[LaunchEvent], hw: Hardware) -> np.ndarray:
    f = feats_matrix(events)
    nbytes, elems = np.maximum(f[:, 0], 1), np.maximum(f[:, 1], 1)
    kind = np.array([memory_kind(e.op) for e in events], dtype=np.float64)
    # one thread block of 1024 elements per SM slot: how many waves the launch needs
    waves = elems / (hw.sm_count * 1024)
    return np.column_stack([kind, _log(nbytes), _log(elems), nbytes / elems,
                            _log(nbytes / hw.hbm_bytes_per_s * 1e9), np.log2(waves)])


def _collective(events: Sequence[LaunchEvent], hw: Hardware) -> np.ndarray:
    f = feats_matrix(events)
    return np.column_stack([f[:, 0], _log(f[:, 1]), f[:, 2]])


def _p2p(events: Sequence[LaunchEvent], hw: Hardware) -> np.ndarray:
    return _log(feats_matrix(events)[:, :1])


def _attention(events: Sequence[LaunchEvent], analytical_ns: np.ndarray) -> np.ndarray:
    f = feats_matrix(events)
    flops, nbytes = flops_bytes(f, dtype_bytes(events))
    backend = np.array([attention_backend(e.op) for e in events], dtype=np.float64)
    return np.column_stack([
        backend, f[:, 1] > f[:, 0], f[:, 8] != 0, _log(f[:, 0]), _log(f[:, 1]), _log(f[:, 2]),
        _log(f[:, 3]), _log(f[:, 4]), _log(f[:, 5]), f[:, 5] / np.maximum(f[:, 6], 1), f[:, 7],
        _log(flops), _log(nbytes), np.log2(analytical_ns)])


def model_inputs(family: Family, events: Sequence[LaunchEvent], hw: Hardware,
                 analytical_ns: np.ndarray | None = None) -> Inputs:
    """Features and reference time of events of one family. Attention's reference is the
    analytical time (`analytical_ns`, from the SKU's calibrated attention model), transfers'
    is 1 ns (see MONOTONE), the other families' is the roofline."""
    if family == Family.ATTENTION:
        if analytical_ns is None:
            raise ValueError("attention features need the analytical times")
        X, base = _attention(events, analytical_ns), np.log(analytical_ns)
    else:
        build = {Family.GEMM: _gemm, Family.MEMORY: _memory, Family.COLLECTIVE: _collective,
                 Family.P2P: _p2p}.get(family)
        if build is None:
            raise ValueError(f"no trained model takes family {family!r}")
        X = build(events, hw)
        base = np.zeros(len(events)) if family in TRANSFER_BYTES else \
            np.log(roofline_ns(family, events, hw))
    # Rounded: equal quantities computed along different float paths (a difference of logs)
    # must be one value, or a split between them would not survive the saved thresholds.
    return Inputs(np.round(X, FEATURE_DECIMALS), base)

