"""The accuracy harness: self-emulation end to end (real CPU run against the same workload on a
virtual host-cpu device), and its parts (metrics, the PNG writer, the synchronous stream model,
profiled-device lookup)."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from revati.predictors.launch import Family, LaunchEvent
from revati.revatid.gpu import GpuTimeline
from revati.revatid.protocol import ITEM_LAUNCH
from revati.revatid.trace import Trace
from revati.revatid.validate import cli, metrics, plot, workload
from tests.conftest import Daemon, revatictl_run

ROOT = Path(__file__).parents[2]
GPU_RESULTS = ROOT / "results" / "h200-full"


def _result(arrivals: list[float], tokens: list[list[float]]) -> dict:
    reqs = [{"arrival": a, "token_times": t, "finish": t[-1]}
            for a, t in zip(arrivals, tokens, strict=True)]
    return {"requests": reqs, "span_s": max(t[-1] for t in tokens)}


def test_metrics_from_token_times() -> None:
    r = _result([0.0, 1.0], [[0.1, 0.2, 0.4], [1.5, 1.6]])
    s = metrics.samples(r)
    assert s["ttft"] == pytest.approx([0.1, 0.5])
    assert s["tpot"] == pytest.approx([0.15, 0.1])
    assert s["itl"] == pytest.approx([0.1, 0.2, 0.1])
    assert s["e2e"] == pytest.approx([0.4, 0.6])
    summary = metrics.summary(r)
    assert summary["ttft_p50_ms"] == pytest.approx(300.0)
    assert summary["throughput_tok_s"] == pytest.approx(5 / 1.6)
    table = metrics.compare([r], [_result([0.0, 1.0], [[0.11, 0.2, 0.4], [1.5, 1.6]])])
    assert table["ttft_p50_ms"]["error_pct"] == pytest.approx(305 / 300 * 100 - 100)
    assert metrics.check(table, {"ttft_p50_ms": 5.0}) == []
    assert metrics.check(table, {"ttft_p50_ms": 1.0})


def test_pooled_runs_keep_every_request() -> None:
    a = _result([0.0], [[0.1, 0.3]])
    b = _result([0.0], [[0.2, 0.4]])
    p = metrics.pooled([a, b])
    assert len(p["requests"]) == 2 and p["runs"] == 2
    assert metrics.summary(p)["ttft_p50_ms"] == pytest.approx(150.0)


def test_each_side_is_its_median_run_with_the_runs_spread_beside_the_error() -> None:
    """A side that ran several times is compared by its median run (per metric the median of
    each run's own value: one run slowed by the host moves it less than a pool of requests
    would) and gets the spread of its runs ((max - min) / median), in the comparison, the
    table and a failure's message; a side run once gets none."""
    runs = [_result([0.0], [[t, t + 0.1]]) for t in (0.10, 0.12, 0.30)]  # TTFT 100, 120, 300 ms
    value, spread = metrics.typical(runs)
    assert value["ttft_p50_ms"] == pytest.approx(120.0)
    assert metrics.summary(metrics.pooled(runs))["ttft_p50_ms"] == pytest.approx(120.0)
    assert spread["ttft_p50_ms"] == pytest.approx(200 / 120 * 100)
    # the slow run moves the pooled p90 by a third of its excess, the median run not at all
    assert value["ttft_p90_ms"] == pytest.approx(120.0)
    assert metrics.summary(metrics.pooled(runs))["ttft_p90_ms"] == pytest.approx(264.0)
    table = metrics.compare(runs, [_result([0.0], [[0.2, 0.3]])])
    assert table["ttft_p50_ms"]["real"] == pytest.approx(120.0)
    assert table["ttft_p50_ms"]["real_spread_pct"] == pytest.approx(200 / 120 * 100)
    assert "emulated_spread_pct" not in table["ttft_p50_ms"]
    lines = metrics.table(table).splitlines()
    assert lines[0].split()[-2:] == ["spread", "%"] and "emul spread" not in lines[0]
    ttft = next(line for line in lines if line.startswith("ttft_p50_ms"))
    assert ttft.split()[-1] == "166.7"
    (failure,) = metrics.check(table, {"ttft_p50_ms": 10.0})
    assert "+66.7%, bound 10%; the real runs spread 167%" in failure


def test_step_cycles_and_stalls() -> None:
    """Cycles run from one step's start to the next; a pooled second run (restarting at 0)
    adds no cycle across the boundary; a step over five medians of its peers (as many query
    tokens, to the power of two) is a stall; a long prefill among short decodes and an idle
    gap between steps are not."""
    run = {"steps": [[0.0, 0.5, 256], [0.6, 0.65, 1], [0.7, 0.75, 1], [0.8, 1.8, 1],
                     [1.9, 1.95, 1], [3.0, 3.05, 1], [3.1, 3.6, 250], [3.7, 4.2, 256]]}
    c = metrics.step_cycles(metrics.pooled([dict(run, requests=[], span_s=4.2)] * 2))
    # cycles 600, 100, 100, 1100, 1100, 100, 600 ms in each run
    assert c["cycle_p50_ms"] == pytest.approx(600.0)
    assert c["stalls"] == 2 and c["stalled_s"] == pytest.approx(2.0)
    assert metrics.step_cycles({"steps": [[0.0, 0.1, 4]]}) == {}


def test_validate_from_pools_every_real_run(tmp_path: Path) -> None:
    for name in ("real.json", "real-10.json", "real-2.json", "real-notes.json", "kernels.csv"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in cli.real_runs(tmp_path)] == ["real.json", "real-2.json",
                                                          "real-10.json"]


def test_validate_from_a_folder_that_is_not_a_gpu_result(tmp_path: Path) -> None:
    (tmp_path / "real.json").write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "revati.revatid.ctl", "validate", "--from",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{tmp_path} is not a GPU results folder (no provenance.json, profile)" in proc.stderr


def test_validate_from_refuses_a_repeat_of_another_workload(tmp_path: Path) -> None:
    real = json.loads((GPU_RESULTS / "real.json").read_text())
    (tmp_path / "real.json").write_text(json.dumps(real))
    (tmp_path / "real-2.json").write_text(json.dumps({**real, "size": "small"}))
    (tmp_path / "provenance.json").write_text((GPU_RESULTS / "provenance.json").read_text())
    (tmp_path / "profile").mkdir()
    proc = subprocess.run([sys.executable, "-m", "revati.revatid.ctl", "validate", "--from",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "real-2.json is not a repeat" in proc.stderr and "size" in proc.stderr


def test_png_is_a_valid_rgb_image(tmp_path: Path) -> None:
    real = {"ttft": [0.1, 0.2], "tpot": [0.01, 0.02], "itl": [0.01], "e2e": [0.5, 0.6]}
    emu = {"ttft": [0.12, 0.2], "tpot": [0.01, 0.03], "itl": [0.02], "e2e": [0.4, 0.6]}
    out = tmp_path / "cdf.png"
    plot.cdf_png(real, emu, out, "TEST")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41:41 + idat_len])
    assert len(raw) == height * (1 + 3 * width)
    pixels = {raw[i:i + 3] for i in range(1, len(raw), 3)}
    assert bytes(plot.BLUE) in pixels and bytes(plot.ORANGE) in pixels


def test_trace_sizes() -> None:
    small, full = workload.load_trace(workload.SIZES["small"]), \
        workload.load_trace(workload.SIZES["full"])
    assert len(small) == workload.SIZES["small"].requests
    assert len(full) == workload.SIZES["full"].requests
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(full))
    assert max(p for _, p, _ in small) <= workload.SIZES["small"].max_prompt


class _Fixed:
    def predict(self, events: list) -> list[int]:
        return [10] * len(events)


def _launch(t: int) -> list:
    ev = LaunchEvent(Family.MEMORY, "aten::add", "fp32", 0, 0, t, (8, 2))
    return [ITEM_LAUNCH, *ev]


@pytest.mark.parametrize(("synchronous", "ready"), [(False, 20), (True, 40)])
def test_synchronous_device_serialises_host_and_kernels(synchronous: bool, ready: int) -> None:
    # two 10 ns kernels launched at 0 and 5; the host syncs at 20. A GPU overlaps the host's
    # time with the kernels (ready 20 = 5 + 10 behind the first); a CPU runs them on the host
    # thread: 20 ns of the host's own time plus 20 ns of kernels.
    tl = GpuTimeline(lambda: _Fixed(), Trace())
    tl.synchronous = synchronous
    tl.submit(1, [_launch(0), _launch(5)])
    assert tl.stream_ready(1, 0, 0, now=20) == ready
    # after the sync the host has caught up: a launch at `ready` starts then
    tl.submit(1, [_launch(ready)])
    assert tl.stream_ready(1, 0, 0, now=ready) == ready + 10


def test_profiled_device_is_found_in_the_user_bundle_folder(tmp_path: Path,
                                                              monkeypatch) -> None:
    from revati.predictors import skus

    monkeypatch.setenv("REVATI_BUNDLES", str(tmp_path))
    with pytest.raises(skus.UnknownSku):
        skus.resolve("host-cpu")
    (tmp_path / "host-cpu").mkdir()
    spec = {"name": "Some CPU", "flops": {"fp32": 1e11}, "memory_bytes": 1 << 30,
            "synchronous": True}
    (tmp_path / "host-cpu" / "bundle.json").write_text(json.dumps({"spec": spec}))
    assert skus.resolve("Host-CPU") == "host-cpu"
    dev = skus.device_spec("host-cpu")
    assert dev["name"] == "Some CPU" and dev["synchronous"] and dev["capability"] == [8, 0]
    assert skus.resolve("h100") == "h100"


def test_the_self_check_runs_each_side_three_times_by_default() -> None:
    """A lone run of either side moves its p50s by 5-25% on a shared host: the bare command
    compares the median of three runs a side."""
    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers(dest="command"))
    assert ap.parse_args(["validate", "--self"]).repeats == 3
    assert ap.parse_args(["validate", "--self", "--repeats", "1"]).repeats == 1


OUTSIDE_A_SESSION = """import sys, torch
from revati.revatid.validate import workload
torch.cuda.get_device_name = lambda index: "A real GPU"
info = workload.provenance("cuda")
print("op_credit_ns" in info, "revati.adapters.session" in sys.modules)
"""


@pytest.mark.torch
def test_a_real_gpu_runs_provenance_leaves_revatis_session_code_alone() -> None:
    """On a lent GPU machine the workload runs from source folders (scripts/gpu_validate.sh),
    where the session module's C clock and msgpack need not exist: the provenance of a real
    `cuda` run must not import it (the op credit is an emulated process's only)."""
    pytest.importorskip("transformers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVATI_")}
    proc = subprocess.run([sys.executable, "-c", OUTSIDE_A_SESSION], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "False"]


FAULTS = """import resource
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    blocks = [bytearray(4 << 20) for _ in range(4)]
    blocks = None
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def test_the_real_cpu_run_keeps_freed_memory_as_a_caching_allocator_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real CPU run and the CPU profile run with glibc's malloc keeping what is freed
    (a GPU's caching allocator does): by default it unmaps large frees and trims its heap, and
    the next step faults the pages in again (2,000-2,700 faults a 128-token prefill step of the
    self-check's model). A tunable set before keeps its place."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    env = cli._cpu_env()
    assert env["OMP_NUM_THREADS"] == str(cli.THREADS) and "REVATI_SESSION" not in env
    assert env["GLIBC_TUNABLES"].endswith(cli.KEEP_FREED_MEMORY)

    def faults(extra: dict[str, str]) -> int:
        base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True,
                             env={**base, **extra}, check=True).stdout
        return int(out)

    kept = faults({"GLIBC_TUNABLES": env["GLIBC_TUNABLES"]})
    assert kept * 10 < faults({}), kept  # measured: ~4,100 against ~200,000
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert cli._cpu_env()["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{cli.KEEP_FREED_MEMORY}"


def test_the_self_check_profiles_its_models_own_shapes() -> None:
    """The CPU profile of --self times Llama-tiny's shapes (its masked attention among them)
    to the serving's batch token limit, in passes taken between the real runs and pooled
    afterwards, where the slowdown after idle is timed."""
    cmd = cli.profile_cmd(Path("/x"), 2)
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert cmd[1:3] == ["-m", "revati.predictors.profiler"]
    model = {"--device": "cpu", "--model": workload.MODEL,
             "--max-tokens": str(workload.Serving().max_batch_tokens)}
    assert flags == {**model, "--passes": "2", "--wake-rounds": "0", "--out": "/x"}
    merge = cli.profile_cmd(Path("/m"), merge=(Path("/a"), Path("/b")))
    assert merge[3:] == [a for k, v in model.items() for a in (k, v)] + [
        "--merge", "/a", "--merge", "/b", "--out", "/m"]
    assert cli.PROFILE_PASSES > 1


def test_host_speed_probe_and_drift() -> None:
    """The probe times a GEMM on one thread and gives the thread count back; the drift is how
    much slower the host was around the real runs than around the profiles."""
    torch = pytest.importorskip("torch")
    from revati.revatid.validate import host_speed

    threads = torch.get_num_threads()
    ms = host_speed.probe_ms(calls=5)
    assert 0 < ms < 1000 and torch.get_num_threads() == threads
    d = host_speed.drift([1.2, 1.1, 1.3], [1.0, 1.0])
    assert (d["real_ms"], d["profile_ms"], d["drift_pct"]) == (1.2, 1.0, 20.0)
    assert host_speed.drift([0.9], [1.0])["drift_pct"] == -10.0


def test_a_step_caught_in_a_slow_spell_of_the_host_is_taken_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SteadyHost probes the host around each step and takes the step again while a probe is
    over SLOW_SPELL times the check's fastest one, at most RETRIES times, keeping the last
    try; each retry is said in `retried`."""
    from revati.revatid.validate import host_speed

    probes = iter([1.0, 1.05, 1.1,  # the three at the start
                   1.02, 1.6,  # the first step: a slow spell after it
                   1.0, 1.1,  # its second try: steady
                   1.5, 1.4, 1.3, 1.4, 1.2, 1.5])  # the second step: slow every time
    monkeypatch.setattr(host_speed, "probe_ms", lambda: next(probes))
    calls = []
    host = host_speed.SteadyHost()
    assert host.run(lambda: calls.append("a") or len(calls), "real run 1") == (2, [1.0, 1.1])
    assert host.retried == ["real run 1: probes 1.020 and 1.600 ms, the fastest 1.000 ms"]
    assert host.run(lambda: calls.append("b") or len(calls), "profile 1") == (5, [1.2, 1.5])
    assert calls == ["a", "a", "b", "b", "b"] and len(host.retried) == 1 + host_speed.RETRIES


REGRESSION_BOUND_PCT = 35.0


@pytest.mark.torch
def test_self_emulation_small(tmp_path: Path) -> None:
    """`revatictl validate --self` at the CI size: both sides serve the same requests and
    tokens, the profile's passes are taken between the real runs, the report, bundle and plot
    are written, and p50 TTFT, TPOT and E2E of the emulated median run are within
    REGRESSION_BOUND of the real one (each side run three times). The issue's bound is 10%;
    docs/validation.md (item 13) has the measured errors (2026-12-07: within it in 6 of 8
    checks, TTFT -22% to +5%, TPOT -14% to +8%, E2E -12% to +7%) and why it does not hold
    every time on this VM (the command itself exits 1 past 10%)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "self.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVATI_")}
    env["REVATI_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "revati.revatid.ctl", "validate", "--self", "--size", "small",
         "--repeats", "3", "--keep", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    m = report["metrics"]
    # the same requests and tokens on both sides
    assert report["steps"]["real"]["query_tokens"] == report["steps"]["emulated"]["query_tokens"]
    for key in ("ttft_p50_ms", "tpot_p50_ms", "e2e_p50_ms"):
        assert m[key]["real"] > 0 and m[key]["emulated"] > 0
        # each side ran three times: its runs' own spread stands beside the error
        assert m[key]["real_spread_pct"] >= 0 and m[key]["emulated_spread_pct"] >= 0
    assert report["speed"]["kernel_launches"] > 1000
    # each emulated process measured its op credit (a few us on any host this runs on), and
    # the session summed what it credited across the three runs
    assert all(200 < ns < 50_000 for ns in report["speed"]["op_credit_ns"])
    assert len(report["speed"]["op_credit_ns"]) == 3 and report["speed"]["op_entry_s"] > 0
    # the host's speed probed around each real run and each profile
    speed = report["host_speed"]
    assert len(speed["around_real_ms"]) == len(speed["around_profile_ms"]) == 2 * 3
    assert isinstance(speed["drift_pct"], float) and "host speed:" in proc.stdout
    assert isinstance(speed["retried"], list) and report["profile_passes"] >= cli.PROFILE_PASSES
    assert (tmp_path / "cache" / "bundles" / "host-cpu" / "bundle.json").is_file()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # --keep: each run's own result, whose median run is the report's, and the profile
    kept = {side: [json.loads((tmp_path / "runs" / f"{side}-{i}.json").read_text())
                   for i in (1, 2, 3)] for side in ("real", "emulated")}
    assert m["tpot_p50_ms"]["real"] == metrics.typical(kept["real"])[0]["tpot_p50_ms"]
    assert m["tpot_p50_ms"]["emulated"] == metrics.typical(kept["emulated"])[0]["tpot_p50_ms"]
    assert (tmp_path / "runs" / "profile" / "spec.json").is_file()
    sessions = [json.loads((tmp_path / "runs" / f"emulated-{i}.session.json").read_text())
                for i in (1, 2, 3)]
    assert sum(s["counters"]["launches"] for s in sessions) == report["speed"]["kernel_launches"]
    assert proc.returncode == (0 if report["within_bounds"] else 1), proc.stderr[-3000:]
    # Measured with --repeats 3 (2026-12-07, docs/validation.md item 13): TTFT -22% to +5%,
    # TPOT -14% to +8%, E2E -12% to +7%, the worst while the host was slow for the real runs.
    # This guards against regressions of the mechanism (a broken capture or prediction is off
    # by several times), not the 10% target.
    for key in ("ttft_p50_ms", "tpot_p50_ms", "e2e_p50_ms"):
        assert abs(m[key]["error_pct"]) < REGRESSION_BOUND_PCT, (key, m[key])


def test_model_profile_times_the_models_own_linear_layers() -> None:
    from revati.predictors.profiler import linear_shapes

    cfg = workload.model_config(workload.GPU_MODEL, workload.GPU_LAYERS)
    assert cfg["num_hidden_layers"] == workload.GPU_LAYERS
    # q and o share a shape, k and v another; then gate/up, down and the LM head
    assert linear_shapes(cfg) == [(16384, 16384), (1024, 16384), (53248, 16384),
                                  (16384, 53248), (128256, 16384)]


@pytest.mark.torch
def test_model_profile_on_cpu(tmp_path: Path) -> None:
    """`--model` profiles that model's shapes: its linears at every batch to --max-tokens,
    the masked packed attention of paged|sdpa (one sequence, not causal) and memory ops."""
    pytest.importorskip("torch")
    from revati.predictors.dataset import read_profiles
    from revati.predictors.profiler import PACKED_KV
    from revati.predictors.profiler import main as profile

    assert profile(["--device", "cpu", "--model", "Llama-tiny", "--max-tokens", "4",
                    "--repeats", "1", "--wake-rounds", "1", "--out", str(tmp_path)]) == 0
    rows = read_profiles(tmp_path)
    events = [r.events[0] for r in rows]
    # Llama-tiny: q/o [512, 512], k/v [128, 512], gate/up and the LM head [2048, 512], down
    gemm = {(e.feats[1], e.feats[2]) for e in events if e.family == Family.GEMM}
    assert gemm == {(512, 512), (128, 512), (2048, 512), (512, 2048)}
    assert {e.feats[0] for e in events if e.family == Family.GEMM} == {1, 2, 3, 4}
    attention = [e for e in events if e.family == Family.ATTENTION]
    assert attention and all(e.feats[0] == 1 and e.feats[-1] == 0 for e in attention)
    # every query count to --max-tokens, each over its own count of keys and the grid of
    # gathered keys (by halves to 1024: between sparser points the fit came out 11-30% short)
    assert {e.feats[1] for e in attention} == {1, 2, 3, 4}
    assert {e.feats[2] for e in attention if e.feats[1] == 3} == {3, *PACKED_KV}
    assert any(e.family == Family.MEMORY for e in events)


def test_host_costs_from_the_h200_kernel_table() -> None:
    """The real run's own CPU time per launch: cuDNN attention (its graph build, in a child
    op the emulation never dispatches) 4.8 ms a call; a GEMM tens of microseconds."""
    from revati.revatid.validate.kernels import host_costs

    costs = host_costs(GPU_RESULTS / "kernels.csv")
    assert 4.0e-3 < costs["aten::_scaled_dot_product_cudnn_attention"] < 6.0e-3
    assert 10e-6 < costs["aten::mm"] < 200e-6
    assert host_costs(GPU_RESULTS / "missing.csv") == {}


@pytest.mark.torch
def test_h200_kernels_are_predicted_from_the_h200_profile(tmp_path: Path) -> None:
    """GEMMs are 92% of the GPU time of the real H200 run; the bundle built from the same
    machine's profile predicts their total within 5% (measured: -0.1%, 3% per shape)."""
    pytest.importorskip("lightgbm")
    from revati.revatid.validate import kernels

    bundle = kernels.build_bundle("h200", GPU_RESULTS / "profile", tmp_path)
    result = kernels.check(GPU_RESULTS, bundle, "h200", "bf16")
    gemm = result["GEMM"]
    assert gemm["calls"] == 2059 and abs(gemm["error_pct"]) < 5, gemm
    assert gemm["shape_ape_p50_pct"] < 10, gemm
    assert result["ATTENTION"]["calls"] == 290


@pytest.mark.torch
def test_validate_from_the_committed_h200_results(tmp_path: Path) -> None:
    """`revatictl validate --from results/h200-full` on this machine: the same 64 requests and
    their tokens under Revati on a virtual H200, the report with every metric and the kernel
    check. The issue's bounds are not met yet (docs/validation.md: the real run waited ~1.9 s
    on first uses of kernels, and its host is slower than the measured host costs explain);
    the exit status says so."""
    pytest.importorskip("transformers")
    out = tmp_path / "h200.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVATI_")}
    env["REVATI_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [sys.executable, "-m", "revati.revatid.ctl", "validate", "--from", str(GPU_RESULTS),
         "--json", str(out)], capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert out.exists(), proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["steps"]["real"]["query_tokens"] > 0
    assert report["host_costs_s"]["aten::_scaled_dot_product_cudnn_attention"] > 4e-3
    assert abs(report["kernels"]["GEMM"]["error_pct"]) < 5
    assert len(report["speed"]["op_credit_ns"]) == 1  # the one emulated run's process
    for key, row in report["metrics"].items():
        assert row["real"] > 0 and row["emulated"] > 0, key
    assert proc.returncode == (0 if report["within_bounds"] else 1), proc.stderr[-3000:]


@pytest.mark.torch
def test_gpu_run_rehearsed_on_a_virtual_gpu(daemon: Daemon, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease is 15 minutes: the script it runs (scripts/gpu_validate.sh: gpu_run with the
    source folders on the path as `revati`, nothing installed) rehearsed under `revatictl run
    --gpu h100` on a two-layer model. Each step runs as a child that joins the session (a real
    GPU machine has none), the workload and its repeat write their results, the profiler
    refuses a session (it would time the emulator), and the provenance names the SKU and every
    step's exit status."""
    pytest.importorskip("transformers")
    monkeypatch.setenv("PYTHON", sys.executable)  # the script's interpreter
    out = tmp_path / "out"
    result, _ = revatictl_run(
        daemon, ["bash", str(ROOT / "scripts" / "gpu_validate.sh"), str(out), "--model",
                 "Llama-tiny", "--layers", "2", "--size", "small", "--dtype", "bf16",
                 "--repeats", "2", "--no-kernel-table"], "--gpu", "h100", timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]  # the profile step's refusal
    assert "profiler: refusing to run inside a Revati session" in result.stderr
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["sku"] == "h100" and prov["device_name"] == "NVIDIA H100 80GB HBM3"
    assert prov["exit_codes"] == {"workload": 0, "profile": 2, "workload-2": 0}
    for name in ("real.json", "real-2.json"):
        real = json.loads((out / name).read_text())
        assert (real["model"], real["layers"], real["size"], real["dtype"]) == (
            "Llama-tiny", 2, "small", "bf16")
        assert all(r["generated"] == r["output_tokens"] for r in real["requests"])
