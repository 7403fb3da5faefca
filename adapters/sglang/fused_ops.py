"""Fused-kernel stand-ins for SGLang's fused ops: one launch each, as on a real H100.

On CUDA, SGLang runs RMSNorm (and the fused residual-add RMSNorm), SiluAndMul and rotary
embedding as single sgl-kernel / FlashInfer kernels. On Revati's out-of-tree platform
`BaseFusedOp` dispatch (`sglang/kernels/fused_op.py`, `_resolve_forward_method`) takes a forward
registered with `BaseFusedOp.register_oot_forward(op_cls, fn, "revati")` first, and
`forward_native` (a dozen element-wise launches, and as many Python-level dispatcher entries)
otherwise. These stand-ins emit one MEMORY launch with the bytes the fused kernel moves and
return outputs of the right shape; activations are never computed. The registry is keyed on the
exact class, so each subclass that only changes the op's parameters (Llama 3's scaled rope, ...)
is registered too; those with a forward of their own (mrope, ...) keep their native path.
`ClampPositionOp` (a decode batch's positions from its sequence lengths) computes values the
host may read, so its stand-in computes them too. The unquantized fused-MoE method is a fused
op as well: its stand-in emits the grouped-GEMM launches of adapters/fused_launches.py, whose
MEMORY launch the others use too. Qwen3's QK-norm stand-in (`qknorm`) is hooked in by
adapters/sglang/kernels.py.
Same model as adapters/vllm/custom_ops.py. `REVATI_SGLANG_FUSED_OPS=0` leaves them out (SGLang's
native decompositions), for comparisons.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from revati.adapters.cuda.state import S
from revati.adapters.cuda.tensor import VirtualTensor, host_array, new_tensor
from revati.adapters.fused_launches import launch_experts
from revati.adapters.fused_launches import memory_launch as _memory
from revati.adapters.fused_launches import tensor_bytes as _bytes

PLATFORM_KEY = "revati"


def rms_norm(self: Any, x: torch.Tensor, residual: torch.Tensor | None = None,
             post_residual_addition: torch.Tensor | None = None,
             quant_linear: Any = None) -> Any:
    # `quant_linear` (Llama sets one on every layer norm, `fuse_input_quant`) only matters to
    # FP8 checkpoints, where the fused kernel also quantizes; like forward_native, the stand-in
    # returns the unquantized output and the projection quantizes it.
    if self.variance_size_override is not None or x.numel() == 0:
        # partial-width variance, empty batches: SGLang's own paths
        return self.forward_native(x, residual, post_residual_addition)
    weight = self.weight if self.has_weight else None
    if residual is None:
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        _memory("sglang::rmsnorm", x, 2 * _bytes(x) + _bytes(weight), x.numel())
        return out
    # in place, as sgl-kernel's fused_add_rmsnorm: reads x and the residual (and the extra
    # addend), writes both
    _memory("sglang::fused_add_rmsnorm", x,
            4 * _bytes(x) + _bytes(post_residual_addition) + _bytes(weight), x.numel())
    return x, residual


def silu_and_mul(self: Any, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    _memory("sglang::silu_and_mul", x, _bytes(x) + _bytes(out), out.numel())
    return out


def rotary(self: Any, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
           offsets: torch.Tensor | None = None, fused_set_kv_buffer_arg: Any = None,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    # in place on query and key (FlashInfer's apply_rope_with_cos_sin_cache_inplace); reads
    # the cos/sin row of each position. A fused KV-cache write is not modelled: the revati
    # attention backend writes K/V itself.
    rows = positions.numel() * self.rotary_dim * 4  # fp32 cache
    _memory("sglang::rotary_embedding", query,
            2 * _bytes(query, key) + _bytes(positions) + rows,
            query.numel() + (key.numel() if key is not None else 0))
    return query, key


def fused_moe(self: Any, layer: Any, dispatch_output: Any) -> Any:
    """An unquantized fused-MoE layer (the quant method's forward) as its grouped GEMMs
    (adapters/fused_launches.py); SGLang's native path syncs with the host to split the tokens
    by expert, which a CUDA graph cannot hold."""
    from sglang.srt.layers.moe.token_dispatcher import StandardCombineInput

    x = dispatch_output.hidden_states
    launch_experts("sglang", x, tuple(layer.w13_weight.shape),
                   dispatch_output.topk_output.topk_ids)
    return StandardCombineInput(hidden_states=torch.empty_like(x))


QKNORM_HEAD_DIMS = (64, 128, 256, 512, 1024)  # those SGLang's JIT QK-norm kernel is built for


def can_use_qknorm(head_dim: int, dtype: torch.dtype) -> bool:
    """SGLang's check for its JIT QK-norm kernel builds it (nvcc, minutes on a small host, for a
    kernel that never runs here): the stand-in below takes the shapes the kernel takes."""
    return head_dim in QKNORM_HEAD_DIMS


def qknorm(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
           eps: float = 1e-6, *, head_dim: int = 0) -> None:
    """Qwen3's per-head RMSNorm of q and k, in place, as SGLang's one fused JIT kernel."""
    _memory("sglang::qknorm", q, 2 * _bytes(q, k) + _bytes(q_weight, k_weight),
            q.numel() + k.numel())


def clamp_position(self: Any, seq_lens: torch.Tensor) -> torch.Tensor:
    """positions = max(seq_lens - 1, 0) as int64: on an H100 SGLang's JIT kernel into a tensor
    like `seq_lens`, then the cast, two launches (forward_native takes three, and three trips
    through the dispatcher: ~2% of the scheduler's time in the demo). The values are computed
    on the host where `seq_lens` keeps them."""
    if type(seq_lens) is not VirtualTensor or seq_lens.dim() != 1:
        return self.forward_native(seq_lens)
    with S.link().freeze():
        n, size = seq_lens.numel(), seq_lens.element_size()
        out = new_tensor([n], [1], torch.int64, seq_lens._d, "aten::empty")
        if seq_lens._a.host is not None and out._a.host is not None:
            np.maximum(host_array(seq_lens) - 1, 0, out=host_array(out))
        _memory("sglang::clamp_position", seq_lens, 2 * n * size, n)
        _memory("aten::_to_copy", seq_lens, n * size + n * 8, n)
    return out


def _same_forward(cls: type, base: type) -> bool:
    return all(getattr(cls, m, None) is getattr(base, m, None)
               for m in ("forward_native", "forward_cuda", "forward_jit"))


def _family(base: type) -> list[type]:
    """`base` and its (loaded) subclasses that keep its forward."""
    seen, todo = [], [base]
    while todo:
        cls = todo.pop()
        if cls not in seen and _same_forward(cls, base):
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


def register() -> None:
    """Register the stand-ins with SGLang's fused-op dispatch; before the model is built."""
    if os.environ.get("REVATI_SGLANG_FUSED_OPS", "1") == "0":
        return
    import sglang.srt.layers.rotary_embedding  # noqa: F401  (loads the rope subclasses)
    from sglang.kernels.fused_op import BaseFusedOp
    from sglang.kernels.ops.attention.clamp_position import ClampPositionOp
    from sglang.srt.layers.activation import SiluAndMul
    from sglang.srt.layers.layernorm import RMSNorm
    from sglang.srt.layers.quantization.unquant import UnquantizedFusedMoEMethod
    from sglang.srt.layers.rotary_embedding.base import RotaryEmbedding

    for base, fn in ((RMSNorm, rms_norm), (SiluAndMul, silu_and_mul),
                     (RotaryEmbedding, rotary), (ClampPositionOp, clamp_position),
                     (UnquantizedFusedMoEMethod, fused_moe)):
        for cls in _family(base):
            BaseFusedOp.register_oot_forward(cls, fn, PLATFORM_KEY)
