"""A step's attention batch (adapters/attention_batch.py): small batches are summed row by row
in Python, larger ones with numpy; both give the same parts."""

from __future__ import annotations

import numpy as np
import pytest

from revati.adapters import attention_batch
from revati.adapters.attention_batch import AttentionBatch, batch_of


def test_a_mixed_batch_splits_into_decode_and_prefill_rows() -> None:
    q = np.array([1, 0, 7, 1, 3], dtype=np.int32)  # a padding row with no query tokens
    kv = np.array([40, 1, 7, 9, 103], dtype=np.int32)
    assert batch_of(q, kv) == AttentionBatch(decode=(2, 2, 49, 40, 40 * 40 + 9 * 9),
                                             prefill=(2, 10, 110, 103, 7 * 7 + 103 * 103),
                                             num_tokens=12, causal=True)
    assert batch_of(np.ones(3, dtype=np.int64), np.array([5, 6, 7])).prefill is None


@pytest.mark.parametrize("rows", [0, 1, 5, 32])
def test_the_row_loop_and_numpy_agree(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(rows)
    for _ in range(50):
        q = rng.choice([0, 1, 1, 1, 2, 17, 512], size=rows).astype(np.int32)
        kv = (q + rng.integers(0, 70_000, size=rows)).astype(np.int32)  # kv^2 past int32
        causal = bool(rng.integers(0, 2))
        by_rows = batch_of(q, kv, causal)
        monkeypatch.setattr(attention_batch, "ROW_LOOP_ROWS", -1)
        assert batch_of(q, kv, causal) == by_rows
        monkeypatch.undo()
        for p in (by_rows.decode, by_rows.prefill):
            assert p is None or all(type(x) is int for x in p)
