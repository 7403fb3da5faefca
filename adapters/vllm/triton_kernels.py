"""Stand-ins for the Triton kernels on the V1 runner's hot path (there is no Triton driver
without a GPU). Registered through vLLM's kernel-override hook, per worker."""

from __future__ import annotations

from typing import Any

from revati.adapters.cuda import launch
from revati.predictors.launch import Family


def _slot_mapping(num_tokens: int, max_num_tokens: int, query_start_loc_ptr: Any,
                  positions_ptr: Any, block_table_ptr: Any, block_table_stride: int,
                  slot_mapping_ptr: Any, *_: Any, **__: Any) -> None:
    # Reads each token's position and block id, writes its KV slot (int64). Nothing on the
    # host reads slot mappings back, and Revati's attention needs only the batch shape.
    launch(Family.MEMORY, "triton::compute_slot_mapping", "int64",
           (num_tokens * (8 + 4 + 8), num_tokens), slot_mapping_ptr.device.index or 0)


def register() -> None:
    from vllm.triton_utils.dispatcher import register_kernels

    register_kernels({
        "vllm.v1.worker.block_table.ComputeSlotMappingKernel.kernel": _slot_mapping,
    })
