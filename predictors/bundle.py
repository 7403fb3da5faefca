"""SKU bundles: the specs a SKU's models were trained with, the models, the attention
calibration and the provenance, as small files in one folder:

  <dir>/bundle.json     sku, spec, models (family -> file, coverage, rows), attention
                        calibration per backend, provenance (data files and their sha256,
                        date, library versions, git commit)
  <dir>/<family>.lgb    compact LightGBM text dump per trained family

The shipped bundles live in predictors/bundles/<sku>/.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from revati.predictors.attention import Calibration
from revati.predictors.launch import Family
from revati.predictors.models import FamilyModel, coverage_from_json, coverage_to_json

BUNDLES_DIR = Path(__file__).resolve().parent / "bundles"
FORMAT = 1


class BundleError(ValueError):
    pass


@dataclass
class Bundle:
    sku: str
    spec: dict[str, Any]  # the specs.json entry (or the profiled device's) the models saw
    models: dict[Family, FamilyModel] = field(default_factory=dict)
    attention: dict[str, Calibration] = field(default_factory=dict)  # by backend name
    provenance: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.lgb"):
            stale.unlink()
        models = {}
        for family, model in sorted(self.models.items()):
            name = f"{family.name.lower()}.lgb"
            (directory / name).write_text(model.text)
            models[family.name] = {"file": name, "rows": model.rows,
                                   "coverage": coverage_to_json(model.coverage)}
        meta = {"format": FORMAT, "sku": self.sku, "spec": self.spec, "models": models,
                "attention": {k: asdict(v) for k, v in sorted(self.attention.items())},
                "provenance": self.provenance}
        (directory / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Bundle:
        try:
            meta = json.loads((directory / "bundle.json").read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"cannot read bundle {directory}: {exc}") from None
        if meta.get("format") != FORMAT:
            raise BundleError(f"bundle {directory} has format {meta.get('format')!r}, "
                              f"this revati reads {FORMAT}; retrain it")
        models = {}
        for name, m in meta["models"].items():
            family = Family[name]
            models[family] = FamilyModel(family, (directory / m["file"]).read_text(),
                                         coverage_from_json(m["coverage"]), m["rows"])
        attention = {k: Calibration(**v) for k, v in meta["attention"].items()}
        return cls(meta["sku"], meta["spec"], models, attention, meta["provenance"])


def bundle_dir(sku: str, root: Path | None = None) -> Path:
    return (root or BUNDLES_DIR) / sku


def available(root: Path | None = None) -> list[str]:
    """SKUs with a bundle under `root` (the shipped bundles by default)."""
    base = root or BUNDLES_DIR
    return sorted(p.parent.name for p in base.glob("*/bundle.json"))
