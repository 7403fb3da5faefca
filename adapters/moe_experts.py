"""An unquantized fused-MoE layer's launches, as the framework adapters stand it in (vLLM's
`vllm::fused_moe` custom op, SGLang's fused-MoE quant method): two grouped GEMMs over the
experts the step's tokens reach, the gated activation between them, and the weighted combine.
Only the experts some token routes to read their weights: with T tokens each picking k of E
experts, about E (1 - (1 - k/E)^T) of them."""

from __future__ import annotations

import torch

from revati.adapters.cuda import launch
from revati.adapters.cuda.ops import dtype_name
from revati.predictors.launch import Family


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
    launch(Family.MEMORY, f"{framework}::silu_and_mul", dtype, (3 * act * size, act), dev)
    launch(Family.GEMM, f"{framework}::fused_moe_w2", dtype,
           (rows, hidden, two_inter // 2, touched), dev)
    launch(Family.MEMORY, f"{framework}::moe_sum", dtype,
           ((routed + tokens) * hidden * size, tokens * hidden), dev)
