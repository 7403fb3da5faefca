"""Measured kernel times as training data, and the profile CSV schema the profiler writes.

A `Measured` is one measured time and the launches it covers: one launch for a profile row,
one or more identical launches for a Vidur operator (phi-2's residual `add` is two adds).

Profile CSV (one file per family, written by `revati.predictors.profiler`), one row per
measured launch shape:

  family      Family name, e.g. GEMM
  op          op name as the adapter reports it (carries the backend for attention)
  dtype       short dtype name (launch.DTYPE_BYTES)
  feats       the family's integer feature tuple (launch.FEATURE_NAMES), space separated
  median_ns, p10_ns, p90_ns, repeats
  device_name, driver, libraries    where it was measured ("torch=2.13.0 cuda=12.8 ...")
  mean_ns     the mean, each time capped at MEAN_CAP medians: what a predictor learns (a
              step's time is the sum of its kernels', which goes with their means; on a
              shared host with slow spells the median leaves the spells out). Profiles
              written before it (LEGACY_COLUMNS) are read with their median.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from revati.predictors.launch import Family, LaunchEvent

PROFILE_COLUMNS = ("family", "op", "dtype", "feats", "median_ns", "p10_ns", "p90_ns", "repeats",
                   "device_name", "driver", "libraries", "mean_ns")
LEGACY_COLUMNS = PROFILE_COLUMNS[:-1]  # before mean_ns (2026-12-07)
# A time over this many medians of its case counts as this many in the mean: a preemption of
# the timing thread (milliseconds) would otherwise outweigh a short op's other times, while a
# slow spell of a shared host (1.2-1.6x, docs/validation.md) is kept.
MEAN_CAP = 3.0


def capped_mean(times: Sequence[float], median: float) -> float:
    """The mean of `times`, each capped at MEAN_CAP x `median` (their median)."""
    cap = MEAN_CAP * median
    return sum(min(t, cap) for t in times) / len(times)


class Measured(NamedTuple):
    operator: str  # what was measured: a Vidur operator column, or the op name
    events: tuple[LaunchEvent, ...]  # identical launches the time covers
    time_ns: float
    group: str  # where it came from (Vidur model, profile directory): the LOMO fold key


def event(family: Family, op: str, dtype: str, feats: Iterable[int]) -> LaunchEvent:
    """A launch event for training and evaluation (device, stream and time do not matter)."""
    return LaunchEvent(int(family), op, dtype, 0, 0, 0, tuple(int(x) for x in feats))


def per_launch(data: Iterable[Measured]) -> Iterator[tuple[LaunchEvent, float]]:
    """Training samples: each measurement split evenly over its identical launches."""
    for m in data:
        yield m.events[0], m.time_ns / len(m.events)


def write_profile(path: Path, rows: Sequence[dict[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PROFILE_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def profile_rows(path: Path) -> list[dict[str, str]]:
    """The rows of one profile CSV, as written (none for a CSV whose header is not ours)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) not in (PROFILE_COLUMNS, LEGACY_COLUMNS):
            return []
        return list(reader)


def row_time_ns(row: dict[str, str]) -> float:
    """The time a predictor learns from a profile row: its capped mean, or its median in a
    profile written before mean_ns."""
    return float(row.get("mean_ns") or row["median_ns"])


def read_profiles(directory: Path) -> list[Measured]:
    """Every profile CSV in `directory` (files whose header is not ours are skipped)."""
    out: list[Measured] = []
    for path in sorted(directory.glob("*.csv")):
        for row in profile_rows(path):
            ev = event(Family[row["family"]], row["op"], row["dtype"], row["feats"].split())
            out.append(Measured(row["op"], (ev,), row_time_ns(row), f"profile:{directory.name}"))
    return out
