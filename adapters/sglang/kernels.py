"""SGLang's own kernels that sit outside its fused-op layer, kept off the virtual GPUs.

SGLang JIT-compiles some kernels at first use (nvcc + TVM-FFI) and launches them through
DLPack, past the torch dispatcher, so virtual tensors cannot catch them. Each hook here makes
SGLang take its torch path instead, whose ops become launch events as usual, or, where the
kernel fuses what the torch path runs as several launches, puts a one-launch stand-in in its
place (adapters/sglang/fused_ops.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from revati.adapters.cuda import distributed
from revati.adapters.sglang import fused_ops

# Set to "1" by the platform (platform.py) when it turns off the custom all-reduce the user
# left on
CUSTOM_ALL_REDUCE_ENV = "REVATI_SGLANG_CUSTOM_ALL_REDUCE"


def _never(*args: Any, **kwargs: Any) -> bool:
    return False


def _group(name: str) -> Any:
    from sglang.srt.distributed import parallel_state

    return parallel_state._groups[name]()


# SGLang wraps its collectives in torch custom ops (distributed/parallel_state.py:184-240) so
# that Dynamo treats them as opaque. On virtual tensors such an op reaches Revati's dispatcher
# as an unknown custom op (and, with host-backed inputs, runs on the CPU, where it has no
# kernel). Calling the coordinator's method directly, as the op's body does, ends in
# torch.distributed on the device group: a c10d collective that revatid rendezvous.
def _inplace_all_reduce(tensor: Any, group_name: str) -> None:
    group = _group(group_name)
    # A tensor-parallel all-reduce that SGLang's custom all-reduce would take, had the
    # platform not turned it off (it needs a driver): timed as that kernel
    if group_name.split(":")[0] == "tp" and os.environ.get(CUSTOM_ALL_REDUCE_ENV) == "1" \
            and distributed.custom_all_reduce(tensor, group.device_group):
        return
    group._all_reduce_in_place(tensor)


def _outplace_all_reduce(tensor: Any, group_name: str, outplace_all_reduce_method: str) -> Any:
    return _group(group_name)._all_reduce_out_place(tensor, outplace_all_reduce_method)


def _reg_all_gather_into_tensor(output: Any, input: Any, group_name: str) -> None:
    _group(group_name)._all_gather_into_tensor(output, input)


def _reg_reduce_scatter_tensor(output: Any, input: Any, group_name: str) -> None:
    _group(group_name)._reduce_scatter_tensor(output, input)


_PS = "sglang.srt.distributed.parallel_state"

# (dotted target, replacement) for SGLang's HookRegistry (REPLACE hooks).
REPLACEMENTS = (
    (f"{_PS}.inplace_all_reduce", _inplace_all_reduce),
    (f"{_PS}.outplace_all_reduce", _outplace_all_reduce),
    (f"{_PS}.reg_all_gather_into_tensor", _reg_all_gather_into_tensor),
    (f"{_PS}.reg_reduce_scatter_tensor", _reg_reduce_scatter_tensor),
    # The KV-cache store kernel (kernels/ops/kvcache/kvcache.py): its build takes a minute of
    # nvcc and fails to link without the CUDA runtime; memory_pool.py:175 then writes K/V with
    # index ops, which is what we want from the start.
    ("sglang.srt.mem_cache.memory_pool.can_use_store_cache", _never),
    # Qwen3's QK norm (models/utils.py:apply_qk_norm): the check builds the JIT kernel
    ("sglang.srt.models.utils.can_use_fused_inplace_qknorm", fused_ops.can_use_qknorm),
    ("sglang.srt.models.utils.fused_inplace_qknorm", fused_ops.qknorm),
)


# Fields of SGLang's ExpertLocationMetadata that live on the device (the `_cpu` ones do not).
_EXPERT_MAP_DEVICE_FIELDS = ("physical_to_logical_map", "logical_to_all_physical_map",
                             "logical_to_all_physical_map_num_valid",
                             "logical_to_rank_dispatch_physical_map")


def _expert_location_on_host(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A MoE model's expert-location metadata (srt/eplb/expert_location.py:_init_raw) is made
    on the device and copied back to the host: its padded map (layers x experts x experts
    int64, 6 MB for Qwen3-30B-A3B) is past what a virtual tensor keeps values for. Made from
    host copies of its inputs, it has them; its device fields then move to the inputs' device."""
    import torch

    def host(v: Any) -> Any:
        return v.cpu() if isinstance(v, torch.Tensor) else v

    # the device the original would have made them on: its input maps'
    device = next(v.device for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
    meta = original(*map(host, args), **{k: host(v) for k, v in kwargs.items()})
    for field in _EXPERT_MAP_DEVICE_FIELDS:
        value = getattr(meta, field)
        if isinstance(value, torch.Tensor):
            setattr(meta, field, value.to(device))
    return meta


def register() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, fn in REPLACEMENTS:
        HookRegistry.register(target, fn, HookType.REPLACE)
    HookRegistry.register("sglang.srt.eplb.expert_location.ExpertLocationMetadata._init_raw",
                          _expert_location_on_host, HookType.AROUND)
