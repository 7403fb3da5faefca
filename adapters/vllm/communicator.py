"""`RevatiCommunicator`: vLLM's CUDA communicator with every collective on torch.distributed.

vLLM's graph capture requires a `CudaCommunicator`. Its fast paths (pynccl, custom
all-reduce, symmetric memory, FlashInfer, quick-reduce) all need a driver, so none is
created; each collective goes through the device group as the base communicator does, reaches
virtual CUDA as a `c10d` op and becomes one rendezvous in revatid (NCCL's timing).
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.device_communicators.base_device_communicator import (
    DeviceCommunicatorBase,
)
from vllm.distributed.device_communicators.cuda_communicator import CudaCommunicator

_FAST_PATHS = ("pynccl_comm", "ca_comm", "qr_comm", "symm_mem_comm", "fi_ar_comm",
               "fi_pcie_ipc_ar_comm", "aiter_ar_comm")


class RevatiCommunicator(CudaCommunicator):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        DeviceCommunicatorBase.__init__(self, *args, **kwargs)  # not CudaCommunicator's
        for name in _FAST_PATHS:
            setattr(self, name, None)
        self.use_custom_allreduce = False
        self.use_torch_symm_mem = False
        self.use_flashinfer_allreduce = False
        self.use_flashinfer_pcie_ipc_allreduce = False
        self.use_aiter_allreduce = False
        self.use_aiter_ag_rs = False

    all_reduce = DeviceCommunicatorBase.all_reduce
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
