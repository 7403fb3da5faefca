"""The validation workload: Hugging Face transformers' continuous batching serving a trace.

    python -m revati.revatid.validate.workload --device cpu|cuda [--size small|full]
        [--dtype fp32|bf16] [--model NAME] [--layers N] [--threads N] [--out result.json]

One process. A Llama-style model with random weights (seeded) from a bundled config
(adapters/models: `Llama-tiny` by default; `--layers N` keeps its first N layers) is served by
transformers' `ContinuousBatchingManager` (`init_continuous_batching`: paged KV cache, its FIFO
scheduler, a background generation thread, attention `paged|sdpa`). A client in the main thread
submits the requests of the shipped trace (trace.csv: arrival times, prompt and output lengths)
at their arrival times, with random prompt token ids (seeded), and a reader thread stamps every
streamed token with the process clock (`time.perf_counter`). Under `revatictl run` that clock is
the session's virtual clock, so the same code measures real time on a real device and virtual
time under Revati.

The serving configuration is fixed and explicit (block size, number of blocks, batch limits, no
CUDA graphs, no async batching, EOS disabled so every request generates exactly its trace
length), so that the three runs (cpu, cuda, Revati's virtual cuda) schedule the same batches.
The output JSON holds per-request arrival, first-token and finish times and token times, plus
the configuration and provenance.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TRACE = HERE / "trace.csv"
MODEL = "Llama-tiny"
# The real-GPU check's model: Llama 3.1 405B's layers, ten of them (72 GB in bf16, one H200).
# A model that small GPUs serve is host-bound on an H100/H200 without CUDA graphs (a decode
# step of Llama-tiny or an 8B model is mostly Python), and the comparison would then measure
# the two hosts' CPUs; ten 405B layers make each step ~18 ms of HBM reads, so it checks the
# kernels' predicted times and the host/GPU overlap.
GPU_MODEL, GPU_LAYERS = "Llama-3.1-405B", 10


@dataclass(frozen=True)
class Size:
    """How much of the trace to serve and how to scale it."""

    requests: int
    time_scale: float  # arrival times are multiplied by this (trace seconds -> run seconds)
    max_prompt: int  # prompt lengths are clamped to this
    max_output: int  # and output lengths to this


SIZES = {
    "small": Size(requests=36, time_scale=0.2, max_prompt=128, max_output=16),
    "full": Size(requests=64, time_scale=0.15, max_prompt=256, max_output=64),
}


@dataclass(frozen=True)
class Serving:
    """transformers' ContinuousBatchingConfig, fixed so every device schedules alike."""

    block_size: int = 32
    num_blocks: int = 256
    max_batch_tokens: int = 256
    max_requests_per_batch: int = 16


WARMUP = [[(0.0, 16, 4)], [(0.0, 8 + i, 2 + i) for i in range(16)]]


def load_trace(size: Size, path: Path = TRACE) -> list[tuple[float, int, int]]:
    """(arrival s, prompt tokens, output tokens) of the first `size.requests` trace rows."""
    with open(path) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    out = []
    for r in rows[: size.requests]:
        out.append((float(r["arrival_s"]) * size.time_scale,
                    min(int(r["prompt_tokens"]), size.max_prompt),
                    min(int(r["output_tokens"]), size.max_output)))
    return out


def model_config(model: str = MODEL, layers: int | None = None) -> dict[str, Any]:
    """The bundled config, with only its first `layers` layers when given."""
    import revati.adapters.models as models

    try:
        cfg = models.config(model)
    except KeyError as exc:
        raise SystemExit(f"workload: {exc.args[0]}") from None
    if layers:
        cfg["num_hidden_layers"] = layers
    return cfg


def build_model(device: str, dtype: str, seed: int, model: str = MODEL,
                layers: int | None = None) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig.from_dict(model_config(model, layers))
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(seed)
    # built in its dtype: a large model built in fp32 first would need twice its memory
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            net = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    # paged|sdpa on every device: transformers would otherwise switch to flash attention where
    # flash-attn is installed, and the runs would not compare the same kernels
    net.set_attn_implementation("paged|sdpa")
    return net.to(torch_dtype).eval()


def make_manager(model: Any, serving: Serving, max_new_tokens: int, seed: int) -> Any:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                           bos_token_id=1, pad_token_id=0)
    cb = ContinuousBatchingConfig(
        block_size=serving.block_size, num_blocks=serving.num_blocks,
        max_batch_tokens=serving.max_batch_tokens,
        max_requests_per_batch=serving.max_requests_per_batch, allow_block_sharing=False,
        use_async_batching=False, use_cuda_graph=False, seed=seed)
    return model.init_continuous_batching(generation_config=gen, continuous_batching_config=cb)


class Reader(threading.Thread):
    """Drains the manager's output queue, stamping each streamed token with the clock."""

    def __init__(self, manager: Any, expected: int) -> None:
        super().__init__(daemon=True, name="revati-validate-reader")
        self.manager = manager
        self.expected = expected
        self.tokens: dict[str, list[float]] = {}
        self.finished: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while len(self.finished) < self.expected:
            out = self.manager.get_result(timeout=0.5)
            now = time.perf_counter()
            if out is None:
                if not self.manager.is_running():
                    break
                continue
            stamps = self.tokens.setdefault(out.request_id, [])
            # each streamed output carries the tokens so far: stamp the new ones
            stamps.extend([now] * (len(out.generated_tokens) - len(stamps)))
            if out.is_finished():
                self.finished[out.request_id] = now
                if out.error:
                    self.errors[out.request_id] = str(out.error)
        self.done.set()


def serve(manager: Any, requests: list[tuple[float, int, int]], vocab: int, seed: int,
          prefix: str, timeout_s: float) -> dict[str, Any]:
    """Submit `requests` at their arrival times (relative to now); wait for all of them."""
    rng = random.Random(seed)
    prompts = [[rng.randrange(3, vocab) for _ in range(p)] for _, p, _ in requests]
    reader = Reader(manager, len(requests))
    reader.start()
    t0 = time.perf_counter()
    arrivals = {}
    for i, ((arrival, _, out_len), ids) in enumerate(zip(requests, prompts, strict=True)):
        delay = t0 + arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        rid = f"{prefix}{i}"
        arrivals[rid] = time.perf_counter()
        manager.add_request(ids, request_id=rid, max_new_tokens=out_len, streaming=True)
    if not reader.done.wait(timeout_s):
        raise RuntimeError(f"timed out: {len(reader.finished)} of {len(requests)} finished")
    if reader.errors or len(reader.finished) < len(requests):
        raise RuntimeError(f"requests failed: {reader.errors or 'generation thread stopped'}")
    t_end = time.perf_counter()
    out = []
    for i, (arrival, p, o) in enumerate(requests):
        rid = f"{prefix}{i}"
        stamps = reader.tokens[rid]
        out.append({"id": rid, "trace_arrival_s": arrival, "prompt_tokens": p,
                    "output_tokens": o, "generated": len(stamps),
                    "arrival": arrivals[rid] - t0,
                    "token_times": [s - t0 for s in stamps],
                    "finish": reader.finished[rid] - t0})
    return {"requests": out, "span_s": t_end - t0, "t0": t0}


def record_steps(model: Any) -> list[tuple[float, float, int, float]]:
    """(start, end, query tokens, host CPU seconds) of every forward step of the model, by the
    process clock; the CPU time is the stepping thread's (real even under Revati). On a real
    device the span holds the kernels; on a virtual one only the host's own work (the kernels
    are waited for at the step's sync). A step whose span grows while its CPU time does not
    waited for the host's CPU (another tenant, say) or for the device."""
    steps: list[tuple[float, float, int, float]] = []
    starts: list[tuple[float, float]] = []

    def pre(_module: Any, args: Any, kwargs: Any) -> None:
        starts.append((time.perf_counter(), time.thread_time()))

    def post(_module: Any, args: Any, kwargs: Any, _out: Any) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        t, cpu = starts.pop()
        steps.append((t, time.perf_counter(), int(ids.shape[-1]) if ids is not None else 0,
                      time.thread_time() - cpu))

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)
    return steps


def write_kernel_table(prof: Any, path: Path) -> None:
    """Per (op, input shapes): calls and the device time of the kernels it launched itself."""
    rows = [(e.key, str(e.input_shapes), e.count, e.self_device_time_total,
             e.self_cpu_time_total) for e in prof.key_averages(group_by_input_shape=True)
            if e.count]
    rows.sort(key=lambda r: -r[3])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["op", "input_shapes", "calls", "self_device_us", "self_cpu_us"])
        w.writerows(rows)


def provenance(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "host": platform.node(), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(), "revati_session": os.environ.get(
            "REVATI_SESSION"), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        # Under Revati, this process's op credit. Looked up, not imported: on a GPU machine
        # the session module's C clock and msgpack need not exist (scripts/gpu_validate.sh).
        session = sys.modules.get("revati.adapters.session")
        if session is not None and (joined := session.member()) is not None:
            info["op_credit_ns"] = joined.clock.op_credit_ns
    else:
        from revati.predictors.profiler import _cpu_name

        info["device_name"] = _cpu_name()
    return info


def run(device: str, size_name: str, dtype: str, threads: int | None, seed: int = 0,
        timeout_s: float = 1800, model_name: str = MODEL, layers: int | None = None,
        kernel_table: Path | None = None) -> dict[str, Any]:
    """Serve the trace; with `kernel_table` (a real GPU), also time every op's kernels with
    torch.profiler during the measured part and write them there (CSV), which slows the run:
    its latencies are not the ones to compare."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    size = SIZES[size_name]
    serving = Serving()
    requests = load_trace(size)
    wall0 = time.monotonic()
    model = build_model(device, dtype, seed, model_name, layers)
    manager = make_manager(model, serving, size.max_output, seed)
    steps = record_steps(model)
    manager.start()
    try:
        # warm-up: the first batches pay one-off costs (imports, allocator, first-seen ops, and
        # on a GPU loading each kernel at its first use: an H200's first 1-token step took
        # 600 ms); one request alone (1-token steps), then 16 together (each batch size down)
        for i, batch in enumerate(WARMUP):
            serve(manager, batch, model.config.vocab_size, seed + 1 + i, f"warmup{i}-",
                  timeout_s)
        steps.clear()
        if kernel_table is None:
            result = serve(manager, requests, model.config.vocab_size, seed, "req", timeout_s)
        else:
            from torch._C._profiler import _ExperimentalConfig
            from torch.profiler import ProfilerActivity, profile

            # the model runs in the manager's thread, not the one that starts the profiler
            try:
                every_thread = _ExperimentalConfig(profile_all_threads=True)
            except TypeError:  # an older torch: the kernels still show, their ops do not
                every_thread = _ExperimentalConfig()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                         record_shapes=True, experimental_config=every_thread) as prof:
                result = serve(manager, requests, model.config.vocab_size, seed, "req",
                               timeout_s)
            write_kernel_table(prof, kernel_table)
    finally:
        manager.stop(block=True, timeout=30)
    t0 = result.pop("t0")
    result["steps"] = [(a - t0, b - t0, q, cpu) for a, b, q, cpu in steps]
    result.update(
        device=device, size=size_name, size_params=asdict(size), dtype=dtype, seed=seed,
        serving=asdict(serving), warmup=WARMUP, model=model_name, layers=layers,
        model_config=model_config(model_name, layers),
        provenance=provenance(device))
    result["provenance"]["wall_s"] = None  # filled by the caller from outside the session
    result["provenance"]["process_clock_s"] = time.monotonic() - wall0
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m revati.revatid.validate.workload",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--model", default=MODEL, help=f"a bundled model config (default {MODEL})")
    ap.add_argument("--layers", type=int, help="keep the model's first N layers")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1, as the CPU profile); 0: torch's default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the result JSON here (default: stdout)")
    ap.add_argument("--kernel-table", type=Path,
                    help="real GPU: also write each op's kernel times (torch.profiler) here")
    args = ap.parse_args(argv)
    result = run(args.device, args.size, args.dtype, args.threads or None, args.seed,
                 model_name=args.model, layers=args.layers, kernel_table=args.kernel_table)
    text = json.dumps(result)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
