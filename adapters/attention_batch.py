"""A serving step's batch as attention kernels see it, for the framework attention backends
(vLLM, SGLang): read once per step from the framework's host-side lengths, launched by every
layer (or, inside a CUDA graph, by every replay) with the features of
revati.predictors.launch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from revati.adapters.cuda import launch
from revati.predictors.launch import Family

Part = tuple[int, int, int, int, int]  # (num_seqs, q_tokens, kv_sum, kv_max, kv_sq_sum)


def part(q_lens: np.ndarray, kv_lens: np.ndarray) -> Part | None:
    if len(q_lens) == 0:
        return None
    kv = kv_lens.astype(np.int64)
    return (len(q_lens), int(q_lens.sum()), int(kv.sum()), int(kv.max()), int((kv * kv).sum()))


@dataclass
class AttentionBatch:
    """The decode rows and the prefill rows (None where there are none). FlashAttention runs a
    mixed batch as one varlen kernel whose cost is that of its two parts; the predictors model
    each part best on its own."""

    decode: Part | None
    prefill: Part | None
    num_tokens: int = 0
    causal: bool = True


# Batches of up to this many rows are summed in Python: a step's dozen numpy calls cost 2-7 us
# each in a serving process (its caches cold from the framework's own work), a row 0.2 us.
ROW_LOOP_ROWS = 32


def batch_of(q_lens: np.ndarray, kv_lens: np.ndarray, causal: bool = True) -> AttentionBatch:
    """From per-request query and context lengths; rows with no query tokens (padding a
    graph's batch) are left out."""
    if len(q_lens) <= ROW_LOOP_ROWS:
        return _batch_of_rows(q_lens.tolist(), kv_lens.tolist(), causal)
    is_decode, is_prefill = q_lens == 1, q_lens > 1
    return AttentionBatch(part(q_lens[is_decode], kv_lens[is_decode]),
                          part(q_lens[is_prefill], kv_lens[is_prefill]),
                          int(q_lens.sum()), causal)


def _batch_of_rows(q_lens: list[int], kv_lens: list[int], causal: bool) -> AttentionBatch:
    """batch_of over Python ints, row by row."""
    decode_q: list[int] = []
    decode_kv: list[int] = []
    prefill_q: list[int] = []
    prefill_kv: list[int] = []
    for q, kv in zip(q_lens, kv_lens, strict=True):
        if q == 1:
            decode_q.append(q)
            decode_kv.append(kv)
        elif q > 1:
            prefill_q.append(q)
            prefill_kv.append(kv)
    return AttentionBatch(_part_of_rows(decode_q, decode_kv),
                          _part_of_rows(prefill_q, prefill_kv), sum(q_lens), causal)


def _part_of_rows(q_lens: list[int], kv_lens: list[int]) -> Part | None:
    """part() over Python ints."""
    if not q_lens:
        return None
    return (len(q_lens), sum(q_lens), sum(kv_lens), max(kv_lens),
            sum(kv * kv for kv in kv_lens))


def launch_attention(b: AttentionBatch | None, op: str, dtype: str, device: int,
                     heads: tuple[int, int, int]) -> None:
    """The attention kernels of one layer: `heads` = (q heads, kv heads, head dim)."""
    if b is None:
        return
    for p in (b.decode, b.prefill):
        if p is not None:
            launch(Family.ATTENTION, op, dtype, (*p, *heads, int(b.causal)), device)
