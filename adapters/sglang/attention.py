"""Revati's attention backend for SGLang ("revati"): FlashAttention's place, as launch events.

`init_forward_metadata` reads the step's batch composition from the ForwardBatch's host-side
fields once per step (query lengths, KV lengths); every layer's `forward_extend` /
`forward_decode` then writes K and V into SGLang's own KV pool (a real index write on virtual
tensors: a MEMORY launch) and emits one ATTENTION launch per part of the batch (decode rows,
prefill rows), with the features of revati.predictors.launch. The output is allocated and left
as it is: activations are never computed.

CUDA graphs (SGLang's decode runner, "full" backend, over Revati's virtual CUDAGraph): the runner
calls `init_forward_metadata_out_graph` before capture and before each replay with the step's
(padded) batch; inside a capture the ATTENTION launches are dynamic graph nodes
(`graphs.dynamic`), so each replay launches attention with the batch of its own step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from revati.adapters.attention_batch import AttentionBatch, batch_of, launch_attention
from revati.adapters.cuda import graphs, streams
from revati.adapters.cuda.ops import dtype_name

NAME = "revati"
ATTENTION_OP = "sglang::flash_attn_with_kvcache"  # FlashAttention-3, SGLang's Hopper default

def _host(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.numpy() if x.device.type == "cpu" else np.asarray(x.tolist())
    return np.asarray(x)


class RevatiAttnBackend(AttentionBackend):
    def __init__(self, model_runner: Any) -> None:
        super().__init__()
        self.device = model_runner.device
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.batch: AttentionBatch | None = None

    def init_forward_metadata(self, forward_batch: Any) -> None:
        self.init_forward_metadata_out_graph(forward_batch)

    def init_forward_metadata_out_graph(self, forward_batch: Any, in_capture: bool = False,
                                        ) -> None:
        mode = forward_batch.forward_mode
        kv = _host(forward_batch.seq_lens_cpu)
        if mode.is_decode_or_idle():
            q = np.ones(len(kv), dtype=np.int64)
        else:
            q = _host(forward_batch.extend_seq_lens_cpu)
        self.batch = batch_of(q, kv)

    def _emit(self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, layer: Any,
              forward_batch: Any, save_kv_cache: bool) -> torch.Tensor:
        if save_kv_cache and k is not None and v is not None:
            # SGLang's own pool write (an index write on virtual tensors). Sliding-window
            # (SWA) pools also need the SWA location: not handled yet.
            self.token_to_kv_pool.set_kv_buffer(
                layer, KVWriteLoc(forward_batch.out_cache_loc, None), k, v)
        heads = (layer.tp_q_head_num, layer.tp_k_head_num, layer.head_dim)
        dtype, dev = dtype_name(q.dtype), q.device.index or 0
        if streams.current_stream().capture is None:
            launch_attention(self.batch, ATTENTION_OP, dtype, dev, heads)
        else:  # in a CUDA graph: each replay launches with the batch of its own step
            graphs.dynamic(_LayerAttention(self, (dtype, dev, heads)))
        return q.new_empty(q.shape[0], layer.tp_q_head_num * layer.v_head_dim)

    # -- CUDA graphs: no device-side metadata to keep at fixed addresses
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        pass

    def get_cuda_graph_seq_len_fill_value(self) -> int:
        return 1

    def forward_extend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any,
                       forward_batch: Any, save_kv_cache: bool = True, **kwargs: Any,
                       ) -> torch.Tensor:
        return self._emit(q, k, v, layer, forward_batch, save_kv_cache)

    def forward_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Any,
                       forward_batch: Any, save_kv_cache: bool = True, **kwargs: Any,
                       ) -> torch.Tensor:
        return self._emit(q, k, v, layer, forward_batch, save_kv_cache)


def register() -> None:
    """Add "revati" to SGLang's attention-backend registry and to the CLI's choices (the
    argument parser is built after the plugins load). Idempotent."""
    from sglang.srt.arg_groups import choices
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    ATTENTION_BACKENDS.setdefault(NAME, RevatiAttnBackend)
    if NAME not in choices.ATTENTION_BACKEND_CHOICES:
        choices.add_attention_backend_choices([NAME])  # SGLang's API for out-of-tree backends


class _LayerAttention:
    """A layer's attention in a CUDA graph, as a dynamic node: launched at each replay with
    the batch of that replay's step."""

    __slots__ = ("args", "backend")

    def __init__(self, backend: RevatiAttnBackend, args: tuple[str, int, tuple[int, ...]],
                 ) -> None:
        self.backend = backend
        self.args = args

    def key(self) -> tuple[Any, ...]:
        return self.backend.batch, self.args

    def __call__(self) -> None:
        dtype, dev, heads = self.args
        launch_attention(self.backend.batch, ATTENTION_OP, dtype, dev, heads)
