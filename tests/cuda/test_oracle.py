"""The token oracle: ids for values read back that no kernel computed."""

from __future__ import annotations

import numpy as np
import pytest

from revati.adapters.cuda import TokenOracle


def test_deterministic_per_seed() -> None:
    a, b = TokenOracle(1000, seed=5), TokenOracle(1000, seed=5)
    assert a.tokens(64).tolist() == b.tokens(64).tolist()
    assert TokenOracle(1000, seed=6).tokens(64).tolist() != TokenOracle(1000, seed=5).tokens(
        64).tolist()


def test_never_eos_unless_asked() -> None:
    eos = [0, 2, 999]
    ids = TokenOracle(1000, eos_ids=eos, seed=1).tokens(100_000)
    assert ids.min() >= 0 and ids.max() < 1000
    assert not np.isin(ids, eos).any()
    assert len(np.unique(ids)) == 997  # every other id can come out
    some = TokenOracle(1000, eos_ids=eos, seed=1, eos_rate=0.1).tokens(10_000)
    assert 0.05 < np.isin(some, eos).mean() < 0.15


def test_bad_vocabularies() -> None:
    with pytest.raises(ValueError):
        TokenOracle(0)
    with pytest.raises(ValueError):
        TokenOracle(2, eos_ids=[0, 1])


@pytest.mark.torch
def test_fill() -> None:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    ids, probs = torch.empty(8, dtype=torch.int32), torch.ones(8)
    oracle = TokenOracle(50, eos_ids=[7], seed=0)
    oracle.fill(ids)
    oracle.fill(probs)
    assert all(0 <= i < 50 and i != 7 for i in ids.tolist())
    assert probs.tolist() == [0.0] * 8
