"""`revatictl demo --framework vllm|sglang`: a real serving stack and its own benchmark client
in one session on virtual GPUs (the drivers are `revati.adapters.<framework>.demo`, run with
the framework's own virtual environment)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SETUP = {"vllm": "scripts/setup_vllm_env.sh", "sglang": "scripts/setup_sglang_env.sh"}

# vLLM's benchmark result fields that the demo's JSON carries over
RESULT_FIELDS = ("completed", "failed", "num_prompts", "request_rate", "duration",
                 "total_input_tokens", "total_output_tokens", "request_throughput",
                 "output_throughput", "total_token_throughput")
METRICS = ("ttft", "tpot", "itl", "e2el")


def framework_python(framework: str) -> str:
    """The interpreter of the framework's environment: $REVATI_<FW>_PYTHON, the project's
    .venv-<fw>, or this interpreter if it has the framework installed."""
    explicit = os.environ.get(f"REVATI_{framework.upper()}_PYTHON")
    if explicit:
        return explicit
    venv = Path(os.environ.get(f"REVATI_{framework.upper()}_VENV", REPO / f".venv-{framework}"))
    if (venv / "bin" / "python").exists():
        return str(venv / "bin" / "python")
    if importlib.util.find_spec(framework) is not None:
        return sys.executable
    raise SystemExit(f"revatictl demo: no {framework} environment; create it with "
                     f"bash {SETUP[framework]} (or set REVATI_{framework.upper()}_PYTHON)")


def report(result: dict[str, Any], final: dict[str, Any], framework: str) -> dict[str, Any]:
    out: dict[str, Any] = {"framework": framework, "gpu": final["gpu"],
                           "num_gpus": final["num_gpus"]}
    out.update({k: result[k] for k in RESULT_FIELDS if k in result})
    for m in METRICS:
        for stat in ("mean", "median", "p90", "p99"):
            key = f"{stat}_{m}_ms"
            if key in result:
                out[key] = result[key]
    c = final["counters"]
    out.update(virtual_s=c["virtual_s"], wall_s=c["wall_s"], speedup=c["speedup"],
               jumps=c["jumps"], quiescence_by_proc=c["quiescence_by_proc"])
    # the benchmark phase alone (start-up is host work, at real rate)
    if "bench_wall_s" in result:
        out["bench_virtual_s"] = result["duration"]
        out["bench_wall_s"] = result["bench_wall_s"]
        out["bench_speedup"] = result["duration"] / result["bench_wall_s"]
    for key in ("prefix_cache", "host_use"):  # the server's own counters; the host's time
        if key in result:
            out[key] = result[key]
    if "output_lens" in result:  # every request got the output length it asked for
        out["output_lens_ok"] = all(n == result["requested_output_len"]
                                    for n in result["output_lens"])
    return out


def run(args: argparse.Namespace, sock: str, create: Any, stop: Any, trace: Any) -> int:
    """Run the framework's demo driver in a new session; print vLLM's table, then Revati's."""
    from revati.adapters import models
    from revati.revatid.ctl import hook_env, summary_text

    if not (Path(args.model) / "config.json").is_file():
        try:
            args.model = models.canonical(args.model)
        except KeyError:
            raise SystemExit(f"revatictl demo: --model {args.model} is neither a bundled model ("
                             f"{', '.join(models.names())}) nor a folder with a config.json"
                             ) from None
    python = framework_python(args.framework)
    tp, pp = args.tensor_parallel_size, args.pipeline_parallel_size
    with tempfile.TemporaryDirectory(prefix="revati-demo-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [python, "-m", f"revati.adapters.{args.framework}.demo",
                   "--result", str(result_file), "--model", args.model,
                   "--num-prompts", str(args.num_prompts),
                   "--request-rate", str(args.request_rate), "--seed", str(args.seed),
                   "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                   "--prefix-len", str(args.prefix_len), "--client", args.client]
        parallel = [*(("--tensor-parallel-size", str(tp)) if tp > 1 else ()),
                    *(("--pipeline-parallel-size", str(pp)) if pp > 1 else ())]
        if parallel:
            command += ["--", *parallel]
        # linger: the session outlives its last process while the trace of a long run is
        # serialised (revatid's default, 5 s, can pass before the stop request arrives)
        session = create(args.gpu, tp * pp, {"seed": args.seed, "name": f"demo-{args.framework}",
                                         "rate": args.cpu_dilation, "cpus": args.host_cpus,
                                         "linger_s": 120.0})
        code = subprocess.run(command, env=hook_env(sock, session["id"])).returncode
        if args.trace:
            trace(session["id"], args.trace)
        final = stop(session["id"])
        print(summary_text(final, code), file=sys.stderr)
        if code != 0:
            return code
        result = json.loads(result_file.read_text())
    out = report(result, final, args.framework)
    print(f"Revati: {out['completed']} requests on {tp * pp} x virtual {final.get('gpu_name')}; "
          f"benchmark {out.get('bench_virtual_s', 0):.2f} s virtual in "
          f"{out.get('bench_wall_s', 0):.2f} s wall ({out.get('bench_speedup', 0):.2f}x), "
          f"whole session {out['speedup']:.2f}x")
    cache = out.get("prefix_cache")
    if cache and cache["prompt_tokens"]:
        print(f"Revati: prefix cache (the server's metrics): {cache['hit_tokens']:.0f} of "
              f"{cache['prompt_tokens']:.0f} prompt tokens hit")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    if out["completed"] < args.num_prompts:
        print(f"revati demo: {args.num_prompts - out['completed']} of {args.num_prompts} "
              "requests failed (the server's log above says why)", file=sys.stderr)
        return 1
    return 0
