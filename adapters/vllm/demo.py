"""The embedded default job, run inside a Revati session by `revatictl demo --framework vllm`:
`vllm serve` for a bundled model on the session's virtual GPUs, driven by `vllm bench serve`
on a seeded random workload. vLLM's own benchmark table goes to stdout; the benchmark's result
JSON, plus the real (wall) seconds the benchmark phase took, go to --result.

    python -m revati.adapters.vllm.demo --result FILE [--model NAME] [--num-prompts N]
        [--request-rate R] [--seed S] [--input-len L] [--output-len L] [-- SERVE_ARGS...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from revati.adapters import demo_driver, models
from revati.adapters.clock.hooks import real_monotonic


def _vllm(*args: str) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", *args]


def main(argv: list[str] | None = None) -> int:
    args, extra = demo_driver.parse_args(__doc__, "vllm serve", argv,
                                         (("--max-model-len", 4096),))
    model = models.resolve(args.model)
    port = demo_driver.free_port()
    command = _vllm("serve", model, "--load-format", "dummy", "--port", str(port),
                    "--host", "127.0.0.1", "--max-model-len", str(args.max_model_len),
                    "--seed", str(args.seed), "--disable-uvicorn-access-log", *extra)
    with demo_driver.serving(command, port, "vllm serve"), \
            tempfile.TemporaryDirectory() as tmp:
        wall0 = real_monotonic()
        bench = subprocess.run(_vllm(
            "bench", "serve", "--backend", "vllm", "--model", model,
            "--base-url", f"http://127.0.0.1:{port}", "--dataset-name", "random",
            "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--ignore-eos",
            "--num-prompts", str(args.num_prompts),
            "--request-rate", str(args.request_rate), "--seed", str(args.seed),
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--save-detailed", "--result-dir", tmp,
            "--result-filename", "bench.json"))
        bench_wall_s = real_monotonic() - wall0
        if bench.returncode != 0:
            return bench.returncode
        result = json.loads((Path(tmp) / "bench.json").read_text())
    demo_driver.write_result(args.result, result, bench_wall_s, args.output_len)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    sys.exit(main())
