"""The embedded default job, run inside a Revati session by `revatictl demo --framework vllm`:
`vllm serve` for a bundled model on the session's virtual GPUs, driven by `vllm bench serve`
on a seeded random workload. vLLM's own benchmark table goes to stdout; the benchmark's result
JSON, plus the real (wall) seconds the benchmark phase took, go to --result.

    python -m revati.adapters.vllm.demo --result FILE [--model NAME] [--num-prompts N]
        [--request-rate R] [--seed S] [--input-len L] [--output-len L] [-- SERVE_ARGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from revati.adapters import models
from revati.adapters.clock.hooks import real_monotonic

STARTUP_TIMEOUT_S = 1800.0  # virtual seconds; start-up is host work, so about as much real time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vllm(*args: str) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", *args]


def _wait_healthy(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"vllm serve exited with {server.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("vllm serve did not become healthy")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", required=True, help="write the benchmark result JSON here")
    ap.add_argument("--model", default="Llama-3.1-8B",
                    help=f"a bundled model ({', '.join(models.names())}) or a folder")
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--request-rate", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("serve_args", nargs=argparse.REMAINDER,
                    help="after --: more `vllm serve` arguments")
    args = ap.parse_args(argv)
    extra = args.serve_args[1:] if args.serve_args[:1] == ["--"] else args.serve_args

    model = models.resolve(args.model)
    port = _free_port()
    server = subprocess.Popen(_vllm(
        "serve", model, "--load-format", "dummy", "--port", str(port), "--host", "127.0.0.1",
        "--max-model-len", str(args.max_model_len), "--seed", str(args.seed),
        "--disable-uvicorn-access-log", *extra))
    try:
        _wait_healthy(port, server)
        with tempfile.TemporaryDirectory() as tmp:
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
        result["bench_wall_s"] = bench_wall_s
        result["requested_output_len"] = args.output_len
        Path(args.result).write_text(json.dumps(result))
        return 0
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    sys.exit(main())
