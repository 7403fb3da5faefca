"""The embedded default job, run inside a Revati session by `revatictl demo --framework sglang`:
`python -m sglang.launch_server` for a bundled model on the session's virtual GPUs, driven by
SGLang's own `python -m sglang.bench_serving` on a seeded random-ids workload. SGLang's table
goes to stdout; the benchmark's result, in vLLM bench-serve's key names (what
revatid/demo/serving.py reads), plus the real (wall) seconds the benchmark phase took, go to
--result.

    python -m revati.adapters.sglang.demo --result FILE [--model NAME] [--num-prompts N]
        [--request-rate R] [--seed S] [--input-len L] [--output-len L] [--prefix-len P]
        [--client own|vllm] [-- SERVER_ARGS...]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from revati.adapters import demo_driver, models
from revati.adapters.vllm import demo as vllm_demo
from revati.revatid.demo.serving import framework_python

# SGLang's result keys whose vLLM names differ (e2e_latency -> e2el); the ttft/tpot/itl keys
# already match (`{mean,median,p90,p99}_{metric}_ms`).
STATS = ("mean", "median", "p90", "p99")
# SGLang's token counters (with --enable-metrics): prompt tokens, and those its radix cache
# served (srt/observability/metrics_collector.py)
PROMPT_TOKENS, CACHED_TOKENS = "sglang:prompt_tokens_total", "sglang:cached_tokens_total"


def to_vllm_keys(result: dict[str, Any], num_prompts: int) -> dict[str, Any]:
    """SGLang's bench_serving result (with --output-details) in vLLM bench-serve's key names."""
    out = dict(result)
    for stat in STATS:
        key = f"{stat}_e2e_latency_ms"
        if key in result:
            out[f"{stat}_e2el_ms"] = result[key]
    errors = result.get("errors") or []
    out["num_prompts"] = num_prompts
    out["failed"] = sum(1 for e in errors if e)
    if "total_throughput" in result:
        out["total_token_throughput"] = result["total_throughput"]
    # bulky per-request lists the report never reads
    for key in ("generated_texts", "itls", "server_info"):
        out.pop(key, None)
    return out


def main(argv: list[str] | None = None) -> int:
    args, extra = demo_driver.parse_args(__doc__, "sglang.launch_server", argv,
                                         (("--context-length", 4096),))
    model = models.resolve(args.model)
    port = demo_driver.free_port()
    command = [sys.executable, "-m", "sglang.launch_server", "--model-path", model,
               "--load-format", "dummy", "--host", "127.0.0.1", "--port", str(port),
               "--context-length", str(args.context_length), "--random-seed", str(args.seed),
               "--enable-metrics", *extra]
    if args.prefix_len:
        groups = demo_driver.PREFIX_GROUPS
        dataset = ["--dataset-name", "generated-shared-prefix", "--gsp-num-groups", str(groups),
                   "--gsp-prompts-per-group", str(-(-args.num_prompts // groups)),
                   "--gsp-system-prompt-len", str(args.prefix_len),
                   "--gsp-question-len", str(args.input_len - args.prefix_len),
                   "--gsp-output-len", str(args.output_len), "--gsp-range-ratio", "1.0"]
    else:
        dataset = ["--dataset-name", "random-ids", "--random-input-len", str(args.input_len),
                   "--random-output-len", str(args.output_len), "--random-range-ratio", "1.0"]
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "bench.jsonl"
        if args.client == "vllm":  # vLLM's load generator, from its own environment
            client = vllm_demo.bench_serve(args, model, port, tmp, backend="openai",
                                           python=framework_python("vllm"))
            preload = vllm_demo.BENCH_IMPORTS
        else:
            client = [sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang",
                      "--base-url", f"http://127.0.0.1:{port}", "--model", model,
                      "--tokenizer", model, *dataset, "--num-prompts", str(args.num_prompts),
                      "--request-rate", str(args.request_rate), "--seed", str(args.seed),
                      "--warmup-requests", "0", "--output-file", str(out_file),
                      "--output-details"]
            preload = ("sglang.bench_serving",)
        # /health answers 200 once the server's own warm-up request has been served
        with demo_driver.HeldClient(client, preload) as held, \
                demo_driver.serving(command, port, "sglang.launch_server") as server:
            code, bench_wall_s, host_use = demo_driver.run_benchmark(held, server)
            if code != 0:
                return code
            cache = demo_driver.metrics(port, (PROMPT_TOKENS, CACHED_TOKENS))
        if args.client == "vllm":
            result = json.loads((Path(tmp) / "bench.json").read_text())
        else:
            lines = out_file.read_text().splitlines()
            if not lines:
                print("sglang.bench_serving wrote no result", file=sys.stderr)
                return 1
            result = to_vllm_keys(json.loads(lines[-1]), args.num_prompts)
    demo_driver.write_result(args.result, result, bench_wall_s, args.output_len,
                             (cache[PROMPT_TOKENS], cache[CACHED_TOKENS]), host_use)
    return 0


if __name__ == "__main__":
    sys.exit(main())
