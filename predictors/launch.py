"""The launch-event schema: what one virtual kernel launch tells revatid and the predictors.

Produced by the virtual CUDA adapter (one event per kernel), carried to revatid in msgpack
batches (an event is a plain tuple, so it packs as a short array; identical launches of a CUDA
graph replay travel as one run item with a count, revatid protocol v2, which leaves this
schema as it is), turned into features by
`revati.predictors.features` and into a duration by a predictor. Any change here is a protocol
change: bump `SCHEMA_VERSION`.

Feature tuples, per family (all integers):

  GEMM        (m, n, k, batch)                  C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]
  ATTENTION   (num_seqs, q_tokens, kv_sum, kv_max, kv_sq_sum, n_heads, n_kv_heads, head_dim,
               causal)                          prefill when q_tokens > num_seqs, else decode
  MEMORY      (bytes, elements)                 norms, activations, rotary, adds, copies, embeddings
  SAMPLING    (batch, vocab)
  COLLECTIVE  (kind, bytes, ranks)              kind: a `Collective` value; bytes per rank
  P2P         (bytes, peer)
  HOST_COPY   (bytes, direction)                direction: a `CopyDirection` value
  GRAPH       (graph_id,)                       one replay of a captured CUDA graph
  OTHER       (bytes, elements)                 anything unclassified: roofline on bytes

`dtype` is a short name: "fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int32", "int64", "bool".
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

SCHEMA_VERSION = 1


class Family(IntEnum):
    GEMM = 0
    ATTENTION = 1
    MEMORY = 2
    SAMPLING = 3
    COLLECTIVE = 4
    P2P = 5
    HOST_COPY = 6
    GRAPH = 7
    OTHER = 8


class Collective(IntEnum):
    ALL_REDUCE = 0
    ALL_GATHER = 1
    REDUCE_SCATTER = 2
    BROADCAST = 3
    ALL_TO_ALL = 4
    BARRIER = 5
    # A serving framework's own all-reduce kernel (peer memory over NVLink, no NCCL), which
    # vLLM and SGLang run for a tensor-parallel group's small all-reduces (adapters/cuda/
    # distributed.py, `custom_all_reduce`)
    CUSTOM_ALL_REDUCE = 6


class CopyDirection(IntEnum):
    H2D = 0
    D2H = 1
    D2D = 2


class LaunchEvent(NamedTuple):
    """One kernel launch on a virtual GPU stream."""

    family: int  # a Family value
    op: str  # kernel or op name, e.g. "aten::mm", "vllm::rms_norm"
    dtype: str
    device: int
    stream: int  # stream id, unique per device within a process
    t_ns: int  # virtual time of the launch (host side), ns
    feats: tuple[int, ...]


FEATURE_NAMES: dict[Family, tuple[str, ...]] = {
    Family.GEMM: ("m", "n", "k", "batch"),
    Family.ATTENTION: (
        "num_seqs", "q_tokens", "kv_sum", "kv_max", "kv_sq_sum",
        "n_heads", "n_kv_heads", "head_dim", "causal",
    ),
    Family.MEMORY: ("bytes", "elements"),
    Family.SAMPLING: ("batch", "vocab"),
    Family.COLLECTIVE: ("kind", "bytes", "ranks"),
    Family.P2P: ("bytes", "peer"),
    Family.HOST_COPY: ("bytes", "direction"),
    Family.GRAPH: ("graph_id",),
    Family.OTHER: ("bytes", "elements"),
}

DTYPE_BYTES: dict[str, int] = {
    "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1,
    "int32": 4, "int64": 8, "bool": 1, "uint8": 1, "int16": 2, "fp64": 8,
}
