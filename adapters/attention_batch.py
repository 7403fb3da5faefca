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


def batch_of(q_lens: np.ndarray, kv_lens: np.ndarray, causal: bool = True) -> AttentionBatch:
    """From per-request query and context lengths; rows with no query tokens (padding a
    graph's batch) are left out."""
    is_decode, is_prefill = q_lens == 1, q_lens > 1
    return AttentionBatch(part(q_lens[is_decode], kv_lens[is_decode]),
                          part(q_lens[is_prefill], kv_lens[is_prefill]),
                          int(q_lens.sum()), causal)


def launch_attention(b: AttentionBatch | None, op: str, dtype: str, device: int,
                     heads: tuple[int, int, int]) -> None:
    """The attention kernels of one layer: `heads` = (q heads, kv heads, head dim)."""
    if b is None:
        return
    for p in (b.decode, b.prefill):
        if p is not None:
            launch(Family.ATTENTION, op, dtype, (*p, *heads, int(b.causal)), device)
