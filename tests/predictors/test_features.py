"""Features from launch events, checked against hand-computed values; Vidur rows as events."""

from __future__ import annotations

from math import log, log2

import pytest

from revati.predictors import vidur
from revati.predictors.attention import Backend, attention_backend, flops_bytes
from revati.predictors.features import (
    MODEL_FEATURES,
    MemKind,
    coverage_key,
    memory_kind,
    model_inputs,
)
from revati.predictors.launch import Collective, Family
from revati.predictors.roofline import Hardware, dtype_bytes, feats_matrix
from revati.predictors.skus import spec
from tests.predictors.events import attention, gemm, memory

A100 = Hardware.from_spec(spec("a100"))  # 108 SMs, 312 TFLOP/s bf16, 2.039 TB/s, 3 us launch


def named(family: Family, ev) -> dict[str, float]:
    X, _ = model_inputs(family, [ev], A100)
    return dict(zip(MODEL_FEATURES[family], X[0].tolist(), strict=True))


def test_gemm_features_by_hand() -> None:
    f = named(Family.GEMM, gemm(128, 4096, 4096))
    flops = 2 * 128 * 4096 * 4096  # 2^32
    nbytes = (128 * 4096 + 4096 * 4096 + 128 * 4096) * 2
    assert (f["log_m"], f["log_n"], f["log_k"], f["log_batch"]) == (7, 12, 12, 0)
    assert f["log_flops"] == 32
    assert f["log_bytes"] == pytest.approx(log2(nbytes), abs=1e-4)
    assert f["log_intensity"] == pytest.approx(32 - log2(nbytes), abs=1e-4)
    assert f["log_t_compute"] == pytest.approx(log2(flops / 312e12 * 1e9), abs=1e-4)
    assert f["log_t_memory"] == pytest.approx(log2(nbytes / 2.039e12 * 1e9), abs=1e-4)
    # 128x128 output tiles: 1 x 32 of them on 108 SMs, one wave with 32 of 108 SMs busy
    assert f["waves_128x128"] == 1
    assert f["wave_fill_128x128"] == pytest.approx(32 / 108, abs=1e-4)
    # 64x64: 2 x 64 = 128 tiles, two waves, 128 of 216 slots busy; each wave runs a
    # 64x64x4096 tile per SM at 1/108 of the peak
    assert f["waves_64x64"] == 2
    assert f["wave_fill_64x64"] == pytest.approx(128 / 216, abs=1e-4)
    t_wave = 2 * 64 * 64 * 4096 / (312e12 / 108) * 1e9
    assert f["log_t_waves_64x64"] == pytest.approx(log2(2 * t_wave), abs=1e-4)
    assert (f["m_mod_64"], f["n_mod_128"], f["k_mod_128"]) == (0, 0, 0)


def test_gemm_reference_time_is_the_roofline() -> None:
    _, base = model_inputs(Family.GEMM, [gemm(128, 4096, 4096), gemm(8192, 8192, 8192)], A100)
    small = (128 * 4096 + 4096 * 4096 + 128 * 4096) * 2 / 2.039e12  # memory-bound
    big = 2 * 8192**3 / 312e12  # compute-bound
    assert base == pytest.approx([log(small * 1e9 + 3000), log(big * 1e9 + 3000)])


def test_memory_features_by_hand() -> None:
    t, h = 512, 4096
    nbytes = 2 * t * h * 2 + h * 2  # rms_norm: read and write T x H, read the weight
    f = named(Family.MEMORY, memory("vllm::rms_norm", nbytes, t * h))
    assert f["kind"] == MemKind.NORM
    assert f["log_bytes"] == pytest.approx(log2(nbytes), abs=1e-4)
    assert f["log_elements"] == pytest.approx(log2(t * h), abs=1e-4)
    assert f["bytes_per_element"] == pytest.approx(nbytes / (t * h), abs=1e-4)
    assert f["log_t_memory"] == pytest.approx(log2(nbytes / 2.039e12 * 1e9), abs=1e-4)
    assert f["log_waves"] == pytest.approx(log2(t * h / (108 * 1024)), abs=1e-4)


@pytest.mark.parametrize(("op", "kind"), [
    ("vllm::rms_norm", MemKind.NORM), ("aten::layer_norm", MemKind.NORM),
    ("vllm::fused_add_rms_norm", MemKind.NORM), ("vllm::rotary_embedding", MemKind.ROTARY),
    ("aten::embedding", MemKind.EMBEDDING), ("vllm::silu_and_mul", MemKind.ACTIVATION),
    ("aten::gelu", MemKind.ACTIVATION), ("aten::add", MemKind.ELEMENTWISE),
    ("aten::mul", MemKind.ELEMENTWISE), ("aten::copy_", MemKind.COPY),
    ("aten::cat", MemKind.COPY), ("aten::_softmax", MemKind.REDUCTION),
    ("vllm::reshape_and_cache_flash", MemKind.COPY), ("aten::normal_", MemKind.ELEMENTWISE),
])
def test_memory_kind(op: str, kind: MemKind) -> None:
    assert memory_kind(op) == kind


def test_attention_backend() -> None:
    assert attention_backend("aten::_scaled_dot_product_flash_attention") == Backend.FLASH_ATTN
    assert attention_backend("aten::scaled_dot_product_attention") == Backend.SDPA
    assert attention_backend("flashinfer::batch_decode") == Backend.FLASHINFER
    assert attention_backend("vllm::unified_attention") == Backend.OTHER


def test_attention_flops_and_bytes_by_hand() -> None:
    # causal prefill of two 100-token prompts: half of each 100 x 100 score block
    pre = attention([100, 100], [100, 100], heads=8, kv_heads=2, head_dim=64)
    # decode: one query per sequence attends the whole sequence
    dec = attention([10, 20, 30], [1, 1, 1], heads=8, kv_heads=2, head_dim=64)
    flops, nbytes = flops_bytes(feats_matrix([pre, dec]), dtype_bytes([pre, dec]))
    assert flops.tolist() == [4 * 8 * 64 * 10_000, 4 * 8 * 64 * 60]
    assert nbytes.tolist() == [(2 * 200 * 8 + 2 * 200 * 2) * 64 * 2,
                               (2 * 3 * 8 + 2 * 60 * 2) * 64 * 2]


def test_coverage_keys() -> None:
    assert coverage_key(Family.GEMM, "aten::mm", "bf16", (1, 1, 1, 1)) == "half"
    assert coverage_key(Family.GEMM, "aten::mm", "fp16", (1, 1, 1, 1)) == "half"
    assert coverage_key(Family.GEMM, "aten::mm", "fp32", (1, 1, 1, 1)) == "fp32"
    assert coverage_key(Family.MEMORY, "aten::add", "bf16", (6, 1)) == "ELEMENTWISE"
    assert coverage_key(Family.COLLECTIVE, "c10d::allreduce_", "bf16",
                        (Collective.ALL_REDUCE, 1024, 4)) == (Collective.ALL_REDUCE, 4)


def _row(model: str, tokens: int, tp: int) -> dict[str, str]:
    shapes = {
        "meta-llama/Llama-2-7b-hf": ("32", "32", "4096", "11008", "True"),
        "microsoft/phi-2": ("32", "32", "2560", "10240", "False"),
    }[model]
    keys = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp")
    return {**dict(zip(keys, shapes, strict=True)), "num_tokens": str(tokens),
            "num_tensor_parallel_workers": str(tp), "vocab_size": "32768"}


def test_vidur_operators_as_launch_events() -> None:
    row, arch = _row("meta-llama/Llama-2-7b-hf", 16, 2), vidur.Arch()

    def feats(op: str) -> list[tuple[int, ...]]:
        return [e.feats for e in vidur.operator_events(op, row, arch)]

    assert feats("attn_pre_proj") == [(16, 3 * 4096 // 2, 4096, 1)]
    assert feats("attn_post_proj") == [(16, 4096, 2048, 1)]
    assert feats("mlp_up_proj") == [(16, 11008, 4096, 1)]
    assert feats("mlp_down_proj") == [(16, 4096, 5504, 1)]
    assert feats("emb") == [(2 * 16 * 4096 * 2 + 8 * 16, 16 * 4096)]
    assert feats("input_layernorm") == [(2 * 16 * 4096 * 2 + 4096 * 2, 16 * 4096)]
    rope = 16 * (16 + 16) * 128  # q and k heads of one rank
    assert feats("attn_rope") == [(2 * rope * 2 + 8 * 16 + 16 * 128 * 2, rope)]
    assert feats("mlp_act") == [(3 * 16 * 5504 * 2, 16 * 5504)]
    assert feats("add") == [(3 * 16 * 4096 * 2, 16 * 4096)]
    assert {e.op for e in vidur.operator_events("mlp_act", row, arch)} == {"vllm::silu_and_mul"}


def test_phi2_operators() -> None:
    row, arch = _row("microsoft/phi-2", 8, 1), vidur.ARCHS["microsoft/phi-2"]
    adds = vidur.operator_events("add", row, arch)
    assert len(adds) == 2  # attention + mlp + residual: two adds
    act = vidur.operator_events("mlp_act", row, arch)
    assert [(e.op, e.feats) for e in act] == [("aten::gelu", (2 * 8 * 10240 * 2, 8 * 10240))]
    assert vidur.operator_events("input_layernorm", row, arch)[0].op == "aten::layer_norm"

