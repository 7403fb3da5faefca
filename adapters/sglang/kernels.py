"""SGLang's own kernels that sit outside its fused-op layer, kept off the virtual GPUs.

SGLang JIT-compiles some kernels at first use (nvcc + TVM-FFI) and launches them through
DLPack, past the torch dispatcher, so virtual tensors cannot catch them. Each hook here makes
SGLang take its torch path instead, whose ops become launch events as usual.
"""

from __future__ import annotations

from typing import Any


def _never(*args: Any, **kwargs: Any) -> bool:
    return False


# (dotted target, replacement) for SGLang's HookRegistry (REPLACE hooks).
REPLACEMENTS = (
    # The KV-cache store kernel (kernels/ops/kvcache/kvcache.py): its build takes a minute of
    # nvcc and fails to link without the CUDA runtime; memory_pool.py:175 then writes K/V with
    # index ops, which is what we want from the start.
    ("sglang.srt.mem_cache.memory_pool.can_use_store_cache", _never),
)


def register() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, fn in REPLACEMENTS:
        HookRegistry.register(target, fn, HookType.REPLACE)
