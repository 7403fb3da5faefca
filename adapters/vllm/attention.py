"""Revati's attention backend for vLLM: FlashAttention's place, as launch events.

The metadata builder reads the batch composition from vLLM's CPU-side metadata (query start
locations and context lengths) once per step; every layer's `forward` then emits the
attention kernel with those features (and the KV-cache write that precedes it) and leaves the
pre-allocated output as it is: values of activations are never computed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionCGSupport,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)

from revati.adapters.attention_batch import AttentionBatch, batch_of, launch_attention
from revati.adapters.cuda import graphs, launch
from revati.adapters.cuda.ops import dtype_name
from revati.predictors.launch import Family

ATTENTION_OP = "vllm::flash_attn_varlen"
KV_WRITE_OP = "vllm::reshape_and_cache_flash"


class RevatiAttentionBackend(AttentionBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16,
                                                     torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[Any]] = ["auto", "float16", "bfloat16",
                                                      "fp8", "fp8_e4m3", "fp8_e5m2"]
    forward_includes_kv_cache_update = True

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec: Any = None) -> list[Any]:
        return [MultipleOf(16)]  # FlashAttention's paged KV granularity

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"

    @staticmethod
    def get_impl_cls() -> type[RevatiAttentionImpl]:
        return RevatiAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[RevatiAttentionMetadataBuilder]:
        return RevatiAttentionMetadataBuilder

    @classmethod
    def supports_attn_type(cls, attn_type: str) -> bool:
        return attn_type in (AttentionType.DECODER, AttentionType.ENCODER_ONLY)

    @classmethod
    def supports_sliding_window(cls) -> bool:
        return True

    @classmethod
    def supports_non_causal(cls) -> bool:
        return True


class RevatiAttentionMetadataBuilder(AttentionMetadataBuilder[AttentionBatch]):
    # Replays of a captured graph re-emit attention with each step's batch (graphs.py).
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.ALWAYS

    def __init__(self, kv_cache_spec: Any, layer_names: list[str], vllm_config: Any,
                 device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self._init_reorder_batch_threshold(1)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> AttentionBatch:
        cm = common_attn_metadata
        n = cm.num_reqs
        q = np.diff(cm.query_start_loc_cpu[: n + 1].numpy())
        kv_t = cm.seq_lens_cpu_upper_bound
        kv = kv_t[:n].numpy() if kv_t is not None else q
        batch = batch_of(q, kv, bool(cm.causal))
        for name in self.layer_names:
            current.batches[name] = batch
        return batch


class _Current:
    """The batch of the step being built, per attention layer: a layer's attention is a
    dynamic node (a replayed graph or forward template re-emits it with each step's batch)."""

    def __init__(self) -> None:
        self.batches: dict[str, AttentionBatch] = {}


current = _Current()


class RevatiAttentionImpl(AttentionImpl[AttentionBatch]):
    def __init__(self, num_heads: int, head_size: int, scale: float,
                 num_kv_heads: int | None = None, alibi_slopes: list[float] | None = None,
                 sliding_window: int | None = None, kv_cache_dtype: str = "auto",
                 logits_soft_cap: float | None = None, attn_type: str = AttentionType.DECODER,
                 kv_sharing_target_layer_name: str | None = None, **_: Any) -> None:
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads or num_heads
        self.sliding_window = sliding_window
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name

    def forward(self, layer: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                kv_cache: torch.Tensor, attn_metadata: AttentionBatch, output: torch.Tensor,
                output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        if attn_metadata is None:  # profiling run without KV caches
            return output
        args = (dtype_name(query.dtype), query.device.index or 0, self.num_heads,
                self.num_kv_heads, self.head_size,
                self.kv_sharing_target_layer_name is None and key is not None,
                dtype_name(kv_cache.dtype) if kv_cache.numel() else "bf16")
        graphs.dynamic(_LayerAttention(layer.layer_name, args))
        return output


class _LayerAttention:
    """A layer's attention as a dynamic node: launched with the batch of the step at hand."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, args: tuple[Any, ...]) -> None:
        self.name = name
        self.args = args

    def key(self) -> tuple[Any, ...]:
        return current.batches.get(self.name), self.args

    def __call__(self) -> None:
        emit(current.batches.get(self.name), *self.args)


def emit(b: AttentionBatch | None, dtype: str, dev: int, n_heads: int, n_kv_heads: int,
         head_dim: int, write_kv: bool, kv_dtype: str) -> None:
    """The kernels one attention layer launches for batch `b`."""
    if b is None:
        return
    if write_kv:
        elements = b.num_tokens * n_kv_heads * head_dim
        itemsize = 1 if kv_dtype in ("fp8", "int8") else 2
        # K and V read once and written once into their cache slots
        launch(Family.MEMORY, KV_WRITE_OP, dtype, (4 * elements * itemsize, 2 * elements),
               dev)
    launch_attention(b, ATTENTION_OP, dtype, dev, (n_heads, n_kv_heads, head_dim))
