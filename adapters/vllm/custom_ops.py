"""Fused-kernel stand-ins for vLLM's custom ops: one launch each, as on a real H100.

On CUDA, vLLM runs RMSNorm, SiLU-and-mul and rotary embedding as single fused kernels
(`_C.rms_norm`, `_C.silu_and_mul`, `_C.rotary_embedding`); an out-of-tree platform would run
their `forward_native` instead, a dozen element-wise launches each. These stand-ins emit one
MEMORY launch with the bytes the fused kernel moves and return outputs of the right shape
(values of activations are never computed). They attach at vLLM's seams: IR-op providers
(`ir.ops.rms_norm.register_impl`) and the `forward_oot` method that CustomOp dispatch picks
for an out-of-tree platform. Unquantized fused MoE becomes its grouped GEMMs over the experts
the step's tokens reach.
"""

from __future__ import annotations

from typing import Any

import torch

from revati.adapters.fused_launches import launch_experts
from revati.adapters.fused_launches import memory_launch as _memory
from revati.adapters.fused_launches import tensor_bytes as _bytes

PROVIDER = "revati"
IR_OPS = ("rms_norm", "fused_add_rms_norm")


# -- IR ops (RMSNorm's path in vLLM 0.32)
def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
             variance_size: int | None = None) -> torch.Tensor:
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    _memory("vllm::rms_norm", x, 2 * _bytes(x) + _bytes(weight), x.numel())
    return out


# (data pointer, elements) of the tensor a tensor-parallel all-reduce just reduced, when
# production fuses that all-reduce with the residual-add RMSNorm after it (communicator.py)
_folded_into_all_reduce: tuple[int, int] | None = None


def fold_next_norm(reduced: torch.Tensor | None) -> None:
    """The residual-add RMSNorm of `reduced`, if it comes next, is part of the all-reduce's
    kernel (FlashInfer's all-reduce + RMSNorm fusion): it launches nothing of its own."""
    global _folded_into_all_reduce
    _folded_into_all_reduce = None if reduced is None else (reduced.data_ptr(), reduced.numel())


def fused_add_rms_norm(x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor | None,
                       epsilon: float, variance_size: int | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    global _folded_into_all_reduce
    folded, _folded_into_all_reduce = _folded_into_all_reduce, None
    if folded is not None and folded == (x.data_ptr(), x.numel()):
        return x, x_residual
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


def _fused_moe(self: Any, layer: Any, x: torch.Tensor, topk_weights: torch.Tensor,
               topk_ids: torch.Tensor, shared_experts: Any = None,
               shared_experts_input: Any = None) -> torch.Tensor:
    """An unquantized fused-MoE layer as its grouped GEMMs (adapters/fused_launches.py)."""
    if shared_experts is not None:  # not a layout the stand-in models: run vLLM's own path
        return self.forward_native(layer, x, topk_weights, topk_ids, shared_experts,
                                   shared_experts_input)
    launch_experts("vllm", x, layer.w13_weight.shape, topk_ids)
    return torch.empty_like(x)


# -- torch.ops._C ops that vLLM's runner calls directly (the compiled extension is not loaded)
_LIB: torch.library.Library | None = None


def _weak_ref_tensor(t: torch.Tensor) -> torch.Tensor:
    # CUDA graph outputs are kept as aliases of the graph's memory; an alias launches nothing
    return t.view(t.shape)


def _topk_routing(topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                  token_expert_indices: torch.Tensor, gating_output: torch.Tensor,
                  renormalize: bool = False, e_score_correction_bias: Any = None,
                  is_padding: Any = None) -> None:
    # MoE routing: reads the router logits, writes each token's k expert ids and weights
    _memory("vllm::topk_softmax", gating_output,
            _bytes(gating_output, topk_weights, topk_ids, token_expert_indices),
            gating_output.numel())


_ROUTING = ("topk_softmax", "topk_sigmoid", "topk_softplus_sqrt")
_ROUTING_SCHEMA = ("(Tensor(a!) topk_weights, Tensor(b!) topk_ids, "
                   "Tensor(c!) token_expert_indices, Tensor gating_output, bool renormalize, "
                   "Tensor? e_score_correction_bias, Tensor? is_padding) -> ()")
_LIBS: list[torch.library.Library] = []


def register_c_ops() -> None:
    global _LIB
    if _LIB is not None:
        return
    _LIB = torch.library.Library("_C", "FRAGMENT")
    _LIB.define("weak_ref_tensor(Tensor(a) input) -> Tensor(a)")
    _LIB.impl("weak_ref_tensor", _weak_ref_tensor, "CompositeImplicitAutograd")
    moe = torch.library.Library("_moe_C", "FRAGMENT")
    for name in _ROUTING:
        moe.define(name + _ROUTING_SCHEMA)
        moe.impl(name, _topk_routing, "CompositeImplicitAutograd")
    _LIBS.append(moe)


def install() -> None:
    """Attach the stand-ins; runs before the model is built, in each worker process."""
    from vllm.model_executor.layers.activation import SiluAndMul
    from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import (
        UnquantizedFusedMoEMethod,
    )
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

    register_ir()
    register_c_ops()
    UnquantizedFusedMoEMethod.forward_oot = _fused_moe
    # An out-of-tree platform gets no kernel object ("OOT handles internally"), so the layer
    # cannot ask it whether it routes by itself: it does not, the stand-in takes routed ids
    UnquantizedFusedMoEMethod.is_monolithic = False
    # vLLM wraps each MoE layer in one opaque op; run its body so the stand-in above is seen
    from vllm.model_executor.layers.fused_moe.runner import moe_runner

    from revati.adapters.cuda import tensor

    tensor.run_python_impl("vllm::moe_forward", moe_runner._moe_forward)
    tensor.run_python_impl("vllm::moe_forward_shared", moe_runner._moe_forward_shared)
    SiluAndMul.forward_oot = _silu_and_mul
    # Subclasses (Llama 3's scaled rope, YaRN, ...) differ only in their cos/sin cache.
    RotaryEmbedding.forward_oot = _rotary
