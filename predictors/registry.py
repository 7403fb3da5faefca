"""The predictor registry revatid calls: a SKU name in, a kernel-duration predictor out.

    load_predictor(sku)                 -> Predictor (the SKU's bundle, else roofline + warning)
    Predictor.predict(events)           -> durations in ns, one per event
    Predictor.source(event)             -> "lightgbm" | "analytical" | "roofline"
    Predictor.counts                    -> Counter of predictions by source
    Predictor.summary()                 -> sku, bundle, trained families, counts, cache size
    FixedPredictor(ns_per_launch), TablePredictor({op: ns})   for tests

"analytical" is the attention model where no profile covers it, and a framework's custom
all-reduce interpolated from the SKU's measured times (predictors/custom_all_reduce.py); a
custom all-reduce no measurement covers is timed as NCCL's. GRAPH events are not predicted
(revatid expands a graph id into its recorded events); a GRAPH event raises ValueError.
Predictions are cached by (family, op, dtype, feats).
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from revati.predictors import custom_all_reduce
from revati.predictors.attention import AttentionModel, Calibration
from revati.predictors.bundle import Bundle, bundle_dir
from revati.predictors.features import coverage_key
from revati.predictors.launch import FEATURE_NAMES, Collective, Family, LaunchEvent
from revati.predictors.models import FamilyModel
from revati.predictors.roofline import Hardware, roofline_ns
from revati.predictors.skus import UnknownSku, canonical, profiled_bundle, spec

log = structlog.get_logger("revati.predictors")

LIGHTGBM, ANALYTICAL, ROOFLINE = "lightgbm", "analytical", "roofline"

_KEY = operator.itemgetter(0, 1, 2, 6)  # family, op, dtype, feats of a LaunchEvent
Key = tuple[int, str, str, tuple[int, ...]]


class Predictor:
    """Kernel durations on one SKU: trained LightGBM models where they cover an event, the
    analytical attention model for attention they do not cover, roofline for the rest."""

    CACHE_LIMIT = 1 << 20  # entries; decode attention makes new keys every step

    def __init__(self, sku: str, hw: Hardware, models: Mapping[Family, FamilyModel] | None = None,
                 attention: Mapping[str, Calibration] | None = None,
                 bundle: Path | None = None) -> None:
        self.sku = sku
        self.hw = hw
        self.models = dict(models or {})
        self.attention = AttentionModel(hw, attention)
        self.bundle = bundle  # None: no trained models
        self.custom_all_reduce = custom_all_reduce.load(sku)  # None: timed as NCCL's
        self.counts: Counter[str] = Counter()
        self._cache: dict[Key, int] = {}
        self._sources: dict[Key, str] = {}

    @classmethod
    def from_bundle(cls, bundle: Bundle, path: Path | None = None) -> Predictor:
        return cls(bundle.sku, Hardware.from_spec(bundle.spec), bundle.models, bundle.attention,
                   path)

    def predict(self, events: Sequence[LaunchEvent]) -> list[int]:
        """Durations (ns) of `events`, in order. Cache hits cost a dict lookup each (the maps
        run in C); misses are predicted together, one model call per family."""
        keys = list(map(_KEY, events))
        out = list(map(self._cache.get, keys))
        if None in out:
            self._fill(keys)
            out = list(map(self._cache.__getitem__, keys))
        self.counts.update(map(self._sources.__getitem__, keys))
        return out

    def source(self, ev: LaunchEvent) -> str:
        """How this event's duration is (or would be) predicted."""
        family = Family(ev.family)
        if family == Family.GRAPH:
            raise ValueError("GRAPH events are expanded by revatid, not predicted")
        if family == Family.COLLECTIVE and ev.feats[0] == Collective.CUSTOM_ALL_REDUCE:
            if self.custom_all_reduce is not None and self.custom_all_reduce.covers(ev.feats[1]):
                return ANALYTICAL
            ev = _as_nccl(ev)
        model = self.models.get(family)
        if model is not None and model.covers(coverage_key(family, ev.op, ev.dtype, ev.feats)):
            return LIGHTGBM
        return ANALYTICAL if family == Family.ATTENTION else ROOFLINE

    def summary(self) -> dict[str, Any]:
        return {"sku": self.sku, "bundle": str(self.bundle) if self.bundle else None,
                "families": sorted(f.name for f in self.models), "counts": dict(self.counts),
                "cached": len(self._cache)}

    def _fill(self, keys: list[Key]) -> None:
        missing = {k for k in keys if k not in self._cache}
        if len(self._cache) + len(missing) > self.CACHE_LIMIT:
            self._cache.clear()
            self._sources.clear()
            missing = set(keys)  # this batch's hits went with the rest
        by_family: dict[int, list[Key]] = defaultdict(list)
        for k in missing:
            by_family[k[0]].append(k)
        for family, fkeys in by_family.items():
            names = FEATURE_NAMES[Family(family)]
            bad = next((k for k in fkeys if len(k[3]) != len(names)), None)
            if bad is not None:
                raise ValueError(f"a {Family(family).name} launch has features {bad[3]}, "
                                 f"expected ({', '.join(names)})")
            events = [LaunchEvent(f, op, dtype, 0, 0, 0, feats) for f, op, dtype, feats in fkeys]
            durations, sources = self._compute(Family(family), events)
            self._cache.update(zip(fkeys, durations, strict=True))
            self._sources.update(zip(fkeys, sources, strict=True))

    def _compute(self, family: Family, events: list[LaunchEvent]) -> tuple[list[int], list[str]]:
        sources = [self.source(e) for e in events]
        if family == Family.COLLECTIVE:
            return self._collectives(events, sources)
        return self._models_or_roofline(family, events, sources)

    def _collectives(self, events: list[LaunchEvent],
                     sources: list[str]) -> tuple[list[int], list[str]]:
        """Custom all-reduces the SKU's measured times cover come from them; every other one
        is timed as NCCL's all-reduce, but never under the largest measured time."""
        custom = np.array([e.feats[0] == Collective.CUSTOM_ALL_REDUCE for e in events])
        if not custom.any():
            return self._models_or_roofline(Family.COLLECTIVE, events, sources)
        measured = np.array([s == ANALYTICAL for s in sources])
        ns = np.empty(len(events))
        if measured.any():
            f = np.array([events[i].feats for i in np.flatnonzero(measured)], dtype=np.float64)
            ns[measured] = self.custom_all_reduce.predict_ns(f[:, 1], f[:, 2])
        rest = np.flatnonzero(~measured)
        if len(rest):
            timed = [_as_nccl(events[i]) for i in rest]
            nccl, _ = self._models_or_roofline(Family.COLLECTIVE, timed,
                                               [sources[i] for i in rest])
            ns[rest] = nccl
            beyond = np.flatnonzero(custom[rest])
            if self.custom_all_reduce is not None and len(beyond):
                ranks = np.array([timed[i].feats[2] for i in beyond], dtype=np.float64)
                floor = self.custom_all_reduce.largest_ns(ranks)
                ns[rest[beyond]] = np.maximum(ns[rest[beyond]], floor)
        return [round(x) for x in ns.tolist()], sources

    def _models_or_roofline(self, family: Family, events: list[LaunchEvent],
                            sources: list[str]) -> tuple[list[int], list[str]]:
        if family == Family.ATTENTION:
            ns = self.attention.predict_ns(events)
        else:
            ns = np.empty(len(events))
        covered = np.array([s == LIGHTGBM for s in sources])
        if covered.any():
            sel = [e for e, c in zip(events, covered, strict=True) if c]
            ns[covered] = self.models[family].predict_ns(
                sel, self.hw, ns[covered] if family == Family.ATTENTION else None)
        if family != Family.ATTENTION and not covered.all():
            sel = [e for e, c in zip(events, covered, strict=True) if not c]
            ns[~covered] = roofline_ns(family, sel, self.hw)
        return [round(x) for x in ns.tolist()], sources


def _as_nccl(ev: LaunchEvent) -> LaunchEvent:
    """A custom all-reduce's NCCL twin: what times it where no measurement does."""
    if ev.feats[0] != Collective.CUSTOM_ALL_REDUCE:
        return ev
    return ev._replace(feats=(int(Collective.ALL_REDUCE), *ev.feats[1:]))


class FixedPredictor:
    """Every launch takes `ns_per_launch` (tests)."""

    def __init__(self, ns_per_launch: int) -> None:
        self.ns = int(ns_per_launch)
        self.counts: Counter[str] = Counter()

    def predict(self, events: Sequence[LaunchEvent]) -> list[int]:
        self.counts["fixed"] += len(events)
        return [self.ns] * len(events)

    def source(self, ev: LaunchEvent) -> str:
        return "fixed"


class TablePredictor:
    """Durations by op name (tests); an op not in the table takes `default`, or raises
    KeyError when there is none."""

    def __init__(self, table: Mapping[str, int], default: int | None = None) -> None:
        self.table = dict(table)
        self.default = default
        self.counts: Counter[str] = Counter()

    def predict(self, events: Sequence[LaunchEvent]) -> list[int]:
        self.counts["table"] += len(events)
        if self.default is None:
            try:
                return [self.table[e.op] for e in events]
            except KeyError as exc:
                raise KeyError(f"TablePredictor has no duration for op {exc.args[0]!r}") from None
        return [self.table.get(e.op, self.default) for e in events]

    def source(self, ev: LaunchEvent) -> str:
        return "table"


def load_predictor(sku: str, root: Path | None = None) -> Predictor:
    """The predictor for a SKU name or alias: its bundle (under `root`, the shipped bundles by
    default) when there is one, else roofline and analytical models with a warning. A name
    that is not in specs.json but has a bundle (a profiled device such as host-cpu, under
    `root`, or with no root the shipped bundles or this machine's, `skus.user_bundles_dir()`)
    loads that bundle; any other unknown name raises UnknownSku."""
    try:
        key = canonical(sku)
    except UnknownSku:
        key = sku.strip().lower()
        if root is None and (found := profiled_bundle(key)) is not None:
            return Predictor.from_bundle(Bundle.load(found), found)
        if not (bundle_dir(key, root) / "bundle.json").exists():
            raise
    path = bundle_dir(key, root)
    if (path / "bundle.json").exists():
        return Predictor.from_bundle(Bundle.load(path), path)
    log.warning("predictor.roofline_only", sku=key,
                reason="no trained bundle for this SKU: roofline and analytical models only")
    return Predictor(key, Hardware.from_spec(spec(key)))
