"""The launches the framework adapters' fused-kernel stand-ins emit, shared by vLLM's
(adapters/vllm/custom_ops.py) and SGLang's (adapters/sglang/fused_ops.py).

A fused element-wise kernel (RMSNorm, SiLU-and-mul, rotary, ...) is one MEMORY launch with the
bytes it moves. An unquantized fused-MoE layer (vLLM's `vllm::fused_moe` custom op, SGLang's
fused-MoE quant method) is two grouped GEMMs over the experts the step's tokens reach, the
gated activation between them, and the weighted combine. Only the experts some token routes to
read their weights: with T tokens each picking k of E experts, about E (1 - (1 - k/E)^T) of
them."""

from __future__ import annotations

import torch

from revati.adapters.cuda import launch
from revati.adapters.cuda.ops import dtype_name
from revati.predictors.launch import Family


def tensor_bytes(*ts: object) -> int:
    """The bytes of the tensors among `ts` (None and other values count nothing)."""
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


def memory_launch(op: str, like: torch.Tensor, moved: int, elements: int) -> None:
    """One fused kernel that moves `moved` bytes over `elements` elements of `like`'s dtype,
    on `like`'s device."""
    launch(Family.MEMORY, op, dtype_name(like.dtype), (moved, elements), like.device.index or 0)


def launch_experts(framework: str, x: torch.Tensor, w13_shape: tuple[int, ...],
                   topk_ids: torch.Tensor) -> None:
    """`x`: the layer's input tokens; `w13_shape`: (experts, 2 x intermediate, hidden), the
    fused gate-and-up weights; `topk_ids`: (tokens, k) expert ids. Op names are
    `<framework>::fused_moe_w13` and so on."""
    experts, two_inter, hidden = w13_shape
    tokens, k = topk_ids.shape
    routed = tokens * k
    touched = max(1, min(experts, round(experts * (1 - (1 - k / experts) ** tokens))))
    rows = -(-routed // touched)  # tokens per touched expert, rounded up
    dtype, dev, size = dtype_name(x.dtype), x.device.index or 0, x.element_size()
    launch(Family.GEMM, f"{framework}::fused_moe_w13", dtype, (rows, two_inter, hidden, touched),
           dev)
    act = routed * two_inter // 2
    memory_launch(f"{framework}::silu_and_mul", x, 3 * act * size, act)
    launch(Family.GEMM, f"{framework}::fused_moe_w2", dtype,
           (rows, hidden, two_inter // 2, touched), dev)
    memory_launch(f"{framework}::moe_sum", x, (routed + tokens) * hidden * size, tokens * hidden)
