"""Training: leave-one-model-out accuracy on the Vidur data (the acceptance check), bundles
from profile folders, attention calibration, and `eval` on a model a bundle has not seen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from revati.predictors import cli, training, vidur
from revati.predictors.attention import AttentionModel, Calibration, calibrate
from revati.predictors.dataset import Measured, event, write_profile
from revati.predictors.launch import Family
from revati.predictors.registry import load_predictor
from revati.predictors.roofline import Hardware
from revati.predictors.skus import spec
from tests.predictors.events import attention, gemm

GEMM_TARGET = 5.0  # median absolute percentage error, per operator, on held-out models
MEMORY_TARGET = 10.0


@pytest.fixture(scope="module")
def lomo(vidur_root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """LOMO on every GPU of the Vidur data (trains 2 x 18 models: about 20 s on 2 cores)."""
    return {sku: training.lomo(sku, spec(sku), vidur_root) for sku in sorted(vidur.SKU_DATA)}


@pytest.mark.parametrize("sku", sorted(vidur.SKU_DATA))
@pytest.mark.parametrize("operator", vidur.GEMM_OPERATORS)
def test_lomo_gemm(lomo: dict, sku: str, operator: str) -> None:
    stats = lomo[sku][operator]
    assert stats["count"] > 1000
    assert stats["median_ape"] < GEMM_TARGET, stats


@pytest.mark.parametrize("sku", sorted(vidur.SKU_DATA))
@pytest.mark.parametrize("operator", vidur.MEMORY_OPERATORS)
def test_lomo_memory(lomo: dict, sku: str, operator: str) -> None:
    stats = lomo[sku][operator]
    assert stats["count"] > 1000
    assert stats["median_ape"] < MEMORY_TARGET, stats


def test_eval_on_a_model_the_bundle_was_not_trained_on(vidur_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    held = "meta-llama/Llama-2-7b-hf"
    assert cli.main(["train", "--sku", "a100", "--exclude", held, "--out", str(tmp_path)]) == 0
    groups = json.loads((tmp_path / "a100" / "bundle.json").read_text())["provenance"]["groups"]
    assert held not in groups and "meta-llama/Meta-Llama-3-8B" in groups
    capsys.readouterr()
    csv = vidur_root / "compute" / "a100" / held / "mlp.csv"
    assert cli.main(["eval", "--sku", "a100", "--vidur-csv", str(csv), "--json",
                     "--bundles", str(tmp_path)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert list(stats) == [*vidur.GEMM_OPERATORS, *vidur.MEMORY_OPERATORS]
    for op, s in stats.items():
        assert set(s) == {"count", "median_ape", "p90_ape"}
        assert s["count"] == 1044 and 0 <= s["median_ape"] <= s["p90_ape"], op
    assert max(stats[op]["median_ape"] for op in vidur.GEMM_OPERATORS) < 10
    assert cli.main(["eval", "--sku", "a100", "--vidur-csv", str(csv),
                     "--bundles", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "attn_pre_proj" in table and "median %" in table


def test_exclude_must_name_a_measured_model(vidur_root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--sku", "h100", "--exclude", "meta-llama/Meta-Llama-3-8B",
                     "--out", str(tmp_path)]) == 2  # measured on the a100 only
    assert "no Vidur model ['meta-llama/Meta-Llama-3-8B'] for h100" in capsys.readouterr().err


def _synthetic_profile(directory: Path) -> None:
    """A device whose GEMMs run at 100 GFLOP/s plus 5 us, and attention with known
    efficiencies, written as profiler output with a spec.json."""
    directory.mkdir()
    rows = []
    for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        for n, k in ((512, 512), (1024, 1024), (2048, 512), (512, 2048)):
            t = 2 * m * n * k / 100e9 * 1e9 + 5000
            rows.append({"family": "GEMM", "op": "aten::mm", "dtype": "fp32",
                         "feats": f"{m} {n} {k} 1", "median_ns": round(t), "p10_ns": round(t),
                         "p90_ns": round(t), "repeats": 5, "device_name": "Test CPU",
                         "driver": "", "libraries": "torch=2.13.0"})
    write_profile(directory / "gemm.csv", rows)
    hw_spec = {"name": "Test CPU", "aliases": [], "flops": {"fp32": 100e9},
               "hbm_bytes_per_s": 20e9, "launch_overhead_s": 5e-6, "sm_count": 2,
               "interconnect": {"bytes_per_s": 20e9, "latency_s": 5e-6},
               "pcie": {"bytes_per_s": 20e9, "latency_s": 5e-6}}
    hw = Hardware.from_spec(hw_spec)
    truth = AttentionModel(hw, {"SDPA": Calibration(0.4, 0.3, 8000.0)})
    events = [attention([s] * b, [q] * b, heads=8, kv_heads=2, head_dim=64, dtype="fp32")
              for b in (1, 4) for s in (64, 256, 1024) for q in (1, s)]
    times = truth.predict_ns(events)
    write_profile(directory / "attention.csv", [
        {"family": "ATTENTION", "op": e.op, "dtype": e.dtype,
         "feats": " ".join(map(str, e.feats)), "median_ns": round(t), "p10_ns": round(t),
         "p90_ns": round(t), "repeats": 5, "device_name": "Test CPU", "driver": "",
         "libraries": ""} for e, t in zip(events, times, strict=True)])
    (directory / "spec.json").write_text(json.dumps(hw_spec))


def test_bundle_from_a_profile_of_a_device_not_in_specs(tmp_path: Path) -> None:
    """`train --sku host-cpu --profile DIR` builds a bundle from our own profile CSVs; the
    registry loads it by name although specs.json does not list it."""
    _synthetic_profile(tmp_path / "profile")
    out = tmp_path / "bundles"
    assert cli.main(["train", "--sku", "host-cpu", "--profile", str(tmp_path / "profile"),
                     "--out", str(out)]) == 0
    p = load_predictor("host-cpu", out)
    assert p.sku == "host-cpu" and p.hw.name == "Test CPU" and set(p.models) == {Family.GEMM}
    ev = gemm(100, 1024, 1024, dtype="fp32")  # not a profiled m
    assert p.source(ev) == "lightgbm"
    assert p.predict([ev])[0] == pytest.approx(2 * 100 * 1024 * 1024 / 100e9 * 1e9 + 5000,
                                               rel=0.1)
    # attention: the calibration recovers the device's efficiencies
    c = p.attention.calibrations["SDPA"]
    assert (c.compute_eff, c.memory_eff) == pytest.approx((0.4, 0.3), rel=0.1)
    prov = json.loads((out / "host-cpu" / "bundle.json").read_text())["provenance"]
    assert prov["spec_source"] == "profile:profile/spec.json"
    assert {Path(d["path"]).name for d in prov["data"]} == {"attention.csv", "gemm.csv"}


def test_train_needs_a_sku_for_profiles(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["train", "--profile", str(tmp_path)]) == 2
    assert "--profile needs --sku" in capsys.readouterr().err
    assert cli.main(["train", "--sku", "tpu-v5", "--profile", str(tmp_path)]) == 2
    assert "unknown GPU SKU 'tpu-v5'" in capsys.readouterr().err


def test_calibrate_recovers_efficiencies() -> None:
    hw = Hardware.from_spec(spec("h100"))
    truth = Calibration(0.62, 0.81, 4000.0)
    events = [attention([s] * b, [q] * b) for b in (1, 8, 64) for s in (256, 2048, 16384)
              for q in (1, s)]
    times = AttentionModel(hw, {"SDPA": truth}).predict_ns(events)
    got = calibrate(events, times, hw)
    assert (got.compute_eff, got.memory_eff) == pytest.approx((0.62, 0.81), rel=0.08)
    assert got.fixed_ns == pytest.approx(4000, rel=0.5)


def test_missing_vidur_data_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("REVATI_VIDUR_DATA", "/nonexistent/vidur")
    with pytest.raises(vidur.DataMissing, match="REVATI_VIDUR_DATA"):
        vidur.data_dir()
    assert cli.main(["lomo", "--sku", "a100"]) == 2
    assert "Vidur data not found at /nonexistent/vidur" in capsys.readouterr().err


def test_transfers_are_trained_monotone() -> None:
    """Measured times that jitter between protocols still give a model monotone in bytes."""
    hw = Hardware.from_spec(spec("a100"))
    sizes = [2048 * 2**i for i in range(16)]
    rng = np.random.default_rng(1)
    measured = [Measured("all_reduce", (event(Family.COLLECTIVE, "c10d::allreduce_",
                                                       "bf16", (0, b, 4)),),
                                  20_000 * rng.choice([1, 3]) + b / 100, "test")
                for b in sizes for _ in range(4)]
    models, _ = training.train_models(measured, hw, (Family.COLLECTIVE,))
    t = models[Family.COLLECTIVE].predict_ns(
        [event(Family.COLLECTIVE, "c10d::allreduce_", "bf16", (0, b, 4))
         for b in range(1024, 1 << 32, 1 << 26)], hw)
    assert (np.diff(t) >= 0).all()
