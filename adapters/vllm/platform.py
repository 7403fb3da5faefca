"""`RevatiPlatform`: vLLM's view of the session's virtual GPUs.

An out-of-tree platform with device type "cuda": vLLM's own GPU worker, model runner, KV-cache
manager and scheduler run unchanged on virtual `cuda` tensors (revati.adapters.cuda). Device
facts (name, capability, memory, SM count) come from the SKU; the worker, attention backend,
custom ops and Triton stand-ins come from this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.logger import init_logger
from vllm.platforms.interface import DeviceCapability, Platform, PlatformEnum

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.attention.selector import AttentionSelectorConfig

logger = init_logger(__name__)

_PKG = "revati.adapters.vllm"


def _spec() -> dict[str, Any]:
    from revati.adapters.cuda.state import S

    return S.spec


class RevatiPlatform(Platform):
    _enum = PlatformEnum.OOT
    device_name: str = "cuda"
    device_type: str = "cuda"
    dispatch_key: str = "CUDA"
    ray_device_key: str = ""
    # Collectives on virtual tensors become revatid rendezvous whatever the group's backend;
    # the `revati` backend (gloo underneath) carries the host-side ones.
    dist_backend: str = "nccl"
    device_control_env_var: str = "CUDA_VISIBLE_DEVICES"
    simple_compile_backend: str = "eager"

    # -- device facts, from the SKU
    @classmethod
    def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
        major, minor = torch.cuda.get_device_capability(device_id)
        return DeviceCapability(major=major, minor=minor)

    @classmethod
    def get_device_name(cls, device_id: int = 0) -> str:
        return torch.cuda.get_device_name(device_id)

    @classmethod
    def get_device_uuid(cls, device_id: int = 0) -> str:
        return str(torch.cuda.get_device_properties(device_id).uuid)

    @classmethod
    def get_device_total_memory(cls, device_id: int = 0) -> int:
        return torch.cuda.get_device_properties(device_id).total_memory

    @classmethod
    def num_compute_units(cls, device_id: int = 0) -> int:
        return torch.cuda.get_device_properties(device_id).multi_processor_count

    @classmethod
    def device_count(cls) -> int:
        return torch.cuda.device_count()

    @classmethod
    def is_fully_connected(cls, device_ids: list[int]) -> bool:
        return True  # SXM parts: NVLink between every pair

    @classmethod
    def set_device(cls, device: torch.device) -> None:
        torch.cuda.set_device(device)

    @classmethod
    def manual_seed_all(cls, seed: int) -> None:
        torch.cuda.manual_seed_all(seed)

    @classmethod
    def check_if_supports_dtype(cls, dtype: torch.dtype) -> None:
        if dtype == torch.bfloat16 and not cls.has_device_capability(80):
            raise ValueError(f"bfloat16 needs compute capability 8.0; "
                             f"{cls.get_device_name()} has {cls.get_device_capability()}")

    @property
    def supported_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def is_pin_memory_available(cls) -> bool:
        return True  # virtual CUDA keeps pinned host buffers and non-blocking copies

    @classmethod
    def get_current_memory_usage(cls, device: torch.types.Device | None = None) -> float:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device)

    # The torch.cuda functions vLLM reaches through `current_platform.<name>`.
    current_device = staticmethod(torch.cuda.current_device)
    current_stream = staticmethod(torch.cuda.current_stream)
    synchronize = staticmethod(torch.cuda.synchronize)
    mem_get_info = staticmethod(torch.cuda.mem_get_info)
    empty_cache = staticmethod(torch.cuda.empty_cache)
    Stream = torch.cuda.Stream
    Event = torch.cuda.Event

    @classmethod
    def graph_pool_handle(cls) -> Any:
        return torch.cuda.graph_pool_handle()

    # -- kernels: none are loaded; Revati's stand-ins are registered instead
    @classmethod
    def import_kernels(cls) -> None:
        pass

    @classmethod
    def register_triton_kernel_overrides(cls) -> None:
        from revati.adapters.vllm import triton_kernels

        triton_kernels.register()

    @classmethod
    def import_ir_kernels(cls) -> None:
        from revati.adapters.vllm import custom_ops

        custom_ops.register_ir()

    @classmethod
    def get_default_ir_op_priority(cls, vllm_config: VllmConfig) -> Any:
        from vllm.config.kernel import IrOpPriorityConfig

        from revati.adapters.vllm import custom_ops

        priority = IrOpPriorityConfig.with_default(["native"])
        for op in custom_ops.IR_OPS:
            setattr(priority, op, [custom_ops.PROVIDER, "native"])
        return priority

    # -- configuration
    @classmethod
    def apply_config_platform_defaults(cls, vllm_config: VllmConfig) -> None:
        from vllm.config.compilation import CompilationMode, CUDAGraphMode

        from revati.adapters.vllm import config

        cc = vllm_config.compilation_config
        # what production's compilation would fuse across an all-reduce, decided from the
        # user's settings before they are overridden here
        config.record_allreduce_rms_fusion(vllm_config)
        # No Dynamo/Inductor on virtual tensors: custom ops then run as Revati's fused
        # stand-ins (one launch each, as the compiled graph's fused kernels would be).
        cc.mode = CompilationMode.NONE
        # Production's FULL_AND_PIECEWISE runs every batch up to the largest capture size
        # from a graph (piecewise ones with attention between the pieces). Without piecewise
        # compilation the same kernels run as FULL graphs whose attention nodes are launched
        # with each replay's batch (attention.py), so the host cost of a step is a replay.
        if cc.cudagraph_mode is None:
            cc.cudagraph_mode = CUDAGraphMode.FULL

    @classmethod
    def check_and_update_config(cls, vllm_config: VllmConfig) -> None:
        from revati.adapters.vllm import config

        config.update(vllm_config)

    @classmethod
    def get_attn_backend_cls(cls, selected_backend: AttentionBackendEnum,
                             attn_selector_config: AttentionSelectorConfig,
                             num_heads: int | None = None) -> str:
        if attn_selector_config.use_mla:
            raise NotImplementedError("revati: MLA attention is not emulated yet")
        return f"{_PKG}.attention.RevatiAttentionBackend"

    @classmethod
    def get_device_communicator_cls(cls) -> str:
        return f"{_PKG}.communicator.RevatiCommunicator"

    @classmethod
    def support_static_graph_mode(cls) -> bool:
        return True

    @classmethod
    def get_static_graph_wrapper_cls(cls) -> str:
        return "vllm.compilation.cuda_graph.CUDAGraphWrapper"

    @classmethod
    def support_hybrid_kv_cache(cls) -> bool:
        return True

    @classmethod
    def check_runner_kv_caches_multi_layer(cls) -> None:
        pass

    @classmethod
    def opaque_attention_op(cls) -> bool:
        return False

    @classmethod
    def use_custom_allreduce(cls) -> bool:
        # as on CUDA, so that vLLM keeps the user's --disable-custom-all-reduce: the
        # communicator creates no kernel (it needs a driver) but times the tensor-parallel
        # all-reduces as that kernel unless the user turned it off (communicator.py)
        return True
