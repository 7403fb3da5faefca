"""The embedded default job, run inside a Revati session by `revatictl demo --framework sglang`:
`python -m sglang.launch_server` for a bundled model on the session's virtual GPUs, driven by
SGLang's own `python -m sglang.bench_serving` on a seeded random-ids workload. SGLang's table
goes to stdout; the benchmark's result, in vLLM bench-serve's key names (what
revatid/demo/serving.py reads), plus the real (wall) seconds the benchmark phase took, go to
--result.

    python -m revati.adapters.sglang.demo --result FILE [--model NAME] [--num-prompts N]
        [--request-rate R] [--seed S] [--input-len L] [--output-len L] [-- SERVER_ARGS...]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from revati.adapters import models
from revati.adapters.clock.hooks import real_monotonic

STARTUP_TIMEOUT_S = 1800.0  # virtual seconds; start-up is host work, so about as much real time

# SGLang's result keys whose vLLM names differ (e2e_latency -> e2el); the ttft/tpot/itl keys
# already match (`{mean,median,p90,p99}_{metric}_ms`).
STATS = ("mean", "median", "p90", "p99")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"sglang.launch_server exited with {server.returncode} during "
                             "start-up")
        try:
            # /health answers 200 once the server's own warm-up request has been served
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("sglang.launch_server did not become healthy")


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--result", required=True, help="write the benchmark result JSON here")
    ap.add_argument("--model", default="Llama-3.1-8B",
                    help=f"a bundled model ({', '.join(models.names())}) or a folder")
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--request-rate", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--context-length", type=int, default=4096)
    ap.add_argument("server_args", nargs=argparse.REMAINDER,
                    help="after --: more `sglang.launch_server` arguments")
    args = ap.parse_args(argv)
    extra = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args

    model = models.resolve(args.model)
    port = _free_port()
    server = subprocess.Popen([
        sys.executable, "-m", "sglang.launch_server", "--model-path", model,
        "--load-format", "dummy", "--host", "127.0.0.1", "--port", str(port),
        "--context-length", str(args.context_length), "--random-seed", str(args.seed),
        *extra])
    try:
        _wait_healthy(port, server)
        with tempfile.TemporaryDirectory() as tmp:
            out_file = Path(tmp) / "bench.jsonl"
            wall0 = real_monotonic()
            bench = subprocess.run([
                sys.executable, "-m", "sglang.bench_serving", "--backend", "sglang",
                "--base-url", f"http://127.0.0.1:{port}", "--model", model,
                "--tokenizer", model, "--dataset-name", "random-ids",
                "--random-input-len", str(args.input_len),
                "--random-output-len", str(args.output_len), "--random-range-ratio", "1.0",
                "--num-prompts", str(args.num_prompts),
                "--request-rate", str(args.request_rate), "--seed", str(args.seed),
                "--warmup-requests", "0", "--output-file", str(out_file),
                "--output-details"])
            bench_wall_s = real_monotonic() - wall0
            if bench.returncode != 0:
                return bench.returncode
            lines = out_file.read_text().splitlines()
            if not lines:
                print("sglang.bench_serving wrote no result", file=sys.stderr)
                return 1
            result = to_vllm_keys(json.loads(lines[-1]), args.num_prompts)
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
    sys.exit(main())
