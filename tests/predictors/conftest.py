"""Fixtures for the predictor tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from revati.predictors import vidur


@pytest.fixture(scope="session")
def vidur_root() -> Path:
    """The Vidur data folder; tests that train on it skip, saying why, where it is missing
    (set REVATI_VIDUR_DATA)."""
    try:
        return vidur.data_dir()
    except vidur.DataMissing as exc:
        pytest.skip(str(exc))
