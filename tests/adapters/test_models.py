"""The bundled model configs: found by name whatever its case, one cached folder a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from revati.adapters import models


def test_a_bundled_name_is_found_whatever_its_case() -> None:
    assert models.canonical("llama-3.1-70b") == "Llama-3.1-70B"
    assert models.canonical("QWEN3-8B") == "Qwen3-8B"
    assert models.config("mixtral-8x7b") == models.config("Mixtral-8x7B")
    with pytest.raises(KeyError, match=r"unknown model .Llama-4.; bundled models: .*Qwen3-8B"):
        models.canonical("Llama-4")


def test_any_spelling_shares_the_canonical_models_folder(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVATI_CACHE", str(tmp_path))
    folder = models.model_dir("llama-tiny")
    assert folder.name.startswith("Llama-tiny-") and (folder / "tokenizer.json").is_file()
    assert models.model_dir("Llama-tiny") == folder
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]
