"""Launch events for the predictor tests."""

from __future__ import annotations

from revati.predictors.dataset import event
from revati.predictors.launch import Family, LaunchEvent


def gemm(m: int, n: int, k: int, batch: int = 1, dtype: str = "bf16") -> LaunchEvent:
    return event(Family.GEMM, "aten::mm", dtype, (m, n, k, batch))


def memory(op: str, nbytes: int, elements: int, dtype: str = "bf16") -> LaunchEvent:
    return event(Family.MEMORY, op, dtype, (nbytes, elements))


def attention(seq_lens: list[int], q_lens: list[int], heads: int = 32, kv_heads: int = 8,
              head_dim: int = 128, op: str = "aten::scaled_dot_product_attention",
              dtype: str = "bf16") -> LaunchEvent:
    """An attention launch over sequences with these KV lengths and new-token counts."""
    return event(Family.ATTENTION, op, dtype, (
        len(seq_lens), sum(q_lens), sum(seq_lens), max(seq_lens),
        sum(s * s for s in seq_lens), heads, kv_heads, head_dim, 1))
