"""Training: LightGBM per family on measured times, attention calibration, SKU bundles,
leave-one-model-out (LOMO) evaluation and scoring against measured operator times."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from revati.predictors import vidur
from revati.predictors.attention import (
    ANY_BACKEND,
    AttentionModel,
    Calibration,
    attention_backend,
    calibrate,
)
from revati.predictors.bundle import Bundle
from revati.predictors.dataset import Measured, per_launch
from revati.predictors.features import (
    CATEGORICAL,
    MODEL_FEATURES,
    MONOTONE,
    coverage_key,
    model_inputs,
)
from revati.predictors.launch import Family, LaunchEvent
from revati.predictors.models import FamilyModel, compact_model_text
from revati.predictors.registry import Predictor
from revati.predictors.roofline import Hardware

_COMMON = {"objective": "l2", "verbose": -1, "seed": 0, "deterministic": True,
           "force_row_wise": True, "num_threads": 2, "min_data_in_leaf": 5}
# Sized for accuracy under LOMO per byte of model text (the shipped bundles stay near 100 KiB
# per SKU): 400-tree GEMM models measured at most 0.8 points better median APE on held-out
# models, for eight times the text.
PARAMS: dict[Family, dict[str, Any]] = {
    Family.GEMM: {"num_leaves": 63, "learning_rate": 0.2, "feature_fraction": 0.7},
    Family.MEMORY: {"num_leaves": 31, "learning_rate": 0.25, "min_data_in_leaf": 10},
    Family.COLLECTIVE: {"num_leaves": 7, "learning_rate": 0.2, "min_data_in_leaf": 10},
    Family.P2P: {"num_leaves": 7, "learning_rate": 0.2, "min_data_in_leaf": 10},
    Family.ATTENTION: {"num_leaves": 31, "learning_rate": 0.1},
}
ROUNDS = {Family.GEMM: 35, Family.MEMORY: 22, Family.COLLECTIVE: 30, Family.P2P: 30,
          Family.ATTENTION: 100}
MIN_ROWS = 30  # fewer measured shapes than this: no trained model (roofline / analytical)
MIN_CALIBRATION_ROWS = 8


def fit(family: Family, samples: Sequence[tuple[LaunchEvent, float]], hw: Hardware,
        attention: AttentionModel | None = None) -> FamilyModel:
    """A LightGBM model of log(time / reference) for one family (see features.py)."""
    events = [e for e, _ in samples]
    times = np.array([t for _, t in samples])
    analytical = attention.predict_ns(events) if family == Family.ATTENTION and attention \
        else None
    X, base = model_inputs(family, events, hw, analytical)
    names = MODEL_FEATURES[family]
    data = lgb.Dataset(X, np.log(times) - base, feature_name=list(names),
                       categorical_feature=list(CATEGORICAL.get(family, ())),
                       free_raw_data=True)
    monotone = [int(n in MONOTONE.get(family, ())) for n in names]
    # a small profile (a quick CPU grid) still gets leaves, and categories, of its own
    min_leaf = min(PARAMS[family].get("min_data_in_leaf", _COMMON["min_data_in_leaf"]),
                   max(2, len(samples) // 40))
    booster = lgb.train({**_COMMON, **PARAMS[family], "monotone_constraints": monotone,
                         "min_data_in_leaf": min_leaf,
                         "min_data_per_group": min(100, max(2, len(samples) // 20))},
                        data, ROUNDS[family])
    coverage = None if family == Family.P2P else frozenset(
        coverage_key(family, e.op, e.dtype, e.feats) for e in events)
    model = FamilyModel(family, compact_model_text(booster.model_to_string()), coverage,
                        len(samples))
    drift = np.abs(model.booster.predict(X) - booster.predict(X)).max()
    if drift > 1e-3:  # a rounded threshold moved a training shape to the other side of a split
        raise RuntimeError(f"compact {family.name} model drifts by {drift:.2g} (log time)")
    return model


def calibrate_attention(samples: Sequence[tuple[LaunchEvent, float]], hw: Hardware,
                        ) -> dict[str, Calibration]:
    """One analytical calibration per attention backend with enough measured points, and
    one over all of them (ANY) for backends that were not measured."""
    by_backend: dict[str, list[tuple[LaunchEvent, float]]] = defaultdict(list)
    for e, t in samples:
        by_backend[attention_backend(e.op).name].append((e, t))
        by_backend[ANY_BACKEND].append((e, t))
    return {name: calibrate([e for e, _ in rows], np.array([t for _, t in rows]), hw)
            for name, rows in by_backend.items() if len(rows) >= MIN_CALIBRATION_ROWS}


def train_models(measured: Iterable[Measured], hw: Hardware,
                 families: Iterable[Family] = tuple(PARAMS),
                 ) -> tuple[dict[Family, FamilyModel], dict[str, Calibration]]:
    by_family: dict[Family, list[tuple[LaunchEvent, float]]] = defaultdict(list)
    for ev, t in per_launch(measured):
        if t > 0:
            by_family[Family(ev.family)].append((ev, t))
    calibrations = calibrate_attention(by_family[Family.ATTENTION], hw)
    attention = AttentionModel(hw, calibrations)
    models = {f: fit(f, by_family[f], hw, attention) for f in families
              if len(by_family[f]) >= MIN_ROWS}
    return models, calibrations


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=vidur.REPO_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(files: Sequence[Path], spec_source: str, extra: Mapping[str, Any]) -> dict:
    """Which data (path relative to the repository, sha256), when, with which versions."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": [{"path": os.path.relpath(p, vidur.REPO_ROOT), "sha256": _sha256(p)}
                 for p in files],
        "spec_source": spec_source,
        "lightgbm": lgb.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "revati": metadata.version("revati"),
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        # uncommitted changes to the code that trained (the bundles themselves aside)
        "git_dirty_predictors": bool(_git("status", "--porcelain", "--", "predictors",
                                          ":(exclude)predictors/bundles")),
        "params": {f.name: {**PARAMS[f], "rounds": ROUNDS[f]} for f in PARAMS},
        **extra,
    }


def build_bundle(sku: str, spec: dict[str, Any], measured: Sequence[Measured],
                 files: Sequence[Path], spec_source: str) -> Bundle:
    hw = Hardware.from_spec(spec)
    models, calibrations = train_models(measured, hw)
    groups = sorted({m.group for m in measured})
    prov = provenance(files, spec_source, {
        "groups": groups, "rows": {f.name: m.rows for f, m in models.items()},
        "attention": "calibrated on profiled points" if calibrations else
        "uncalibrated defaults (no attention times in the training data)"})
    return Bundle(sku, spec, models, calibrations, prov)


# -- scoring

def predict_measured(predictor: Predictor, measured: Sequence[Measured]) -> np.ndarray:
    """Predicted time (ns) of each measurement: the sum over the launches it covers."""
    flat = [e for m in measured for e in m.events]
    durations = iter(predictor.predict(flat))
    return np.array([sum(next(durations) for _ in m.events) for m in measured], dtype=float)


def ape_stats(ape: np.ndarray) -> dict[str, float]:
    return {"count": len(ape), "median_ape": round(float(np.median(ape)), 2),
            "p90_ape": round(float(np.percentile(ape, 90)), 2)}


def score(predictor: Predictor, measured: Sequence[Measured]) -> dict[str, dict[str, float]]:
    """Count, median and p90 absolute percentage error per operator."""
    pred = predict_measured(predictor, measured)
    truth = np.array([m.time_ns for m in measured])
    ape = np.abs(pred / truth - 1) * 100
    ops = np.array([m.operator for m in measured])
    return {op: ape_stats(ape[ops == op]) for op in dict.fromkeys(ops.tolist())}


def lomo(sku: str, spec: dict[str, Any], root: Path | None = None,
         ) -> dict[str, dict[str, Any]]:
    """Leave-one-model-out on a SKU's Vidur compute data: per operator, the error pooled over
    every held-out row, and the worst held-out model's median."""
    hw = Hardware.from_spec(spec)
    data = vidur.compute_data(sku, root)
    groups = sorted({m.group for m in data})
    apes: dict[str, list[np.ndarray]] = defaultdict(list)
    worst: dict[str, tuple[float, str]] = {}
    for held in groups:
        train = [m for m in data if m.group != held]
        test = [m for m in data if m.group == held]
        models, _ = train_models(train, hw, (Family.GEMM, Family.MEMORY))
        pred = predict_measured(Predictor(sku, hw, models), test)
        truth = np.array([m.time_ns for m in test])
        ape = np.abs(pred / truth - 1) * 100
        ops = np.array([m.operator for m in test])
        for op in dict.fromkeys(ops.tolist()):
            apes[op].append(ape[ops == op])
            med = float(np.median(ape[ops == op]))
            if med > worst.get(op, (-1.0, ""))[0]:
                worst[op] = (med, held)
    return {op: {**ape_stats(np.concatenate(apes[op])),
                 "worst_model": worst[op][1], "worst_model_median_ape": round(worst[op][0], 2)}
            for op in (*vidur.GEMM_OPERATORS, *vidur.MEMORY_OPERATORS) if op in apes}
