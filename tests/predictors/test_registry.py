"""The registry revatid calls: shipped bundles, roofline fallback, sources, cache, test
predictors, and predictions that follow physics."""

from __future__ import annotations

import numpy as np
import pytest
from structlog.testing import capture_logs

from revati.predictors.dataset import event
from revati.predictors.launch import Collective, CopyDirection, Family, LaunchEvent
from revati.predictors.registry import (
    FixedPredictor,
    Predictor,
    TablePredictor,
    load_predictor,
)
from revati.predictors.roofline import roofline_ns
from revati.predictors.skus import UnknownSku
from tests.predictors.events import attention, gemm, memory

SHIPPED = ("a100", "h100", "a40")


@pytest.fixture(scope="module", params=SHIPPED)
def predictor(request: pytest.FixtureRequest) -> Predictor:
    return load_predictor(request.param)


@pytest.mark.parametrize(("name", "sku"), [
    ("a100", "a100"), ("A100-SXM4-80GB", "a100"), ("NVIDIA A100-SXM4-80GB", "a100"),
    ("h100-sxm", "h100"), ("H100", "h100"), ("a40", "a40")])
def test_shipped_bundles_load_by_name_or_alias(name: str, sku: str) -> None:
    p = load_predictor(name)
    assert p.sku == sku and p.bundle is not None
    assert {Family.GEMM, Family.MEMORY, Family.P2P} <= set(p.models)


def test_sku_without_bundle_falls_back_to_roofline_with_a_warning() -> None:
    with capture_logs() as logs:
        p = load_predictor("h200")
    assert [(e["event"], e["log_level"], e["sku"]) for e in logs] == [
        ("predictor.roofline_only", "warning", "h200")]
    assert p.bundle is None and not p.models
    events = [gemm(4096, 4096, 4096), memory("vllm::rms_norm", 1 << 26, 1 << 24),
              attention([512], [512])]
    durations = p.predict(events)
    assert durations[:2] == [round(x) for x in roofline_ns(Family.GEMM, events[:1], p.hw)] + \
        [round(x) for x in roofline_ns(Family.MEMORY, events[1:2], p.hw)]
    assert [p.source(e) for e in events] == ["roofline", "roofline", "analytical"]
    assert p.counts == {"roofline": 2, "analytical": 1}


def test_unknown_sku_raises() -> None:
    with pytest.raises(UnknownSku, match=r"unknown GPU SKU 'tpu-v5'; known: a100, .*h100"):
        load_predictor("tpu-v5")


def test_sources_say_how_each_op_was_predicted() -> None:
    p = load_predictor("h100")
    cases = {
        gemm(512, 4096, 4096, dtype="bf16"): "lightgbm",
        gemm(512, 4096, 4096, dtype="fp16"): "lightgbm",
        gemm(512, 4096, 4096, dtype="fp32"): "roofline",  # Vidur measured fp16 only
        memory("vllm::rms_norm", 4 * 512 * 4096, 512 * 4096): "lightgbm",
        memory("aten::copy_", 4 * 512 * 4096, 512 * 4096): "roofline",  # kind never measured
        attention([1000] * 8, [1] * 8): "analytical",
        event(Family.COLLECTIVE, "c10d::allreduce_", "bf16",
              (Collective.ALL_REDUCE, 1 << 20, 8)): "lightgbm",
        event(Family.COLLECTIVE, "c10d::allreduce_", "bf16",
              (Collective.ALL_REDUCE, 1 << 20, 16)): "roofline",  # no 16-rank node measured
        event(Family.COLLECTIVE, "c10d::allgather_", "bf16",
              (Collective.ALL_GATHER, 1 << 20, 8)): "roofline",
        event(Family.P2P, "aten::copy_", "bf16", (1 << 20, 1)): "lightgbm",
        event(Family.SAMPLING, "aten::argmax", "fp32", (64, 128_000)): "roofline",
        event(Family.HOST_COPY, "aten::copy_", "bf16", (1 << 20, CopyDirection.H2D)): "roofline",
        event(Family.OTHER, "aten::fft_rfft", "fp32", (1 << 20, 1 << 18)): "roofline",
    }
    events = list(cases)
    assert [p.source(e) for e in events] == list(cases.values())
    durations = p.predict(events)
    assert all(isinstance(d, int) and d > 0 for d in durations)
    assert p.counts == {"lightgbm": 5, "roofline": 7, "analytical": 1}
    # fp16 and bf16 GEMMs run at the same rate: one model, one prediction
    assert durations[0] == durations[1]


def test_cache_is_keyed_by_the_feature_tuple() -> None:
    p = load_predictor("a100")
    events = [gemm(m, 4096, 4096) for m in (1, 64, 4096)] * 3
    first = p.predict(events)
    assert p.summary()["cached"] == 3
    # other device, stream and launch time: the same key
    moved = [e._replace(device=3, stream=7, t_ns=12345) for e in events]
    assert p.predict(moved) == first
    assert p.summary()["cached"] == 3 and p.counts["lightgbm"] == 18
    assert first[:3] == first[3:6] == first[6:]


def test_cache_is_bounded() -> None:
    p = load_predictor("a100")
    p.CACHE_LIMIT = 10
    first = p.predict([gemm(m, 1024, 1024) for m in range(1, 9)])
    assert p.summary()["cached"] == 8
    # past the limit the cache starts again, with this batch's keys, old (m=1) and new
    again = p.predict([gemm(m, 1024, 1024) for m in (1, *range(9, 14))])
    assert p.summary()["cached"] == 6 and again[0] == first[0] and len(again) == 6


def test_graph_events_are_not_predicted() -> None:
    p = load_predictor("a100")
    with pytest.raises(ValueError, match="expanded by revatid"):
        p.predict([event(Family.GRAPH, "graph", "bf16", (1,))])


def test_malformed_features_are_refused() -> None:
    p = load_predictor("a100")
    with pytest.raises(ValueError, match=r"GEMM launch has features \(1, 2, 3\), expected "
                                         r"\(m, n, k, batch\)"):
        p.predict([event(Family.GEMM, "aten::mm", "bf16", (1, 2, 3))])


def test_fixed_and_table_predictors() -> None:
    events = [gemm(1, 2, 3), memory("aten::add", 6, 1)]
    fixed = FixedPredictor(20_000)
    assert fixed.predict(events) == [20_000, 20_000]
    assert fixed.source(events[0]) == "fixed" and fixed.counts == {"fixed": 2}
    table = TablePredictor({"aten::mm": 5_000, "aten::add": 700})
    assert table.predict(events) == [5_000, 700]
    with pytest.raises(KeyError, match="aten::mul"):
        table.predict([memory("aten::mul", 6, 1)])
    assert TablePredictor({}, default=9).predict(events) == [9, 9]


# -- physics

def _ratios(p: Predictor, events: list) -> np.ndarray:
    t = np.array(p.predict(events), dtype=float)
    return t[1:] / t[:-1]


def test_big_gemm_near_the_roofline(predictor: Predictor) -> None:
    """A 4096^3 bf16 GEMM runs at 50-100% of the dense peak on these GPUs."""
    ev = gemm(4096, 4096, 4096)
    roof = roofline_ns(Family.GEMM, [ev], predictor.hw)[0]
    assert roof <= predictor.predict([ev])[0] <= 2 * roof


@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (1024, 1024), (12288, 4096),
                                      (4096, 11008), (128256, 4096)])
def test_gemm_monotone_in_tokens(predictor: Predictor, n: int, k: int) -> None:
    """Doubling m: once the GEMM is compute-bound (and well above the launch floor) the time
    grows by at least 1.3x. Before that, reading the weights dominates and the time is flat:
    it stays within the few percent that the measurements jitter by, and below the time of
    the first compute-bound size."""
    ms = [2**i for i in range(15)]
    t = np.array(predictor.predict([gemm(m, n, k) for m in ms]), dtype=float)
    hw = predictor.hw
    bound = [2 * m * n * k / hw.peak_flops("bf16") > max(
        (m * k + k * n + m * n) * 2 / hw.hbm_bytes_per_s, 8 * hw.launch_overhead_s) for m in ms]
    first = bound.index(True)
    for i in range(len(ms) - 1):
        if bound[i]:
            assert t[i + 1] >= 1.3 * t[i], (ms[i], t[i], t[i + 1])
        else:
            assert t[i + 1] >= 0.9 * t[i], (ms[i], t[i], t[i + 1])
            assert t[i] < t[first], (ms[i], t[i], t[first])


@pytest.mark.parametrize(("op", "bytes_per_token"), [
    ("vllm::rms_norm", lambda h: 4 * h), ("aten::add", lambda h: 6 * h),
    ("vllm::silu_and_mul", lambda h: 6 * h), ("vllm::rotary_embedding", lambda h: 4 * h),
    ("aten::embedding", lambda h: 4 * h + 8),
])
def test_memory_ops_monotone_in_tokens(predictor: Predictor, op: str, bytes_per_token) -> None:
    """Once moving the bytes takes well over the launch overhead, each doubling of the tokens
    grows the time by at least 1.3x. Below that the kernels sit at the launch floor, where
    the measured times jitter (2 to 5 us, and PyTorch's embedding has a slower path below 24
    ids: 14 us for 16 ids, 4 us for 24 on an A100), so there they must only stay under the
    first bandwidth-bound time and above a fraction of the launch overhead."""
    h = 4096
    tokens = [2**i for i in range(17)]
    t = np.array(predictor.predict(
        [memory(op, n * bytes_per_token(h), n * h) for n in tokens]), dtype=float)
    hw = predictor.hw
    bound = [n * bytes_per_token(h) / hw.hbm_bytes_per_s > 8 * hw.launch_overhead_s
             for n in tokens]
    first = bound.index(True)
    for i in range(len(tokens) - 1):
        if bound[i]:
            assert t[i + 1] >= 1.3 * t[i], (tokens[i], t[i], t[i + 1])
        else:
            assert 0.2 * hw.launch_overhead_s * 1e9 <= t[i] < t[first], (tokens[i], t[i])


@pytest.mark.parametrize(("kind", "ranks"), [(Collective.ALL_REDUCE, 2),
                                             (Collective.ALL_REDUCE, 8),
                                             (Collective.BROADCAST, 2)])
def test_transfers_monotone_in_bytes(predictor: Predictor, kind: Collective,
                                     ranks: int) -> None:
    """Constrained monotone, also beyond the measured sizes (2 KiB to 64 MiB)."""
    sizes = [int(2 ** (i / 4)) for i in range(20, 130)]
    coll = [event(Family.COLLECTIVE, "c10d::x", "bf16", (kind, b, ranks)) for b in sizes]
    p2p = [event(Family.P2P, "aten::copy_", "bf16", (b, 1)) for b in sizes]
    assert (_ratios(predictor, coll) >= 1).all()
    assert (_ratios(predictor, p2p) >= 1).all()
    big = predictor.predict([coll[-1], p2p[-1]])
    roof = [roofline_ns(Family.COLLECTIVE, coll[-1:], predictor.hw)[0],
            roofline_ns(Family.P2P, p2p[-1:], predictor.hw)[0]]
    assert all(b >= int(r) for b, r in zip(big, roof, strict=True))  # at most the link peak


def test_attention_monotone(predictor: Predictor) -> None:
    lens = [2**i for i in range(4, 17)]
    decode = [attention([s] * 32, [1] * 32) for s in lens]
    prefill = [attention([s], [s]) for s in lens]
    assert (_ratios(predictor, decode) > 1).all() and (_ratios(predictor, prefill) > 1).all()


def _all_reduce(kind: Collective, nbytes: int, ranks: int) -> LaunchEvent:
    return LaunchEvent(int(Family.COLLECTIVE), "custom:all_reduce", "bf16", 0, 0, 0,
                       (int(kind), nbytes, ranks))


def test_a_custom_all_reduce_takes_the_skus_measured_times() -> None:
    """The frameworks' own all-reduce on an H100: the measured latencies
    (skus/custom_all_reduce.json) at the measured sizes, log-log between them, the next
    measured GPU count up for others; beyond the largest size NCCL's time, never under the
    largest measurement. H200 shares H100's table; A100 has none: NCCL's time throughout."""
    h100 = load_predictor("h100")
    custom = Collective.CUSTOM_ALL_REDUCE
    at = h100.predict([_all_reduce(custom, 4096, 4), _all_reduce(custom, 1 << 20, 8),
                       _all_reduce(custom, 100, 2), _all_reduce(custom, 4096, 3),
                       _all_reduce(custom, 4096, 6)])
    assert at == [3700, 33800, 3700, 3700, 5700]
    between = h100.predict([_all_reduce(custom, 16384, 4)])[0]
    # 16 KiB is two thirds of the way from 4 to 32 KiB, in logs
    assert between == round(1e3 * 3.7 ** (1 / 3) * 4.8 ** (2 / 3))
    assert h100.source(_all_reduce(custom, 16384, 4)) == "analytical"
    nccl_decode = h100.predict([_all_reduce(Collective.ALL_REDUCE, 16384, 4)])[0]
    assert between < nccl_decode / 3
    big = [_all_reduce(custom, 4 << 20, 4), _all_reduce(Collective.ALL_REDUCE, 4 << 20, 4)]
    assert h100.source(big[0]) == h100.source(big[1]) == "lightgbm"
    custom_big, nccl_big = h100.predict(big)
    assert custom_big == max(nccl_big, 31100)
    assert load_predictor("h200").predict([_all_reduce(custom, 4096, 4)]) == [3700]
    a100 = load_predictor("a100")
    assert a100.predict([_all_reduce(custom, 16384, 4)]) == \
        a100.predict([_all_reduce(Collective.ALL_REDUCE, 16384, 4)])
