"""Roofline and analytical times: formulas by hand, and monotone in problem size."""

from __future__ import annotations

import numpy as np
import pytest

from revati.predictors.attention import AttentionModel
from revati.predictors.dataset import event
from revati.predictors.launch import Collective, CopyDirection, Family
from revati.predictors.roofline import Hardware, roofline_ns
from revati.predictors.skus import spec
from tests.predictors.events import attention, gemm, memory

H100 = Hardware.from_spec(spec("h100"))  # 989.4 TFLOP/s bf16, 3.35 TB/s, 2.5 us launch


def test_gemm() -> None:
    small, big = gemm(1, 4096, 4096), gemm(8192, 8192, 8192)
    t = roofline_ns(Family.GEMM, [small, big], H100)
    assert t[0] == pytest.approx((4096 + 4096 * 4096 + 4096) * 2 / 3.35e12 * 1e9 + 2500)
    assert t[1] == pytest.approx(2 * 8192**3 / 989.4e12 * 1e9 + 2500)
    # fp32 runs on the fp32 pipes; fp8 on a SKU without fp8 falls back to the 16-bit rate
    fp32 = roofline_ns(Family.GEMM, [gemm(8192, 8192, 8192, dtype="fp32")], H100)[0]
    assert fp32 == pytest.approx(2 * 8192**3 / 67e12 * 1e9 + 2500)
    a100 = Hardware.from_spec(spec("a100"))
    assert a100.peak_flops("fp8") == a100.peak_flops("fp16") == 312e12


def test_memory_and_other() -> None:
    ev = memory("aten::add", 3 << 30, 1 << 29)
    assert roofline_ns(Family.MEMORY, [ev], H100)[0] == pytest.approx(
        (3 << 30) / 3.35e12 * 1e9 + 2500)
    other = event(Family.OTHER, "aten::fft_rfft", "fp32", (1 << 20, 1 << 18))
    assert roofline_ns(Family.OTHER, [other], H100)[0] == pytest.approx(
        (1 << 20) / 3.35e12 * 1e9 + 2500)


def test_collectives_ring() -> None:
    nbytes = 64 << 20
    events = [event(Family.COLLECTIVE, "c10d::allreduce_", "bf16", (kind, nbytes, 8))
              for kind in (Collective.ALL_REDUCE, Collective.ALL_GATHER, Collective.BROADCAST,
                           Collective.BARRIER)]
    t = roofline_ns(Family.COLLECTIVE, events, H100)
    link = nbytes / 450e9 * 1e9
    assert t.tolist() == pytest.approx([8000 + 2 * 7 / 8 * link, 8000 + 7 * link,
                                        8000 + link, 8000])
    one_rank = event(Family.COLLECTIVE, "c10d::allreduce_", "bf16", (0, nbytes, 1))
    assert roofline_ns(Family.COLLECTIVE, [one_rank], H100)[0] == pytest.approx(2500)


def test_copies() -> None:
    h2d = event(Family.HOST_COPY, "aten::copy_", "bf16", (1 << 30, CopyDirection.H2D))
    d2d = event(Family.HOST_COPY, "aten::copy_", "bf16", (1 << 30, CopyDirection.D2D))
    p2p = event(Family.P2P, "aten::copy_", "bf16", (1 << 30, 1))
    assert roofline_ns(Family.HOST_COPY, [h2d, d2d], H100).tolist() == pytest.approx(
        [8000 + (1 << 30) / 50e9 * 1e9, 2 * (1 << 30) / 3.35e12 * 1e9 + 2500])
    assert roofline_ns(Family.P2P, [p2p], H100)[0] == pytest.approx(
        8000 + (1 << 30) / 450e9 * 1e9)


def test_sampling_passes() -> None:
    argmax = event(Family.SAMPLING, "aten::argmax", "fp32", (64, 128_000))
    sort = event(Family.SAMPLING, "aten::sort", "fp32", (64, 128_000))
    t = roofline_ns(Family.SAMPLING, [argmax, sort], H100)
    once = 64 * 128_000 * 4 / 3.35e12 * 1e9
    assert t.tolist() == pytest.approx([once + 2500, 8 * once + 2500])


def test_graph_and_attention_have_no_roofline() -> None:
    with pytest.raises(ValueError, match="graph"):
        roofline_ns(Family.GRAPH, [event(Family.GRAPH, "graph", "bf16", (1,))], H100)
    with pytest.raises(ValueError, match="analytical"):
        roofline_ns(Family.ATTENTION, [attention([10], [10])], H100)


def _strictly_increasing(t: np.ndarray) -> bool:
    return bool(np.all(np.diff(t) > 0))


def test_monotone_in_problem_size() -> None:
    sizes = [2**i for i in range(0, 15)]
    assert _strictly_increasing(roofline_ns(
        Family.GEMM, [gemm(m, 4096, 4096) for m in sizes], H100))
    assert _strictly_increasing(roofline_ns(
        Family.GEMM, [gemm(1024, 1024, k) for k in sizes], H100))
    assert _strictly_increasing(roofline_ns(
        Family.MEMORY, [memory("aten::add", 6 * n, n) for n in sizes], H100))
    assert _strictly_increasing(roofline_ns(Family.COLLECTIVE, [
        event(Family.COLLECTIVE, "c10d::allreduce_", "bf16", (0, 1024 * n, 8))
        for n in sizes], H100))
    model = AttentionModel(H100)
    assert _strictly_increasing(model.predict_ns([attention([kv] * 16, [1] * 16)
                                                  for kv in sizes]))
    assert _strictly_increasing(model.predict_ns([attention([s], [s]) for s in sizes]))
