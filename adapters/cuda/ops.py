"""From a torch op on virtual tensors to a launch event: family and features.

The mapping (see docs/virtual-cuda.md for the table):
  GEMM       mm, addmm, bmm, baddbmm, linear, matmul, mv, addmv, _scaled_mm ->
             (m, n, k, batch) of C[batch, m, n] = A[batch, m, k] @ B[batch, k, n]
  ATTENTION  the fused scaled-dot-product kernels -> (num_seqs, q_tokens, kv_sum, kv_max,
             kv_sq_sum, n_heads, n_kv_heads, head_dim, causal)
  SAMPLING   argmax/argmin/topk/sort/argsort/multinomial -> (rows, last dim)
  OTHER      convolutions, FFTs, linear algebra -> (bytes, elements)
  MEMORY     everything else that launches a kernel -> (bytes, elements): bytes read by every
             tensor input plus bytes written by every tensor output, elements of the largest
             output (gathers, scatters and copy_ count only what they read and write)
Views, allocations and metadata ops launch nothing. Copies between host and device
(HOST_COPY) and between devices (P2P) are classified where copies are handled.
This runs only when a (op, shapes, dtypes) signature is first seen: the result is cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from revati.predictors.launch import Family

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
    torch.int8: "int8", torch.uint8: "uint8", torch.int16: "int16", torch.int32: "int32",
    torch.int64: "int64", torch.bool: "bool",
    torch.complex64: "fp32", torch.complex128: "fp64",
}
for _name in dir(torch):
    if _name.startswith("float8_"):
        DTYPE_NAMES[getattr(torch, _name)] = "fp8"

GEMM_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
    "aten::mv", "aten::addmv", "aten::_scaled_mm", "aten::_addmm_activation",
})
ATTENTION_OPS = frozenset({
    "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_fused_attention_overrideable",
})
SAMPLING_OPS = frozenset({
    "aten::argmax", "aten::argmin", "aten::topk", "aten::sort", "aten::argsort",
    "aten::multinomial",
})
GATHER_OPS = frozenset({
    "aten::embedding", "aten::index_select", "aten::index", "aten::gather", "aten::take",
    "aten::embedding_bag", "aten::_embedding_bag",
})
SCATTER_OPS = frozenset({
    "aten::index_put_", "aten::index_put", "aten::_index_put_impl_", "aten::index_copy_",
    "aten::index_copy", "aten::index_add_", "aten::index_add", "aten::scatter_",
    "aten::scatter", "aten::scatter_add_", "aten::scatter_add", "aten::scatter_reduce_",
    "aten::scatter_reduce", "aten::index_fill_", "aten::masked_scatter_",
})
OTHER_PREFIXES = ("aten::conv", "aten::_conv", "aten::cudnn_conv", "aten::fft_", "aten::_fft",
                  "aten::linalg_", "aten::_linalg")
# Composite ops kept whole when they reach the dispatcher undecomposed (under inference mode):
# each is one kernel (or one library call) on a GPU.
KEEP_WHOLE = GEMM_OPS | ATTENTION_OPS | frozenset({
    "aten::embedding", "aten::layer_norm", "aten::group_norm", "aten::rms_norm",
    "aten::softmax", "aten::log_softmax", "aten::cross_entropy_loss", "aten::dropout",
})


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for `t`: broadcast (stride 0) dimensions count once."""
    n = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride:
            n *= size
    return n * t.element_size()


def _tensors(xs: Sequence[Any]) -> list[torch.Tensor]:
    out = []
    for x in xs:
        if isinstance(x, torch.Tensor):
            out.append(x)
        elif isinstance(x, (list, tuple)):
            out.extend(y for y in x if isinstance(y, torch.Tensor))
    return out


def _prod(xs: Sequence[int]) -> int:
    return math.prod(xs) if xs else 1


def gemm_feats(name: str, args: Sequence[Any]) -> tuple[int, int, int, int]:
    if name in ("aten::addmm", "aten::baddbmm", "aten::addmv", "aten::_addmm_activation"):
        a, b = args[1], args[2]
    else:
        a, b = args[0], args[1]
    if name == "aten::linear":  # b is the weight [n, k]
        return _prod(a.shape[:-1]), b.shape[0], a.shape[-1], 1
    if name in ("aten::mv", "aten::addmv"):
        return a.shape[0], 1, a.shape[1], 1
    sa, sb = list(a.shape), list(b.shape)
    if len(sa) == 1:
        sa = [1, *sa]
    if len(sb) == 1:
        sb = [*sb, 1]
    k, n = sb[-2], sb[-1]
    if len(sb) == 2:  # a batch of rows against one matrix is one GEMM with folded rows
        return _prod(sa[:-1]), n, k, 1
    batch = torch.broadcast_shapes(torch.Size(sa[:-2]), torch.Size(sb[:-2]))
    return sa[-2], n, k, _prod(batch)


def attention_feats(name: str, args: Sequence[Any], kwargs: dict[str, Any],
                    ) -> tuple[int, ...]:
    q, k = args[0], args[1]
    if name == "aten::scaled_dot_product_attention":
        causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
    elif name in ("aten::_scaled_dot_product_efficient_attention",
                  "aten::_scaled_dot_product_cudnn_attention"):
        causal = args[6] if len(args) > 6 else kwargs.get("is_causal", False)
    else:
        causal = args[4] if len(args) > 4 else kwargs.get("is_causal", False)
    heads, sq, d = q.shape[-3], q.shape[-2], q.shape[-1]
    kv_heads, skv = k.shape[-3], k.shape[-2]
    seqs = _prod(q.shape[:-3])
    return (seqs, seqs * sq, seqs * skv, skv, seqs * skv * skv, heads, kv_heads, d,
            int(bool(causal)))


def classify(name: str, args: Sequence[Any], kwargs: dict[str, Any], outs: Sequence[Any],
             ) -> tuple[int, str, tuple[int, ...]]:
    """(family, dtype name, features) of one kernel, from meta (or host) inputs and outputs."""
    ins = _tensors(args) + _tensors(list(kwargs.values()))
    dtype = dtype_name(ins[0].dtype if ins else outs[0].dtype)
    if name in GEMM_OPS:
        return int(Family.GEMM), dtype, gemm_feats(name, args)
    if name in ATTENTION_OPS:
        return int(Family.ATTENTION), dtype, attention_feats(name, args, kwargs)
    if name in SAMPLING_OPS and ins and ins[0].dim() > 0:
        x = ins[0]
        return int(Family.SAMPLING), dtype, (_prod(x.shape[:-1]), x.shape[-1])
    if name in GATHER_OPS:  # reads only the rows it gathers, and the indices
        touched = 2 * sum(tensor_bytes(t) for t in outs) + sum(
            tensor_bytes(t) for t in ins if not t.dtype.is_floating_point)
        elements = max((t.numel() for t in outs), default=0)
    elif name in SCATTER_OPS:  # writes only the rows it scatters: the destination is not read
        touched = 2 * sum(tensor_bytes(t) for t in ins[1:])
        elements = max((t.numel() for t in ins[1:]), default=0)
    elif name == "aten::copy_":  # reads the source, writes the destination: it is not read
        touched = tensor_bytes(ins[1]) + tensor_bytes(ins[0])
        elements = ins[0].numel()
    else:
        touched = sum(tensor_bytes(t) for t in ins) + sum(tensor_bytes(t) for t in outs)
        elements = max((t.numel() for t in (outs or ins)), default=0)
    family = Family.OTHER if name.startswith(OTHER_PREFIXES) else Family.MEMORY
    return int(family), dtype, (touched, elements)
