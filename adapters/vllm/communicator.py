"""`RevatiCommunicator`: vLLM's CUDA communicator with every collective on torch.distributed.

vLLM's graph capture requires a `CudaCommunicator`. Its fast paths (pynccl, custom
all-reduce, symmetric memory, FlashInfer, quick-reduce) all need a driver, so none is
created; each collective goes through the device group as the base communicator does, reaches
virtual CUDA as a `c10d` op and becomes one rendezvous in revatid (NCCL's timing). The
exception is a tensor-parallel group's all-reduce that production runs with its own kernel
(custom all-reduce or FlashInfer's, both one-shot NVLink kernels): it becomes a
CUSTOM_ALL_REDUCE rendezvous, unless `--disable-custom-all-reduce` asked for NCCL. Where
production fuses the all-reduce with the residual-add RMSNorm after it (FlashInfer, under
torch.compile: config.py), that norm launches nothing: the one kernel is timed as the
all-reduce.
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)
from vllm.distributed.device_communicators.cuda_communicator import CudaCommunicator

from revati.adapters.cuda import distributed
from revati.adapters.vllm import custom_ops
from revati.adapters.vllm.config import allreduce_rms_fusion_bytes

_FAST_PATHS = ("pynccl_comm", "ca_comm", "qr_comm", "symm_mem_comm", "fi_ar_comm",
               "fi_pcie_ipc_ar_comm", "aiter_ar_comm")


class RevatiCommunicator(CudaCommunicator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        DeviceCommunicatorBase.__init__(self, *args, **kwargs)  # not CudaCommunicator's
        from vllm.distributed import parallel_state

        # as CudaCommunicator decides whether its fast all-reduce paths may exist
        tp = self.unique_name.split(":")[0] == "tp"
        self.custom_all_reduce = tp and parallel_state._ENABLE_CUSTOM_ALL_REDUCE
        # all-reduces up to this size are fused with the RMSNorm after them in production
        # (decided from the user's settings: config.py, record_allreduce_rms_fusion)
        self.fused_norm_bytes = allreduce_rms_fusion_bytes() if tp else 0
        for name in _FAST_PATHS:
            setattr(self, name, None)
        self.use_custom_allreduce = False
        self.use_torch_symm_mem = False
        self.use_flashinfer_allreduce = False
        self.use_flashinfer_pcie_ipc_allreduce = False
        self.use_aiter_allreduce = False
        self.use_aiter_ag_rs = False

    def all_reduce(self, input_: Any) -> Any:
        fused = 0 < input_.numel() * input_.element_size() <= self.fused_norm_bytes
        custom_ops.fold_next_norm(None)
        if (fused or self.custom_all_reduce) \
                and distributed.custom_all_reduce(input_, self.device_group):
            if fused:
                custom_ops.fold_next_norm(input_)
            return input_  # no data moves; the kernel's output would be a new tensor
        return DeviceCommunicatorBase.all_reduce(self, input_)

    all_gather = DeviceCommunicatorBase.all_gather
    all_gatherv = DeviceCommunicatorBase.all_gatherv
    reduce_scatter = DeviceCommunicatorBase.reduce_scatter
    reduce_scatterv = DeviceCommunicatorBase.reduce_scatterv
    reduce_scatterv_into_output = DeviceCommunicatorBase.reduce_scatterv_into_output
    gather = DeviceCommunicatorBase.gather
    send = DeviceCommunicatorBase.send
    recv = DeviceCommunicatorBase.recv
    broadcast = DeviceCommunicatorBase.broadcast
    batch_isend_irecv = DeviceCommunicatorBase.batch_isend_irecv
    destroy = DeviceCommunicatorBase.destroy
    suspend = DeviceCommunicatorBase.suspend
    resume = DeviceCommunicatorBase.resume
