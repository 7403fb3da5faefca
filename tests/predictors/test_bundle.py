"""SKU bundles: save/load round trips, provenance, compact model dumps, size."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from revati.predictors import vidur
from revati.predictors.bundle import BUNDLES_DIR, Bundle, BundleError, available
from revati.predictors.dataset import event
from revati.predictors.launch import Collective, Family
from revati.predictors.models import compact_model_text
from revati.predictors.registry import Predictor
from tests.predictors.events import attention, gemm, memory

EVENTS = [
    *(gemm(m, n, 4096) for m in (1, 3, 100, 1000, 8192) for n in (1024, 4096, 14336)),
    *(memory(op, 4 * t * 4096 + 8192, t * 4096) for op in
      ("vllm::rms_norm", "aten::add", "vllm::silu_and_mul", "aten::embedding", "aten::copy_")
      for t in (1, 64, 4096)),
    *(event(Family.COLLECTIVE, "c10d::allreduce_", "bf16", (Collective.ALL_REDUCE, b, r))
      for b in (4096, 1 << 20, 1 << 30) for r in (2, 8)),
    *(event(Family.P2P, "aten::copy_", "bf16", (b, 1)) for b in (1024, 1 << 24, 1 << 31)),
    attention([4096], [4096]), attention([100] * 64, [1] * 64),
]


@pytest.mark.parametrize("sku", ["a100", "h100", "a40"])
def test_shipped_bundle_round_trips(sku: str, tmp_path: Path) -> None:
    original = Bundle.load(BUNDLES_DIR / sku)
    original.save(tmp_path / sku)
    again = Bundle.load(tmp_path / sku)
    assert again.sku == original.sku and again.spec == original.spec
    assert again.provenance == original.provenance and again.attention == original.attention
    assert {f: (m.text, m.coverage, m.rows) for f, m in again.models.items()} == \
        {f: (m.text, m.coverage, m.rows) for f, m in original.models.items()}
    assert Predictor.from_bundle(again).predict(EVENTS) == \
        Predictor.from_bundle(original).predict(EVENTS)
    # the files on disk are byte for byte what was loaded
    for name in ("bundle.json", *(p.name for p in (BUNDLES_DIR / sku).glob("*.lgb"))):
        assert (tmp_path / sku / name).read_text() == (BUNDLES_DIR / sku / name).read_text()


def test_shipped_bundles_are_small() -> None:
    assert available() == ["a100", "a40", "h100"]
    total = sum(p.stat().st_size for p in BUNDLES_DIR.glob("*/*"))
    assert total < 400_000, total


@pytest.mark.parametrize("sku", ["a100", "h100", "a40"])
def test_provenance(sku: str) -> None:
    prov = Bundle.load(BUNDLES_DIR / sku).provenance
    assert prov["lightgbm"] == lgb.__version__
    assert len(prov["git_commit"]) == 40 and prov["created"].startswith("20")
    assert prov["spec_source"] == "specs.json"
    paths = [d["path"] for d in prov["data"]]
    assert any(p.endswith(f"compute/{sku}/meta-llama/Llama-2-7b-hf/mlp.csv") for p in paths)
    assert any(f"network/{vidur.SKU_DATA[sku][1]}/send_recv.csv" in p for p in paths)
    assert all(len(d["sha256"]) == 64 for d in prov["data"])


@pytest.mark.parametrize("sku", ["a100", "h100", "a40"])
def test_provenance_hashes_match_the_data(sku: str, vidur_root: Path) -> None:
    for d in Bundle.load(BUNDLES_DIR / sku).provenance["data"]:
        rel = d["path"].split("data/vidur/", 1)[1]
        assert hashlib.sha256((vidur_root / rel).read_bytes()).hexdigest() == d["sha256"], rel


def test_compact_dump_predicts_like_the_full_one() -> None:
    rng = np.random.default_rng(0)
    X = np.round(rng.random((3000, 4)) * [10, 1, 100, 3], 4)
    X[:, 3] = np.floor(X[:, 3])
    y = np.sin(X[:, 0]) + X[:, 1] ** 2 + np.log1p(X[:, 2]) + X[:, 3]
    booster = lgb.train({"verbose": -1, "num_leaves": 31, "num_threads": 1},
                        lgb.Dataset(X, y, categorical_feature=[3]), 60)
    full = booster.model_to_string()
    text = compact_model_text(full)
    assert len(text) < len(full) / 2
    assert "leaf_count" not in text and "[learning_rate" not in text
    compact = lgb.Booster(model_str=text)
    assert np.abs(compact.predict(X) - booster.predict(X)).max() < 1e-4


def test_bundle_format_is_checked(tmp_path: Path) -> None:
    Bundle.load(BUNDLES_DIR / "a100").save(tmp_path / "a100")
    meta = json.loads((tmp_path / "a100" / "bundle.json").read_text())
    meta["format"] = 99
    (tmp_path / "a100" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format 99"):
        Bundle.load(tmp_path / "a100")
    with pytest.raises(BundleError, match="cannot read"):
        Bundle.load(tmp_path / "missing")
