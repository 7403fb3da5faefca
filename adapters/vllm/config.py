"""The platform's last word on vLLM's configuration (`check_and_update_config`)."""

from __future__ import annotations

from typing import Any

from vllm.logger import init_logger

logger = init_logger(__name__)


def update(vllm_config: Any) -> None:
    parallel = vllm_config.parallel_config
    if parallel.worker_cls == "auto":
        parallel.worker_cls = "revati.adapters.vllm.worker.RevatiWorker"
    # JIT warmups compile and autotune real kernels: nothing to do on virtual GPUs.
    vllm_config.kernel_config.enable_jit_warmup = False


# Where the platform keeps, for the workers, the largest all-reduce that production fuses
# with the RMSNorm after it (vllm_config.additional_config travels to every worker)
FUSION_KEY = "revati_allreduce_rms_fusion_bytes"
# The fusion pass's default limits, MB by GPU count, per compute capability (vLLM 0.32,
# compilation/passes/fusion/allreduce_rms_fusion.py, FI_ALLREDUCE_FUSION_MAX_SIZE_MB; that
# module needs vLLM's CUDA extension to import)
_FUSION_MAX_MB = {90: {2: 64, 4: 2, 8: 0.5}, 100: {2: 64, 4: 32, 8: 1, 16: 64}}


def record_allreduce_rms_fusion(vllm_config: Any) -> None:
    """Decide, from the user's configuration before the platform turns compilation off,
    whether vLLM on the emulated GPU would fuse each tensor-parallel all-reduce with the
    residual-add RMSNorm after it (the FlashInfer all-reduce fusion pass, on by default at -O2
    and -O3 for TP > 1 on Hopper and Blackwell: config/vllm.py, enable_allreduce_rms_fusion),
    and up to which size (the pass's per-GPU-count limits). FlashInfer is taken to be
    installed, as vLLM's CUDA wheels install it. A configuration checked again (its
    compilation already turned off here) keeps the first decision."""
    extra = vllm_config.additional_config
    if not isinstance(extra, dict) or FUSION_KEY in extra:  # a platform's own object: none
        return
    from vllm import envs
    from vllm.config.compilation import CompilationMode
    from vllm.config.vllm import OptimizationLevel
    from vllm.platforms import current_platform

    cc, level = vllm_config.compilation_config, vllm_config.optimization_level
    tp = vllm_config.parallel_config.tensor_parallel_size
    cap = current_platform.get_device_capability()
    compiled = cc.mode == CompilationMode.VLLM_COMPILE or (
        cc.mode is None and level > OptimizationLevel.O0)
    fuse = cc.pass_config.fuse_allreduce_rms
    if fuse is None:
        fuse = level >= OptimizationLevel.O2 and tp > 1 and not envs.VLLM_BATCH_INVARIANT \
            and (cap.major == 10 or (cap.major, cap.minor) == (9, 0))
    limit_mb = cc.pass_config.fi_allreduce_fusion_max_size_mb
    if limit_mb is None:
        limit_mb = _FUSION_MAX_MB.get(cap.to_int(), {}).get(tp)
    # (the compile backend is left aside: an out-of-tree platform's default is "eager", where
    # CUDA's is "inductor")
    extra[FUSION_KEY] = int(limit_mb * (1 << 20)) if compiled and fuse and limit_mb else 0


_fusion_bytes = 0  # this worker's: set from its configuration by the worker (worker.py)


def load_allreduce_rms_fusion(vllm_config: Any) -> None:
    """In a worker, before its communicators exist: take the platform's decision."""
    global _fusion_bytes
    extra = vllm_config.additional_config
    _fusion_bytes = int(extra.get(FUSION_KEY, 0)) if isinstance(extra, dict) else 0


def allreduce_rms_fusion_bytes() -> int:
    """In a worker: the largest all-reduce production fuses with its RMSNorm (0: none)."""
    return _fusion_bytes
