"""A trained per-family model: a LightGBM booster over `features.model_inputs`, and the
coverage that says which events it may answer for."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import lightgbm as lgb
import numpy as np

from revati.predictors.features import TRANSFER_BYTES, model_inputs
from revati.predictors.launch import Family, LaunchEvent
from revati.predictors.roofline import Hardware, roofline_ns

# What prediction needs of a LightGBM text dump; the rest (gains, counts, internal values, the
# training parameters) triples its size.
_HEADER_KEYS = {"tree", "version", "num_class", "num_tree_per_iteration", "label_index",
                "max_feature_idx", "objective", "feature_names", "feature_infos"}
_TREE_KEYS = {"Tree", "num_leaves", "num_cat", "split_feature", "threshold", "decision_type",
              "left_child", "right_child", "leaf_value", "cat_boundaries", "cat_threshold",
              "is_linear", "shrinkage"}
# Features are rounded to features.FEATURE_DECIMALS, so a threshold (a midpoint between two
# feature values) lies at least 5e-5 from either: 8 significant digits keep it there for any
# feature below 1000 (larger ones are counts, far apart). Leaf values are log-time terms (up to
# ~20 for transfers), where 1e-5 is far below measurement noise. `training.fit` checks that the
# compact model predicts what the full one does.
_ROUNDED = {"threshold": "%.8g", "leaf_value": "%.6g"}


def compact_model_text(text: str) -> str:
    """A LightGBM model dump reduced to what prediction reads (tree_sizes is dropped too:
    without it LightGBM parses the trees in sequence)."""
    out, in_trees = [], False
    for line in text.splitlines():
        if line.startswith("end of trees"):
            out.append(line)
            break
        key, _, value = line.partition("=")
        in_trees = in_trees or key == "Tree"
        if not line:
            out.append(line)
        elif key in (_TREE_KEYS if in_trees else _HEADER_KEYS):
            fmt = _ROUNDED.get(key) if in_trees else None
            out.append(f"{key}={' '.join(fmt % float(v) for v in value.split())}" if fmt
                       else line)
    return "\n".join(out) + "\n"


def coverage_to_json(coverage: frozenset[Hashable] | None) -> list | None:
    return None if coverage is None else sorted(
        (list(c) if isinstance(c, tuple) else c for c in coverage), key=str)


def coverage_from_json(items: Iterable | None) -> frozenset[Hashable] | None:
    return None if items is None else frozenset(
        tuple(c) if isinstance(c, list) else c for c in items)


@dataclass
class FamilyModel:
    family: Family
    text: str  # compact LightGBM model dump, as saved in a bundle
    coverage: frozenset[Hashable] | None  # `features.coverage_key` values seen; None: all
    rows: int  # training rows

    def __post_init__(self) -> None:
        self.booster = lgb.Booster(model_str=self.text)

    def covers(self, key: Hashable) -> bool:
        return self.coverage is None or key in self.coverage

    def predict_ns(self, events: Sequence[LaunchEvent], hw: Hardware,
                   analytical_ns: np.ndarray | None = None) -> np.ndarray:
        if self.family in TRANSFER_BYTES:
            return self._transfer_ns(events, hw)
        X, base = model_inputs(self.family, events, hw, analytical_ns)
        # one thread: revatid predicts small batches in its event loop
        return np.exp(base + self.booster.predict(X, num_threads=1))

    def _transfer_ns(self, events: Sequence[LaunchEvent], hw: Hardware) -> np.ndarray:
        """A transfer outside the measured sizes: the nearest measured size's time, scaled
        by the roofline between the two (monotone, and bandwidth-bound growth beyond)."""
        i = TRANSFER_BYTES[self.family]
        lo, hi = self._measured_bytes
        clamped = []
        for e in events:
            f = list(e.feats)
            f[i] = min(max(f[i], lo), hi)
            clamped.append(e._replace(feats=tuple(f)))
        X, _ = model_inputs(self.family, clamped, hw)
        scale = roofline_ns(self.family, events, hw) / roofline_ns(self.family, clamped, hw)
        return np.exp(self.booster.predict(X, num_threads=1)) * scale

    @cached_property
    def _measured_bytes(self) -> tuple[int, int]:
        """The byte range of the training data, from the model's own feature_infos."""
        infos = next(line for line in self.text.splitlines()
                     if line.startswith("feature_infos=")).partition("=")[2].split()
        lo, hi = infos[self.booster.feature_name().index("log_bytes")].strip("[]").split(":")
        return round(2 ** float(lo)), round(2 ** float(hi))
