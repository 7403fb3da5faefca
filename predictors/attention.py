"""Analytical attention model: FLOPs and KV bytes from the batch composition, calibrated on
measured points where a profile has them.

From the ATTENTION feature tuple (num_seqs, q_tokens, kv_sum, kv_max, kv_sq_sum, n_heads,
n_kv_heads, head_dim, causal):

- score pairs: a decode batch (one query per sequence) attends kv_sum keys. Otherwise each
  sequence is assumed to have the same share r = q_tokens / kv_sum of new tokens, so that
  sum(q_i * kv_i) = r * kv_sq_sum, less the causally masked half of the new block,
  r^2 * kv_sq_sum / 2. Exact for prefill without a cached prefix and for uniform chunks.
- FLOPs = 4 * n_heads * head_dim * pairs (QK^T and PV).
- bytes = Q and O (q_tokens * n_heads * head_dim) plus K and V read once
  (2 * kv_sum * n_kv_heads * head_dim), at the event's dtype size.

time = max(FLOPs / (peak * compute_eff), bytes / (bandwidth * memory_eff)) + fixed_ns, with
one (compute_eff, memory_eff, fixed_ns) per backend, fitted by `calibrate`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cache

import numpy as np

from revati.predictors.launch import LaunchEvent
from revati.predictors.roofline import Hardware, dtype_bytes, feats_matrix


class Backend(IntEnum):
    SDPA = 0
    FLASH_ATTN = 1
    FLASHINFER = 2
    PAGED = 3
    OTHER = 4


@cache
def attention_backend(op: str) -> Backend:
    """The attention implementation, from the op name of its launch."""
    name = op.lower()
    if "flashinfer" in name:
        return Backend.FLASHINFER
    if "flash" in name:
        return Backend.FLASH_ATTN
    if "scaled_dot_product" in name or "sdpa" in name:
        return Backend.SDPA
    if "paged" in name:
        return Backend.PAGED
    return Backend.OTHER


ANY_BACKEND = "ANY"  # the calibration over every measured backend


@dataclass(frozen=True)
class Calibration:
    compute_eff: float
    memory_eff: float
    fixed_ns: float


def default_calibration(hw: Hardware) -> Calibration:
    """Uncalibrated figures: FlashAttention-2-class prefill reaches about half the dense peak,
    paged decode about 70% of memory bandwidth, plus one launch overhead."""
    return Calibration(0.5, 0.7, hw.overhead_ns)


def flops_bytes(f: np.ndarray, dbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seqs, q, kv_sum, kv_sq = f[:, 0], f[:, 1], np.maximum(f[:, 2], 1), f[:, 4]
    heads, kv_heads, head_dim, causal = f[:, 5], f[:, 6], f[:, 7], f[:, 8] != 0
    r = np.minimum(q / kv_sum, 1.0)
    pairs = r * kv_sq - np.where(causal, r * r * kv_sq / 2, 0.0)
    pairs = np.where(q <= seqs, kv_sum, np.maximum(pairs, q))
    flops = 4 * heads * head_dim * pairs
    nbytes = (2 * q * heads + 2 * kv_sum * kv_heads) * head_dim * dbytes
    return flops, nbytes


def _time_ns(flops: np.ndarray, nbytes: np.ndarray, peak: np.ndarray, bw: float,
             c: Calibration) -> np.ndarray:
    return np.maximum(flops / (peak * c.compute_eff), nbytes / (bw * c.memory_eff)) + c.fixed_ns


class AttentionModel:
    """Analytical attention times for one SKU; `calibrations` maps a backend name (`Backend`)
    to its fitted figures; a backend without its own uses ANY_BACKEND's, else the defaults."""

    def __init__(self, hw: Hardware, calibrations: Mapping[str, Calibration] | None = None):
        self.hw = hw
        self.calibrations = dict(calibrations or {})
        self.default = self.calibrations.get(ANY_BACKEND, default_calibration(hw))

    def predict_ns(self, events: Sequence[LaunchEvent]) -> np.ndarray:
        flops, nbytes = flops_bytes(feats_matrix(events), dtype_bytes(events))
        peak = np.array([self.hw.peak_flops(e.dtype) for e in events]) / 1e9
        bw = self.hw.hbm_bytes_per_s / 1e9
        backends = np.array([attention_backend(e.op).name for e in events])
        out = np.empty(len(events))
        for name in np.unique(backends):
            sel = backends == name
            c = self.calibrations.get(str(name), self.default)
            out[sel] = _time_ns(flops[sel], nbytes[sel], peak[sel], bw, c)
        return out


def calibrate(events: Sequence[LaunchEvent], times_ns: np.ndarray, hw: Hardware) -> Calibration:
    """Fit (compute_eff, memory_eff, fixed_ns) to measured times by least squares on log time,
    over a grid (three parameters, a few thousand points at most: a grid is exact enough and
    needs no optimiser)."""
    flops, nbytes = flops_bytes(feats_matrix(events), dtype_bytes(events))
    peak = np.array([hw.peak_flops(e.dtype) for e in events]) / 1e9
    bw = hw.hbm_bytes_per_s / 1e9
    logt = np.log(np.asarray(times_ns, dtype=np.float64))
    effs = np.geomspace(0.02, 1.5, 48)  # >1: a figure in specs.json may be conservative
    t_c = flops[None, :] / (peak[None, :] * effs[:, None])  # (grid, n)
    t_m = nbytes[None, :] / (bw * effs[:, None])
    best = (np.inf, default_calibration(hw))
    for fixed in np.geomspace(0.25, 8, 16) * hw.overhead_ns:
        t = np.maximum(t_c[:, None, :], t_m[None, :, :]) + fixed  # (ce, me, n)
        err = ((np.log(t) - logt) ** 2).sum(axis=2)
        i, j = np.unravel_index(np.argmin(err), err.shape)
        if err[i, j] < best[0]:
            best = (err[i, j], Calibration(float(effs[i]), float(effs[j]), float(fixed)))
    return best[1]
