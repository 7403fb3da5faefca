"""`RevatiPlatform`: SGLang's CUDA platform with an out-of-tree identity.

Device queries go through `CudaDeviceMixin` (torch.cuda.*), which Revati's virtual CUDA answers
for the session's SKU. Being out of tree (`PlatformEnum.OOT`) is what routes SGLang's fused ops
(`BaseFusedOp`: RMSNorm, SiluAndMul, rotary...) to `forward_revati` / registered OOT forwards /
`forward_native` instead of sgl-kernel, and what lets the capabilities below switch off Triton
and PyNccl. See docs/sglang-hookmap.md, sections 2, 5 and 8.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from sglang.srt.platforms.cuda import CudaDeviceMixin
from sglang.srt.platforms.device_mixin import PlatformEnum
from sglang.srt.platforms.interface import PlatformCapabilities, SRTPlatform

from revati.adapters.sglang.kernels import CUSTOM_ALL_REDUCE_ENV

ATTENTION_BACKEND = "revati"

# Server arguments whose defaults differ on virtual GPUs, applied only where the user left the
# default (None or False): the pure-torch sampler (its sampled ids come from the token
# oracle), an idle scheduler that waits in a zmq poll (so revatid sees it WAITING),
# collectives through torch.distributed (so revatid rendezvous them; the custom all-reduce's
# are timed as its kernel all the same, see apply_server_args_defaults).
SERVER_DEFAULTS: dict[str, Any] = {
    "sampling_backend": "pytorch",
    "sleep_on_idle": True,
    "disable_custom_all_reduce": True,
}


class RevatiPlatform(CudaDeviceMixin, SRTPlatform):
    _enum = PlatformEnum.OOT
    device_name = "cuda"
    device_type = "cuda"
    capabilities = PlatformCapabilities(
        supports_triton=False,  # no Triton launch can run: torch-native index writers
        graph_capture=True,  # decode graphs over Revati's virtual CUDAGraph (section 7)
        piecewise_graph=False,
        hicache_device_kernels=False,
        supports_pynccl=False,  # collectives through torch.distributed -> revati backend
    )

    def get_dispatch_key_name(self) -> str:
        return "revati"

    def get_default_attention_backend(self) -> str:
        return ATTENTION_BACKEND

    def get_default_speculative_draft_attention_backend(self, algorithm: str) -> str:
        return ATTENTION_BACKEND

    def get_group_coordinator_device(self, local_rank: int) -> torch.device:
        return torch.device("cuda", local_rank)

    def get_graph_runner_cls(self) -> type:
        # SGLang's own CUDA decode-graph runner (its torch.cuda.CUDAGraph is Revati's virtual
        # one), with its input buffers' slices kept
        from revati.adapters.sglang.graph_runner import RevatiDecodeGraphRunner

        return RevatiDecodeGraphRunner

    def apply_server_args_defaults(self, server_args: Any) -> None:
        if getattr(server_args, "disable_custom_all_reduce", True) is False:
            # the user's choice, for the processes SGLang starts next: its tensor-parallel
            # all-reduces are timed as the custom kernel (kernels.py)
            os.environ[CUSTOM_ALL_REDUCE_ENV] = "1"
        for name, value in SERVER_DEFAULTS.items():
            if hasattr(server_args, name) and getattr(server_args, name) in (None, False):
                setattr(server_args, name, value)
        _graph_defaults(server_args)


# The CUDA-graph backend of each phase when the user names none: decode graphs through the
# "full" backend (torch.cuda.CUDAGraph, which is Revati's virtual CUDAGraph: a replay is one
# GRAPH launch plus the attention launches of the step); prefill eager, since the "breakable"
# backend SGLang picks for it queries the CUDA runtime directly (breakable_cuda_graph.py:86,
# cudaStreamGetCaptureInfo).
GRAPH_DEFAULTS = {"decode": "full", "prefill": "disabled"}


def _graph_defaults(server_args: Any) -> None:
    """GRAPH_DEFAULTS for each phase whose backend the user did not name. The
    --cuda-graph-backend-* flags are folded into `cuda_graph_config` before the platform's
    defaults run (arg_groups/pipeline.py:191 vs :214), so the folded config is what changes."""
    import dataclasses

    from sglang.srt.model_executor.cuda_graph_config import CudaGraphConfig

    cfg = getattr(server_args, "cuda_graph_config", None)
    if isinstance(cfg, dict):
        cfg = CudaGraphConfig.from_dict(cfg)
    if not isinstance(cfg, CudaGraphConfig):
        return
    changes = {phase: dataclasses.replace(getattr(cfg, phase), backend=backend)
               for phase, backend in GRAPH_DEFAULTS.items()
               if getattr(server_args, f"cuda_graph_backend_{phase}", None) is None}
    if changes:
        server_args.cuda_graph_config = dataclasses.replace(cfg, **changes)
