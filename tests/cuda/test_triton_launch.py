"""A Triton kernel on virtual GPUs (adapters/cuda/triton.py, the catch-all for kernels with no
stand-in): one MEMORY launch of the bytes of its virtual tensor arguments, on their device."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")

from revati.predictors.launch import Family  # noqa: E402
from tests.cuda.conftest import RecordingLink  # noqa: E402

pytestmark = pytest.mark.torch


def _apply_top_k_top_p() -> None:
    """Stands for a JITFunction: the launch is named after the kernel function."""


def test_a_kernel_is_one_launch_of_its_tensors_bytes(vcuda: Any, link: RecordingLink) -> None:
    from revati.adapters.cuda.triton import _launch

    torch.cuda.set_device(1)
    logits = torch.empty(8, 1000, dtype=torch.bfloat16, device="cuda")
    k = torch.empty(8, dtype=torch.int32, device="cuda")
    host = torch.empty(1 << 20)  # host tensors and numbers are not the kernel's traffic
    n = len(link.launches)
    _launch(_apply_top_k_top_p, (logits,), {"k": k, "host": host, "stride": 1000, "p": 0.9})
    (ev,) = link.launches[n:]
    assert (ev.family, ev.op, ev.dtype, ev.device) == (
        Family.MEMORY, "triton::_apply_top_k_top_p", "bf16", 1)
    assert ev.feats == (8 * 1000 * 2 + 8 * 4, 8 * 1000)  # bytes moved, elements of the largest
    _launch(_apply_top_k_top_p, (host, 3), {})
    assert len(link.launches) == n + 1  # nothing on a GPU: no launch
