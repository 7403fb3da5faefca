"""The predictors CLI: `python -m revati.predictors` (what `revatictl predictors` runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from revati.predictors import cli


def test_list(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["list", "--json"]) == 0
    rows = {r["sku"]: r for r in json.loads(capsys.readouterr().out)}
    for sku in ("a100", "h100", "a40"):
        assert rows[sku]["bundle"] and "GEMM" in rows[sku]["families"]
    assert rows["h200"]["bundle"] is None and rows["h200"]["name"] == "NVIDIA H200"
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert "roofline only" in text and "bundle (collective, gemm, memory, p2p" in text


def test_module_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "revati.predictors", "list"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "a100" in r.stdout
    r = subprocess.run([sys.executable, "-m", "revati.predictors", "frobnicate"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_eval_errors(tmp_path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["eval", "--sku", "a100", "--vidur-csv", str(tmp_path / "none.csv")]) == 2
    assert "no file" in capsys.readouterr().err
    (tmp_path / "mlp.csv").write_text("x\n")
    assert cli.main(["eval", "--sku", "tpu-v5", "--vidur-csv", str(tmp_path / "mlp.csv")]) == 2
    assert "unknown GPU SKU" in capsys.readouterr().err


def test_train_without_data_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "profile"
    empty.mkdir()
    out = str(tmp_path / "bundles")
    assert cli.main(["train", "--sku", "h100", "--profile", str(empty), "--no-vidur",
                     "--out", out]) == 2
    assert "no training data for h100: the profile folders hold no measurements (--no-vidur)" \
        in capsys.readouterr().err
    assert cli.main(["train", "--sku", "l40s", "--out", out]) == 2
    assert "no training data for l40s: give --profile DIR (no Vidur data for this SKU)" in \
        capsys.readouterr().err


def test_a_known_sku_takes_its_measured_wake_from_the_profile(tmp_path: Path) -> None:
    """specs.json holds an H100's figures; only a profile knows how it slows after idle."""
    from revati.predictors.skus import spec

    wake = {"gaps_s": [0.01], "kick_s": [1e-4], "slowdown": [0.05], "decay_s": 0.02}
    prof = tmp_path / "h100"
    prof.mkdir()
    (prof / "spec.json").write_text(json.dumps({"name": "NVIDIA H100", "flops": {}}))
    key, entry, source = cli._sku_spec("H100", [prof])
    assert (key, entry, source) == ("h100", spec("h100"), "specs.json")
    (prof / "spec.json").write_text(json.dumps({"name": "NVIDIA H100", "wake": wake}))
    key, entry, source = cli._sku_spec("H100", [prof])
    assert entry == {**spec("h100"), "wake": wake} and "wake from profile:h100" in source
