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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from revati.adapters.cuda import graphs, launch, streams
from revati.adapters.cuda.ops import dtype_name
from revati.predictors.launch import Family

NAME = "revati"
ATTENTION_OP = "sglang::flash_attn_with_kvcache"  # FlashAttention-3, SGLang's Hopper default

Part = tuple[int, int, int, int, int]  # (num_seqs, q_tokens, kv_sum, kv_max, kv_sq_sum)


def _part(q: np.ndarray, kv: np.ndarray) -> Part | None:
    if len(q) == 0:
        return None
    kv = kv.astype(np.int64)
    return (len(q), int(q.sum()), int(kv.sum()), int(kv.max()), int((kv * kv).sum()))


@dataclass
class Batch:
    """One step's batch as the attention kernels see it: the decode rows and the prefill rows
    (None where there are none), each costed as its own kernel."""

    decode: Part | None
    prefill: Part | None


def batch_of(q_lens: np.ndarray, kv_lens: np.ndarray) -> Batch:
    is_decode = q_lens <= 1
    return Batch(_part(q_lens[is_decode], kv_lens[is_decode]),
                 _part(q_lens[~is_decode], kv_lens[~is_decode]))


def _host(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.numpy() if x.device.type == "cpu" else np.asarray(x.tolist())
    return np.asarray(x)


class RevatiAttnBackend(AttentionBackend):
    def __init__(self, model_runner: Any) -> None:
        super().__init__()
        self.device = model_runner.device
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.batch: Batch | None = None

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
            _launch(self.batch, dtype, dev, heads)
        else:  # in a CUDA graph: each replay launches with the batch of its own step
            graphs.dynamic(lambda: _launch(self.batch, dtype, dev, heads))
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


def _launch(b: Batch | None, dtype: str, dev: int, heads: tuple[int, int, int]) -> None:
    if b is None:
        return
    for part in (b.decode, b.prefill):
        if part is not None:
            launch(Family.ATTENTION, ATTENTION_OP, dtype, (*part, *heads, 1), dev)


def register() -> None:
    """Add "revati" to SGLang's attention-backend registry and to the CLI's choices (the
    argument parser is built after the plugins load). Idempotent."""
    from sglang.srt.arg_groups import choices
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    ATTENTION_BACKENDS.setdefault(NAME, RevatiAttnBackend)
    if NAME not in choices.ATTENTION_BACKEND_CHOICES:
        choices.add_attention_backend_choices([NAME])  # SGLang's API for out-of-tree backends
