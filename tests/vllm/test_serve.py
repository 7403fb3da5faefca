"""vLLM 0.32 on virtual H100s: `vllm serve` driven by `vllm bench serve` in one session, through
`revatictl demo` (run in the vLLM environment: scripts/setup_vllm_env.sh; .ci/run does it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REVATICTL, Daemon

pytest.importorskip("vllm", reason="needs the vLLM environment (scripts/setup_vllm_env.sh)")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

H100_HBM_BYTES_PER_S = 3.35e12  # H100 SXM HBM3


@dataclass
class Demo:
    result: dict
    log: str
    trace: list[dict]


def run_demo(daemon: Daemon, tmp: Path, *options: str, trace: bool = True) -> Demo:
    out, trace_file = tmp / "demo.json", tmp / "trace.json"
    env = {**os.environ, "REVATI_VLLM_PYTHON": sys.executable, "VLLM_CACHE_ROOT": str(tmp)}
    proc = subprocess.run(
        [*REVATICTL, "--socket", str(daemon.socket), "demo", "--framework", "vllm",
         "--json", str(out), *(("--trace", str(trace_file)) if trace else ()), *options],
        capture_output=True, text=True, timeout=1800, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    events = json.loads(trace_file.read_text()) if trace else []
    return Demo(json.loads(out.read_text()), log,
                events["traceEvents"] if isinstance(events, dict) else events)


@pytest.fixture(scope="module")
def serve_200(module_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """Llama-3.1-8B on one virtual H100: 200 random requests (512 in, 128 out) at 4 req/s."""
    return run_demo(module_daemon, tmp_path_factory.mktemp("serve200"), "--num-prompts", "200",
                    "--request-rate", "4", trace=False)


def test_the_host_use_tells_each_process_time_inside_revati(serve_200: Demo) -> None:
    """The demo's JSON splits the host's time of the benchmark phase: CPU seconds per process,
    and the real seconds each served process spent inside Revati's own code (held freezes;
    the benchmark client's read when it left the session). The engine core runs every op
    through Revati; the API server and the client only their clock reads and waits."""
    use, wall = serve_200.result["host_use"], serve_200.result["bench_wall_s"]
    inside = use["revati_s"]
    assert set(inside) >= {"VLLM::EngineCor", "server", "benchmark client"}
    assert 0 < inside["VLLM::EngineCor"] < wall
    assert inside["benchmark client"] > 0 and inside["server"] > 0
    assert inside["VLLM::EngineCor"] > 10 * max(inside["server"], inside["benchmark client"])


def test_every_request_completes_with_its_output_length(serve_200: Demo) -> None:
    r = serve_200.result
    assert r["completed"] == 200 and r["failed"] == 0
    assert r["output_lens_ok"] is True
    assert "Using V2 Model Runner" in serve_200.log  # the runner vLLM 0.32 runs on an H100
    assert r["total_output_tokens"] == 200 * 128
    # vLLM's own prefix-cache counters saw every prompt (random prompts: next to no hits)
    assert r["prefix_cache"]["prompt_tokens"] >= r["total_input_tokens"]


def test_bench_serve_reports_latencies_in_virtual_time(serve_200: Demo) -> None:
    r = serve_200.result
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p99"):
            assert r[f"{stat}_{metric}_ms"] > 0, (metric, stat)
    # 128 tokens at TPOT each follow the first: E2E is about TTFT + 127 * TPOT
    assert r["mean_e2el_ms"] == pytest.approx(r["mean_ttft_ms"] + 127 * r["mean_tpot_ms"],
                                              rel=0.05)
    # 200 requests arriving over about 50 virtual seconds (Poisson at 4 req/s)
    assert 35 < r["duration"] < 80
    assert "Serving Benchmark Result" in serve_200.log  # vLLM's own table


def test_kv_cache_blocks_follow_the_virtual_allocator(serve_200: Demo) -> None:
    """KV cache = gpu_memory_utilization (0.92) * the H100's capacity - what the model consumed
    (its weights, computed here from the config) - the profiled activation peak, in whole
    blocks of 16 tokens: the arithmetic the same vLLM does on a real H100 80GB."""
    from revati.adapters import models
    from revati.predictors import skus

    cfg = json.loads((models.model_dir("Llama-3.1-8B") / "config.json").read_text())
    h, inter, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"],
                               cfg["num_hidden_layers"], cfg["vocab_size"])
    head = h // cfg["num_attention_heads"]
    kv_dim = head * cfg["num_key_value_heads"]
    params = 2 * vocab * h + h + layers * (h * (h + 2 * kv_dim) + h * h + 3 * h * inter + 2 * h)
    rope_cache = cfg["max_position_embeddings"] * head  # cos and sin halves, one per position
    weight_bytes = 2 * (params + rope_cache)  # bf16
    gib = 2**30

    def logged(pattern: str) -> float:
        return float(re.search(pattern, serve_200.log)[1].replace(",", ""))

    assert logged(r"Model loading took ([\d.]+) GiB") == pytest.approx(weight_bytes / gib,
                                                                       abs=0.006)
    consumed = logged(r"Actual usage is ([\d.]+) GiB for consumed memory") * gib
    # The V2 runner's penalty statistics hold an int32 count per vocabulary entry for every
    # request slot (max_num_seqs: 1024 on an H100 by vLLM's defaults), whatever the requests
    # ask for (vLLM's own TODO: "rarely used but can be very large")
    bin_counts = 1024 * vocab * 4
    assert weight_bytes + bin_counts <= consumed < weight_bytes + bin_counts + 0.25 * gib
    peak = logged(r"([\d.]+) GiB for peak activation") * gib
    assert 0.5 * gib < peak < 4 * gib  # a profile run of 8192 tokens happened
    kv_bytes = 0.92 * skus.spec("h100")["memory_bytes"] - consumed - peak
    per_token = 2 * layers * kv_dim * 2  # K and V, bf16
    tokens = logged(r"GPU KV cache size: ([\d,]+) tokens")
    # the logged GiB figures carry 0.005 GiB each: about 40 blocks of 16 tokens between them
    assert tokens == pytest.approx(kv_bytes / per_token, abs=0.011 * gib / per_token + 16)
    assert tokens % 16 == 0


def test_decode_step_at_batch_one_is_bound_by_weight_bytes(module_daemon: Daemon,
                                                           tmp_path: Path) -> None:
    """Physics: one decode step reads every weight once, 16 GB at 3.35 TB/s, about 4.8 ms. The
    step's kernels (its graph) must take within 25% of that; the time between streamed tokens
    adds the sampler and the host work between steps (vLLM on a real H100 reports 6.2-6.7 ms
    for this model at batch 1). TPOT, (E2E - TTFT) / (n - 1), is no less than the step: the
    first token is not held back (it was, by Nagle's algorithm on the API server's
    connections, until the session's uvloop stand-in set TCP_NODELAY as uvloop does), and the
    time to it is the 512-token prefill plus the API server's and the engine's host work."""
    demo = run_demo(module_daemon, tmp_path, "--num-prompts", "3", "--request-rate", "0.2",
                    "--output-len", "64")
    steps = [e["dur"] / 1e3 for e in demo.trace
             if e.get("ph") == "X" and e.get("name") == "cuda_graph"]
    assert len(steps) >= 3 * 60
    step_ms = sorted(steps)[len(steps) // 2]
    bound_ms = 16.06e9 / H100_HBM_BYTES_PER_S * 1e3
    assert bound_ms <= step_ms < 1.25 * bound_ms
    itl = demo.result["median_itl_ms"]
    assert step_ms <= itl < 1.5 * bound_ms
    assert step_ms <= demo.result["median_tpot_ms"] < 1.5 * bound_ms
    # the prefill's graph (512 tokens, the largest captured), then host work: 14 + 10-19 ms
    # on the 2-core hosts of 2026-12-07 (the API server's, in real time)
    prefill_ms = max(steps)
    assert prefill_ms < demo.result["median_ttft_ms"] < prefill_ms + 6 * step_ms


def test_a_mixture_of_experts_model_serves(module_daemon: Daemon, tmp_path: Path) -> None:
    """Qwen3-30B-A3B (128 experts, 8 a token) on one H100: each MoE layer is its routing launch
    and two grouped GEMMs over the experts the step's tokens reach (adapters/vllm/custom_ops)."""
    demo = run_demo(module_daemon, tmp_path, "--model", "Qwen3-30B-A3B", "--num-prompts", "3",
                    "--request-rate", "4", "--input-len", "128", "--output-len", "16")
    assert demo.result["completed"] == 3 and demo.result["output_lens_ok"]
    names = {e.get("name") for e in demo.trace if e.get("ph") == "X"}
    assert {"vllm::topk_softmax", "vllm::fused_moe_w13", "vllm::fused_moe_w2"} <= names
    # the quickest decode step (batch 1) reads at least the attention weights, 8 experts a layer
    # and the LM head (3.0B parameters, 6.1 GB) and at most every weight (57 GiB)
    step_ms = sorted(e["dur"] / 1e3 for e in demo.trace
                     if e.get("ph") == "X" and e.get("name") == "cuda_graph")[0]
    assert 6e9 / H100_HBM_BYTES_PER_S * 1e3 < step_ms < 61e9 / H100_HBM_BYTES_PER_S * 1e3


def test_tensor_parallel_two_rendezvous_collectives(module_daemon: Daemon, tmp_path: Path) -> None:
    demo = run_demo(module_daemon, tmp_path, "--tp", "2", "--num-prompts", "6",
                    "--request-rate", "4", "--output-len", "32")
    assert demo.result["completed"] == 6 and demo.result["num_gpus"] == 2
    # the engine core and the workers wait for each other through vLLM's shared-memory queues:
    # their readers park on the session page (adapters/vllm/shm_queue.py), so the clock jumps
    # over each step's GPU time (with readers spinning, 16 prompts took 64 jumps in all)
    assert demo.result["jumps"] >= 150, demo.result["jumps"]
    # prefills of 513 tokens run eager (past the largest graph): their all-reduces meet in
    # revatid; decode steps replay graphs with the all-reduces inside. Those of the tensor-
    # parallel group (4 MiB a prefill's) are vLLM's own all-reduce kernel, as on an H100
    collectives = [e for e in demo.trace if e.get("cat") == "collective"]
    assert collectives, "no collective in the trace"
    assert "custom:all_reduce" in {e["name"] for e in collectives}
    # and, as vLLM compiles by default for TP > 1 on Hopper, each is fused with the residual-
    # add RMSNorm after it: a norm launches on its own only after an NCCL all-reduce (the
    # profile run's, past the custom kernel's 8 MiB)
    names = [e.get("name") for e in demo.trace if e.get("ph") == "X"]
    assert names.count("vllm::fused_add_rms_norm") <= names.count("nccl:all_reduce")
    # both ranks' decode graphs ran: one GPU track per virtual device
    tracks = {(e.get("pid"), e.get("tid")) for e in demo.trace
              if e.get("ph") == "X" and e.get("name") == "cuda_graph"}
    assert len(tracks) == 2


def test_pipeline_parallel_two_stages_pass_activations(module_daemon: Daemon,
                                                       tmp_path: Path) -> None:
    """PP=2: each step's activations go from stage 0 to stage 1 as P2P launches that meet in
    revatid (a send buffered in stage 0 while it went idle once hung the first step)."""
    demo = run_demo(module_daemon, tmp_path, "--pp", "2", "--num-prompts", "4",
                    "--request-rate", "4", "--output-len", "16")
    assert demo.result["completed"] == 4 and demo.result["num_gpus"] == 2
    assert demo.result["output_lens_ok"]
    collectives = [e for e in demo.trace if e.get("cat") == "collective"]
    p2p = [e for e in collectives if e["name"] != "nccl:broadcast"]
    assert {e["name"] for e in p2p} == {"nccl:send", "nccl:recv"}
    assert all(e["args"]["group"].endswith("/p2p/0-1") for e in p2p)
    # the V2 runner's last stage broadcasts each step's sampled tokens to the other stages
    # (pp_utils: its own pp_broadcast group), which apply them to their request state
    assert sum(e["name"] == "nccl:broadcast" for e in collectives) >= 16
    # hidden states and residual, every step: stage 1 ran as many steps as stage 0 sent
    sends = sum(e["name"] == "nccl:send" for e in p2p)
    assert sends == sum(e["name"] == "nccl:recv" for e in p2p) and sends >= 2 * 16
    tracks = {(e.get("pid"), e.get("tid")) for e in demo.trace
              if e.get("ph") == "X" and e.get("name") == "cuda_graph"}
    assert len(tracks) == 2
