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
