"""Roofline kernel times for one SKU: the model for any op that no trained model covers.

A kernel takes max(FLOPs / peak FLOP/s, bytes / memory bandwidth) plus the SKU's launch
overhead (the floor of any kernel on the device timeline); transfers take latency plus bytes
over the link they cross. Attention has its analytical model instead (`attention.py`). All
functions are vectorised over a batch of events of one family and return ns as float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from revati.predictors.launch import DTYPE_BYTES, Collective, CopyDirection, Family, LaunchEvent
from revati.predictors.wake import WakeModel

# Peak a dtype falls back to when the SKU lists none for it: no fp8 tensor cores means the
# kernel runs at 16-bit rate; integer and fp64 work runs on the fp32 pipes.
_PEAK_FALLBACK = {"fp8": "fp16", "bf16": "fp16", "fp16": "bf16", "tf32": "fp32"}

# Passes over its input a sampling kernel makes: a radix sort reads and writes its keys once
# per 8-bit digit (4 digits of 32-bit keys), top-k about twice; argmax, multinomial once.
_SAMPLING_PASSES = {"sort": 8, "argsort": 8, "topk": 2}


@dataclass(frozen=True)
class Hardware:
    """The figures of a SKU that the models use (a subset of one specs.json entry)."""

    name: str
    sm_count: int
    flops: Mapping[str, float]
    hbm_bytes_per_s: float
    launch_overhead_s: float
    link_bytes_per_s: float
    link_latency_s: float
    pcie_bytes_per_s: float
    pcie_latency_s: float
    wake: WakeModel | None = None  # its slowdown after idle, where a profile measured one

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Hardware:
        link, pcie = spec["interconnect"], spec["pcie"]
        return cls(
            name=spec["name"], sm_count=int(spec["sm_count"]), flops=dict(spec["flops"]),
            hbm_bytes_per_s=float(spec["hbm_bytes_per_s"]),
            launch_overhead_s=float(spec["launch_overhead_s"]),
            link_bytes_per_s=float(link["bytes_per_s"]), link_latency_s=float(link["latency_s"]),
            pcie_bytes_per_s=float(pcie["bytes_per_s"]), pcie_latency_s=float(pcie["latency_s"]),
            wake=WakeModel.from_spec(spec.get("wake")))

    def peak_flops(self, dtype: str) -> float:
        if dtype in self.flops:
            return self.flops[dtype]
        fallback = _PEAK_FALLBACK.get(dtype, "fp32")
        return self.flops.get(fallback, self.flops["fp32"])

    @property
    def overhead_ns(self) -> float:
        return self.launch_overhead_s * 1e9


def feats_matrix(events: Sequence[LaunchEvent]) -> np.ndarray:
    """The events' integer feature tuples as a float64 matrix (one row per event)."""
    return np.array([e.feats for e in events], dtype=np.float64)


def dtype_bytes(events: Sequence[LaunchEvent]) -> np.ndarray:
    return np.array([DTYPE_BYTES.get(e.dtype, 2) for e in events], dtype=np.float64)


def gemm_flops_bytes(f: np.ndarray, dbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLOPs and the minimum bytes moved (A and B read once, C written once)."""
    m, n, k, batch = f[:, 0], f[:, 1], f[:, 2], np.maximum(f[:, 3], 1)
    return 2 * m * n * k * batch, (m * k + k * n + m * n) * batch * dbytes


# Bytes each rank moves over its links per byte of the event's `bytes` for a ring algorithm
# (a one-shot one for the frameworks' own all-reduce),
# with the adapter's convention for `bytes` (docs/virtual-cuda.md): the tensor for all-reduce
# and broadcast, one rank's shard for all-gather (input) and reduce-scatter (output), one rank's
# input for all-to-all.
_RING_FACTOR = {
    Collective.ALL_REDUCE: lambda n: 2 * (n - 1) / n,
    Collective.ALL_GATHER: lambda n: n - 1,
    Collective.REDUCE_SCATTER: lambda n: n - 1,
    Collective.BROADCAST: lambda n: np.ones_like(n),
    Collective.ALL_TO_ALL: lambda n: (n - 1) / n,
    Collective.BARRIER: lambda n: np.zeros_like(n),
    Collective.CUSTOM_ALL_REDUCE: lambda n: n - 1,  # one-shot: each rank reads every peer's
}


def collective_ns(kind: np.ndarray, nbytes: np.ndarray, ranks: np.ndarray,
                  hw: Hardware) -> np.ndarray:
    ranks = np.maximum(ranks, 1)
    factor = np.zeros_like(nbytes)
    for c, fn in _RING_FACTOR.items():
        sel = kind == c
        factor[sel] = fn(ranks[sel])
    t = hw.link_latency_s * 1e9 + factor * nbytes / hw.link_bytes_per_s * 1e9
    return np.where(ranks > 1, t, hw.overhead_ns)  # one rank: a no-op kernel


def roofline_ns(family: Family, events: Sequence[LaunchEvent], hw: Hardware) -> np.ndarray:
    """Roofline duration (ns) of each event; all events are of `family`."""
    f = feats_matrix(events)
    bw = hw.hbm_bytes_per_s / 1e9  # bytes per ns
    if family == Family.GEMM:
        flops, nbytes = gemm_flops_bytes(f, dtype_bytes(events))
        peak = np.array([hw.peak_flops(e.dtype) for e in events]) / 1e9
        return np.maximum(flops / peak, nbytes / bw) + hw.overhead_ns
    if family in (Family.MEMORY, Family.OTHER):
        return f[:, 0] / bw + hw.overhead_ns
    if family == Family.SAMPLING:
        passes = np.array([_SAMPLING_PASSES.get(e.op.rsplit("::", 1)[-1], 1) for e in events])
        return passes * f[:, 0] * f[:, 1] * dtype_bytes(events) / bw + hw.overhead_ns
    if family == Family.COLLECTIVE:
        return collective_ns(f[:, 0], f[:, 1], f[:, 2], hw)
    if family == Family.P2P:
        return hw.link_latency_s * 1e9 + f[:, 0] / hw.link_bytes_per_s * 1e9
    if family == Family.HOST_COPY:
        pcie = hw.pcie_latency_s * 1e9 + f[:, 0] / hw.pcie_bytes_per_s * 1e9
        d2d = 2 * f[:, 0] / bw + hw.overhead_ns  # read and write in device memory
        return np.where(f[:, 1] == CopyDirection.D2D, d2d, pcie)
    raise ValueError(f"no roofline for family {family!r} (attention has its analytical model; "
                     "graph replays are expanded by revatid, not predicted)")
