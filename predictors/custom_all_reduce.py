"""Times of the serving frameworks' own all-reduce kernel (`Collective.CUSTOM_ALL_REDUCE`).

vLLM and SGLang reduce a tensor-parallel group's small tensors with one-shot / two-shot kernels
over NVLink peer memory instead of NCCL (adapters/cuda/distributed.py says when). Their time is
latency-bound up to hundreds of KiB, well under NCCL's, so NCCL's model would overstate every
decode step's all-reduces. A SKU with measured times in skus/custom_all_reduce.json gets them,
interpolated in log-log between the measured sizes (the smallest size's time below it) and
taken from the nearest measured GPU count at or above the group's; beyond the largest measured
size, or on a SKU with no measurements, the registry times the all-reduce as NCCL's.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np


class CustomAllReduceTimes:
    """Measured latencies of one SKU: `sizes` (bytes, ascending), `us[ranks]` per size."""

    def __init__(self, sizes: list[int], us: dict[int, list[float]]) -> None:
        self.log_sizes = np.log(np.asarray(sizes, dtype=np.float64))
        self.ranks = np.array(sorted(us))
        self.log_us = np.log(np.array([us[r] for r in self.ranks], dtype=np.float64))
        self.max_bytes = int(sizes[-1])

    def covers(self, nbytes: int) -> bool:
        return nbytes <= self.max_bytes

    def _rows(self, ranks: np.ndarray) -> np.ndarray:
        """The measured GPU count each of `ranks` takes: the nearest at or above it."""
        return np.minimum(np.searchsorted(self.ranks, ranks), len(self.ranks) - 1)

    def predict_ns(self, nbytes: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """Durations (ns) of all-reduces of `nbytes` (each covered) over `ranks` GPUs."""
        row = self._rows(ranks)
        x = np.log(np.maximum(nbytes, 1.0))
        out = np.empty(len(x))
        for i, log_us in enumerate(self.log_us):
            sel = row == i
            out[sel] = np.exp(np.interp(x[sel], self.log_sizes, log_us)) * 1e3
        return out

    def largest_ns(self, ranks: np.ndarray) -> np.ndarray:
        """The time measured at the largest size, for `ranks` GPUs."""
        return np.exp(self.log_us[self._rows(ranks), -1]) * 1e3


@cache
def load(sku: str) -> CustomAllReduceTimes | None:
    """The measured times of the SKU `sku` (a specs.json key), or None."""
    text = resources.files("revati.predictors.skus").joinpath("custom_all_reduce.json").read_text()
    table = json.loads(text)
    entry = table.get(sku)
    if entry is None:
        return None
    entry = table[entry["same_as"]] if "same_as" in entry else entry
    return CustomAllReduceTimes(entry["bytes"], {int(r): v for r, v in entry["us"].items()})
