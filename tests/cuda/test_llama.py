"""Acceptance: a Llama-3.1-8B-shaped decoder (2 layers) runs a prefill and 16 decode steps on a
virtual H100; its launches, virtual time, memory, OOM and CUDA graphs are checked."""

from __future__ import annotations

import gc
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")

from revati.predictors.launch import Family  # noqa: E402
from tests.cuda.conftest import RecordingLink  # noqa: E402
from tests.cuda.llama import LLAMA_8B, Config, Llama, param_bytes, two_layer  # noqa: E402

pytestmark = pytest.mark.torch

PROMPT = 7
DECODE_STEPS = 16
MAX_SEQ = 512
NORM = ["_to_copy", "pow", "mean", "add", "rsqrt", "mul", "_to_copy", "mul"]
ROTARY = ["mul", "neg", "cat", "mul", "add"]


def expected_ops(cfg: Config, seq_len: int) -> list[str]:
    """The kernels the model launches for one forward over `seq_len` new tokens: one per op
    that computes (views are free), in program order."""
    attention = ["linear"] * 3 + ROTARY + ROTARY + ["copy_", "copy_",
                                                     "scaled_dot_product_attention"]
    if seq_len > 1:  # reshaping the transposed attention output copies it (not for one token)
        attention.append("clone")
    attention.append("linear")
    layer = NORM + attention + ["add"] + NORM + ["linear", "silu", "linear", "mul", "linear",
                                                   "add"]
    rope = ["_to_copy", "mul", "cat", "cos", "_to_copy", "sin", "_to_copy"]
    ops = ["embedding", *rope, *layer * cfg.layers, *NORM, "linear"]
    return [f"aten::{op}" for op in ops]


def token_read_ops() -> list[str]:
    return ["aten::argmax", "aten::_to_copy"]  # sample, then the blocking copy to the host


def kv_bytes(cfg: Config, batch: int, max_seq: int) -> int:
    one = batch * cfg.kv_heads * max_seq * cfg.head_dim * 2
    return 2 * cfg.layers * (-(-one // 512) * 512)


def build(cfg: Config) -> Any:
    with torch.device("cuda"):
        model = Llama(cfg).to(torch.bfloat16)
    return model


@pytest.fixture(scope="module")
def model(vcuda: Any) -> Any:
    return build(two_layer())


def generate(model: Any, cache: Any, steps: int) -> list[int]:
    """Prefill a fixed prompt, then decode `steps` tokens, reading each sampled token."""
    tokens = torch.tensor([list(range(1, PROMPT + 1))], device="cuda")
    positions = torch.arange(PROMPT, device="cuda")
    logits = model(tokens, positions, cache, 0)
    out = []
    for step in range(steps):
        next_token = logits.argmax(-1)
        out.append(next_token.tolist()[0][0])
        start = PROMPT + step
        logits = model(next_token, torch.tensor([start], device="cuda"), cache, start)
    return out


def test_decoder_launch_sequence_time_and_memory(model: Any, link: RecordingLink) -> None:
    cfg = model.cfg
    gc.collect()
    weights = torch.cuda.memory_allocated()
    assert weights >= param_bytes(model)
    cache = model.kv_cache(1, MAX_SEQ)
    assert torch.cuda.memory_allocated() - weights == kv_bytes(cfg, 1, MAX_SEQ)
    torch.cuda.synchronize()
    start_ns, busy0, n0 = link.clock, link.stream_busy_ns(), len(link.launches)

    with torch.inference_mode():
        tokens = generate(model, cache, DECODE_STEPS)
    torch.cuda.synchronize()

    launches = link.launches[n0:]
    h2d = [e for e in launches if e.family == Family.HOST_COPY and e.feats[1] == 0]
    ops = [e.op for e in launches if e not in h2d]
    want = ["aten::arange", *expected_ops(cfg, PROMPT)]  # positions are made on the GPU
    for _ in range(DECODE_STEPS):
        want += token_read_ops() + expected_ops(cfg, 1)
    assert ops == want
    assert len(h2d) == 1 + DECODE_STEPS  # the prompt, then one position per step

    gemms = [e for e in launches if e.family == Family.GEMM]
    assert gemms[0].feats == (PROMPT, cfg.heads * cfg.head_dim, cfg.hidden, 1)
    assert gemms[-1].feats == (1, cfg.vocab, cfg.hidden, 1)  # the LM head, last decode step
    attention = [e.feats for e in launches if e.family == Family.ATTENTION]
    assert attention[0] == (1, PROMPT, PROMPT, PROMPT, PROMPT**2, 32, 8, 128, 1)
    kv = PROMPT + DECODE_STEPS
    assert attention[-1] == (1, 1, kv, kv, kv**2, 32, 8, 128, 0)
    assert all(e.dtype == "bf16" for e in gemms)

    # The host read a token each step: it waited until the stream was done, so the virtual
    # time elapsed is the stream's busy time under the fixed predictor.
    elapsed = link.clock - start_ns
    busy = link.stream_busy_ns() - busy0
    assert busy == len(launches) * link.duration_ns
    assert abs(elapsed - busy) <= 0.01 * busy
    assert len(tokens) == DECODE_STEPS
    assert all(0 <= t < 32000 for t in tokens)

    del cache
    gc.collect()
    assert torch.cuda.memory_allocated() == weights


def test_memory_is_the_analytic_byte_count(vcuda: Any, link: RecordingLink) -> None:
    gc.collect()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    cfg = two_layer()
    m = build(cfg)
    assert torch.cuda.memory_allocated() - before == param_bytes(m)
    # The peak: the model built in fp32, plus the first bf16 copy .to() made (the embedding);
    # each fp32 tensor is freed as its bf16 copy replaces it.
    fp32 = sum(-(-t.numel() * 4 // 512) * 512 for t in [*m.parameters(), *m.buffers()])
    embedding = m.embed_tokens.weight
    first_copy = embedding.numel() * embedding.element_size()
    assert torch.cuda.max_memory_allocated() - before == fp32 + first_copy
    free, total = torch.cuda.mem_get_info()
    assert total == 85031714816
    assert free <= total - torch.cuda.memory_reserved() - vcuda.DEFAULT_CONTEXT_BYTES + 1
    del m, embedding
    gc.collect()
    assert torch.cuda.memory_allocated() == before


def test_model_too_large_for_the_sku_raises_oom(vcuda: Any, link: RecordingLink) -> None:
    gc.collect()
    before = torch.cuda.memory_allocated()
    with pytest.raises(torch.OutOfMemoryError, match=r"CUDA out of memory\. Tried to allocate "
                                                     r"[\d.]+ [MG]iB\. GPU 0 has a total "
                                                     r"capacity of 79\.19 GiB"):
        build(LLAMA_8B.__class__(**{**LLAMA_8B.__dict__, "layers": 200}))
    gc.collect()
    assert torch.cuda.memory_allocated() == before
    assert torch.cuda.memory_stats()["num_ooms"] >= 1


def test_cuda_graph_replay_is_one_launch_with_the_captured_duration(
        model: Any, link: RecordingLink, monkeypatch: pytest.MonkeyPatch) -> None:
    from revati.adapters.cuda import tensor

    cfg = model.cfg
    cache = model.kv_cache(1, MAX_SEQ)
    token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    position = torch.zeros(1, dtype=torch.long, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode():
        n0 = len(link.launches)
        with torch.cuda.graph(graph):
            logits = model(token, position, cache, PROMPT)
        assert len(link.launches) == n0, "capture launches nothing"
        captured = link.graphs[graph.graph_id]
        assert [e.op for e in captured] == expected_ops(cfg, 1)
        assert all(e.stream != 0 for e in captured)

        dispatched = []
        monkeypatch.setattr(tensor, "dispatch", lambda *a: dispatched.append(a))
        torch.cuda.synchronize()
        t0 = link.clock
        graph.replay()
        torch.cuda.synchronize()
    assert not dispatched, "replay runs no Python op"
    replay = link.launches[n0:]
    assert len(replay) == 1
    assert replay[0].family == Family.GRAPH and replay[0].feats == (graph.graph_id,)
    assert replay[0].stream == 0
    assert link.clock - t0 == len(captured) * link.duration_ns
    assert logits.shape == (1, 1, cfg.vocab)


def test_sync_during_capture_is_refused(model: Any, link: RecordingLink) -> None:
    graph = torch.cuda.CUDAGraph()
    x = torch.ones(4, device="cuda")
    with pytest.raises(RuntimeError, match="operation not permitted when stream is capturing"), \
            torch.cuda.graph(graph):
        (x * 2).sum().item()
    assert not torch.cuda.is_current_stream_capturing()
