"""Fused-kernel stand-ins for vLLM's custom ops: one launch each, as on a real H100.

On CUDA, vLLM runs RMSNorm, SiLU-and-mul and rotary embedding as single fused kernels
(`_C.rms_norm`, `_C.silu_and_mul`, `_C.rotary_embedding`); an out-of-tree platform would run
their `forward_native` instead, a dozen element-wise launches each. These stand-ins emit one
MEMORY launch with the bytes the fused kernel moves and return outputs of the right shape
(values of activations are never computed). They attach at vLLM's seams: IR-op providers
(`ir.ops.rms_norm.register_impl`) and the `forward_oot` method that CustomOp dispatch picks
for an out-of-tree platform.
"""

from __future__ import annotations

from typing import Any

import torch

from revati.adapters.cuda import launch
from revati.adapters.cuda.ops import dtype_name
from revati.predictors.launch import Family

PROVIDER = "revati"
IR_OPS = ("rms_norm", "fused_add_rms_norm")


def _bytes(*ts: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def _memory(op: str, like: torch.Tensor, moved: int, elements: int) -> None:
    launch(Family.MEMORY, op, dtype_name(like.dtype), (moved, elements), like.device.index or 0)


# -- IR ops (RMSNorm's path in vLLM 0.32)
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
             variance_size: int | None = None) -> torch.Tensor:
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _memory("vllm::rms_norm", x, 2 * _bytes(x) + _bytes(weight), x.numel())
    return out


def fused_add_rms_norm(x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor | None,
                       epsilon: float, variance_size: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    # in place, as the CUDA kernel: reads x and the residual, writes both
    _memory("vllm::fused_add_rms_norm", x, 4 * _bytes(x) + _bytes(weight), x.numel())
    return x, x_residual


def register_ir() -> None:
    from vllm import ir

    if PROVIDER not in ir.ops.rms_norm.impls:
        ir.ops.rms_norm.register_impl(PROVIDER)(rms_norm)
        ir.ops.fused_add_rms_norm.register_impl(PROVIDER, inplace=True)(fused_add_rms_norm)


# -- CustomOp forward_oot stand-ins
def _silu_and_mul(self: Any, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    _memory("vllm::silu_and_mul", x, _bytes(x) + _bytes(out), out.numel())
    return out


def _rotary(self: Any, positions: torch.Tensor, query: torch.Tensor,
            key: torch.Tensor | None = None, *args: Any, **kwargs: Any,
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    # in place on query and key; reads the cos/sin rows of each position
    rows = positions.numel() * self.rotary_dim * query.element_size()
    _memory("vllm::rotary_embedding", query, 2 * _bytes(query, key) + _bytes(positions) + rows,
            query.numel() + (key.numel() if key is not None else 0))
    return query, key


# -- torch.ops._C ops that vLLM's runner calls directly (the compiled extension is not loaded)
_LIB: torch.library.Library | None = None


def _weak_ref_tensor(t: torch.Tensor) -> torch.Tensor:
    # CUDA graph outputs are kept as aliases of the graph's memory; an alias launches nothing
    return t.view(t.shape)


def register_c_ops() -> None:
    global _LIB
    if _LIB is not None:
        return
    _LIB = torch.library.Library("_C", "FRAGMENT")
    _LIB.define("weak_ref_tensor(Tensor(a) input) -> Tensor(a)")
    _LIB.impl("weak_ref_tensor", _weak_ref_tensor, "CompositeImplicitAutograd")


def install() -> None:
    """Attach the stand-ins; runs before the model is built, in each worker process."""
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    register_ir()
    register_c_ops()
    SiluAndMul.forward_oot = _silu_and_mul
    # Subclasses (Llama 3's scaled rope, YaRN, ...) differ only in their cos/sin cache.
    RotaryEmbedding.forward_oot = _rotary
