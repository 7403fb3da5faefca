"""The embedded default job, run inside a Revati session by `revatictl demo --framework vllm`:
`vllm serve` for a bundled model on the session's virtual GPUs, driven by `vllm bench serve`
on a seeded random workload. vLLM's own benchmark table goes to stdout; the benchmark's result
JSON, plus the real (wall) seconds the benchmark phase took, go to --result.

    python -m revati.adapters.vllm.demo --result FILE [--model NAME] [--num-prompts N]
        [--request-rate R] [--seed S] [--input-len L] [--output-len L] [--prefix-len P]
        [-- SERVE_ARGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from revati.adapters import demo_driver, models

# vLLM's prefix-cache counters (prompt tokens looked up, and found), v1/metrics/loggers.py
QUERIES, HITS = "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"
# What `vllm bench serve` imports before its run (vllm/entrypoints/cli/benchmark/serve.py):
# imported while the server starts (demo_driver.HeldClient)
BENCH_IMPORTS = ("vllm.entrypoints.cli.main", "vllm.benchmarks.serve")


def _vllm(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "vllm.entrypoints.cli.main", *args]


def bench_serve(args: argparse.Namespace, model: str, port: int, result_dir: str,
                backend: str = "vllm", python: str = sys.executable) -> list[str]:
    """`vllm bench serve` on the demo's workload against the server on `port`, its result in
    `result_dir`/bench.json (also what `revatictl demo --framework sglang --client vllm` runs
    against SGLang, with the OpenAI backend)."""
    if args.prefix_len:
        dataset = ["--dataset-name", "prefix_repetition",
                   "--prefix-repetition-prefix-len", str(args.prefix_len),
                   "--prefix-repetition-suffix-len", str(args.input_len - args.prefix_len),
                   "--prefix-repetition-num-prefixes", str(demo_driver.PREFIX_GROUPS),
                   "--prefix-repetition-output-len", str(args.output_len)]
    else:
        dataset = ["--dataset-name", "random", "--random-input-len", str(args.input_len),
                   "--random-output-len", str(args.output_len)]
    return _vllm(
        "bench", "serve", "--backend", backend, "--model", model,
        "--base-url", f"http://127.0.0.1:{port}", *dataset, "--ignore-eos",
        "--num-prompts", str(args.num_prompts),
        "--request-rate", str(args.request_rate), "--seed", str(args.seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--save-result", "--save-detailed", "--result-dir", result_dir,
        "--result-filename", "bench.json", python=python)


def main(argv: list[str] | None = None) -> int:
    args, extra = demo_driver.parse_args(__doc__, "vllm serve", argv,
                                         (("--max-model-len", 4096),))
    if args.client != "own":
        raise SystemExit("revati vllm demo: the client is vLLM's own `vllm bench serve`")
    model = models.resolve(args.model)
    port = demo_driver.free_port()
    command = _vllm("serve", model, "--load-format", "dummy", "--port", str(port),
                    "--host", "127.0.0.1", "--max-model-len", str(args.max_model_len),
                    "--seed", str(args.seed), "--disable-uvicorn-access-log", *extra)
    with tempfile.TemporaryDirectory() as tmp, \
            demo_driver.HeldClient(bench_serve(args, model, port, tmp), BENCH_IMPORTS) as client, \
            demo_driver.serving(command, port, "vllm serve") as server:
        code, bench_wall_s, host_use = demo_driver.run_benchmark(client, server)
        if code != 0:
            return code
        result = json.loads((Path(tmp) / "bench.json").read_text())
        cache = demo_driver.metrics(port, (QUERIES, HITS))
    demo_driver.write_result(args.result, result, bench_wall_s, args.output_len,
                             (cache[QUERIES], cache[HITS]), host_use)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    sys.exit(main())
