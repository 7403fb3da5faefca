"""The profiler on this machine's CPU (`--device cpu`), and a host-cpu bundle from its CSVs.
The GPU path needs a GPU: see docs/predictors.md."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from revati.predictors import cli
from revati.predictors.dataset import PROFILE_COLUMNS, read_profiles
from revati.predictors.launch import Family
from revati.predictors.registry import load_predictor
from tests.predictors.events import gemm

pytestmark = pytest.mark.torch
pytest.importorskip("torch")


def test_cpu_profile_trains_a_host_cpu_bundle(tmp_path: Path) -> None:
    out = tmp_path / "profile"
    env = {k: v for k, v in os.environ.items() if k != "REVATI_SESSION"}
    r = subprocess.run([sys.executable, "-m", "revati.predictors.profiler", "--out", str(out),
                        "--device", "cpu", "--quick", "--wake-rounds", "2"],
                       capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "attention.csv", "gemm.csv", "memory.csv", "spec.json"]
    with open(out / "gemm.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == PROFILE_COLUMNS
    assert rows[0]["device_name"] and "torch=" in rows[0]["libraries"]
    assert all(int(r["median_ns"]) > 0 for r in rows)
    measured = read_profiles(out)
    assert {Family(m.events[0].family) for m in measured} == {
        Family.GEMM, Family.ATTENTION, Family.MEMORY}
    spec = json.loads((out / "spec.json").read_text())
    assert spec["flops"]["fp32"] > 1e9 and spec["sm_count"] >= 1
    # the slowdown after idle, one kick and one slowdown per idle spell timed
    assert len(spec["wake"]["gaps_s"]) == len(spec["wake"]["kick_s"]) == len(
        spec["wake"]["slowdown"]) == 4 and spec["wake"]["decay_s"] > 0

    bundles = tmp_path / "bundles"
    assert cli.main(["train", "--sku", "host-cpu", "--profile", str(out),
                     "--out", str(bundles)]) == 0
    p = load_predictor("host-cpu", bundles)
    assert {Family.GEMM, Family.MEMORY} <= set(p.models) and "SDPA" in p.attention.calibrations
    ev = gemm(64, 1024, 1024, dtype="fp32")  # a profiled shape
    assert p.source(ev) == "lightgbm"
    profiled = next(m.time_ns for m in measured if m.events[0].feats == ev.feats)
    assert p.predict([ev])[0] == pytest.approx(profiled, rel=0.3)


def test_profiler_refuses_to_run_inside_a_session(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "revati.predictors.profiler", "--out",
                        str(tmp_path), "--device", "cpu"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "REVATI_SESSION": "abc"})
    assert r.returncode == 2 and "inside a Revati session" in r.stderr


def test_gemm_weights_stream_from_memory_as_in_a_forward_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Successive timed calls of a GEMM case read different copies of its [n, k] weight, and
    the copies exceed twice the last-level cache: a weight read again at once would come from
    the cache and time too fast."""
    from revati.predictors import profiler

    llc = profiler.cache_bytes("cpu")
    assert llc >= 1 << 20
    weights: dict[int, int] = {}
    linear = profiler.F.linear

    def recording(a: Any, w: Any) -> Any:  # F.linear, noting the weight it reads
        weights[w.data_ptr()] = w.numel() * w.element_size()
        return linear(a, w)

    monkeypatch.setattr(profiler.F, "linear", recording)
    dev = profiler.Device("cpu", repeats=1)
    pool = profiler.working_set("cpu")
    assert pool == 2 * llc
    family, op, _, (m, n, k, batch), fn = next(profiler.gemm_cases(dev, quick=True, pool=pool))
    assert (family, op, batch) == (Family.GEMM, "aten::linear", 1)
    # one cycle of the copies and more: how many follows this host's cache (260 MiB of L3 on
    # some of the hosts CI runs on)
    for _ in range(-(-2 * llc // (n * k * 4)) + 1):
        assert tuple(fn().shape) == (m, n)
    assert set(weights.values()) == {n * k * 4}
    assert sum(weights.values()) >= 2 * llc


def test_a_model_that_fits_the_cache_has_its_gemms_timed_from_the_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward pass reads each weight after all the model's others: the copies a GEMM's
    weight rotates through span the model's weights when those fit in twice the cache (a model
    read from the cache), and twice the cache otherwise."""
    from revati.adapters import models
    from revati.predictors import profiler

    llc = profiler.cache_bytes("cpu")
    tiny = models.config("Llama-tiny")
    tiny_bytes = profiler.weight_bytes(tiny, "fp32")
    # Llama-tiny as transformers builds it: 17.3 M parameters (norms aside)
    assert tiny_bytes == 4 * (4 * (2 * 512 * 512 + 2 * 128 * 512 + 3 * 2048 * 512)
                              + 2 * 2048 * 512)
    assert profiler.working_set("cpu", tiny_bytes) == min(tiny_bytes, 2 * llc)
    big = profiler.weight_bytes(models.config("Llama-3.1-8B"), "bf16")
    assert 15e9 < big < 17e9 and profiler.working_set("cpu", big) == 2 * llc
    seen: set[int] = set()
    linear = profiler.F.linear

    def recording(a: Any, w: Any) -> Any:  # F.linear, noting the weight it reads
        seen.add(w.data_ptr())
        return linear(a, w)

    monkeypatch.setattr(profiler.F, "linear", recording)
    cases = profiler.model_cases(profiler.Device("cpu", repeats=1), tiny, top=1)["gemm"]
    _, _, _, (_, n, k, _), fn = next(cases)
    for _ in range(200):
        fn()
    copies = len(seen)
    assert copies == -(-min(tiny_bytes, 2 * llc) // (n * k * 4))


def test_memory_op_inputs_rotate_through_the_pool_on_a_cpu() -> None:
    """Each call of a memory op reads the next inputs of an arena spanning the pool: an input
    read again at once would sit in the core's own caches, where a forward pass does not leave
    it (a [128, 512] add 7.7 us so, 28-31 us inside the self-check's model)."""
    from revati.predictors import profiler

    pool = 8 << 20
    cases = profiler.memory_cases(profiler.Device("cpu", repeats=1), [64], [512], vocab=64,
                                  pool=pool)
    family, op, dtype, (nbytes, elems), fn = next(cases)
    assert (family, op, dtype, elems) == (Family.MEMORY, "aten::add", "fp32", 64 * 512)
    assert nbytes == 3 * 64 * 512 * 4
    pairs = pool // (2 * 64 * 512 * 4)  # (x, y) groups the arena holds
    sums = [float(fn().sum()) for _ in range(pairs + 1)]
    assert len(set(sums[:pairs])) == pairs  # every group other inputs
    assert sums[pairs] == sums[0]  # then the cycle again
    # a GPU's are not rotated: the same inputs every call
    gpu_like = profiler.memory_cases(profiler.Device("cpu", repeats=1), [64], [512], vocab=64)
    fn = next(gpu_like)[4]
    assert float(fn().sum()) == float(fn().sum())


def test_packed_attention_inputs_rotate_through_the_pool_on_a_cpu() -> None:
    """Each call of the masked attention reads the next (q, k, v, mask) of an arena spanning
    the pool: inside the model its inputs come from beyond the core's caches (3-5 queries over
    165-363 keys took 2-2.5x longer there than with hot inputs)."""
    from revati.predictors import profiler

    cfg = {"num_attention_heads": 2, "hidden_size": 32}
    pool = 256 << 10
    cases = profiler.packed_attention_cases(profiler.Device("cpu", repeats=1), cfg, 4, "fp32",
                                            pool=pool)
    family, op, dtype, feats, fn = next(cases)
    assert (family, op, dtype) == (Family.ATTENTION, "aten::scaled_dot_product_attention",
                                   "fp32")
    sq, skv = feats[1], feats[3]
    assert (sq, skv, feats[8]) == (1, 1, 0)  # one query over its own key, masked
    groups = pool // 4 // ((2 * skv + sq) * 2 * 16 + sq * skv)
    outs = [tuple(fn().flatten().tolist()) for _ in range(groups + 1)]
    assert len(set(outs[:groups])) == groups  # with one key, the output is that key's value
    assert outs[groups] == outs[0]
    # a GPU's (pool 0) are not rotated
    fn = next(profiler.packed_attention_cases(profiler.Device("cpu", repeats=1), cfg, 4,
                                              "fp32"))[4]
    assert float(fn().sum()) == float(fn().sum())

def test_outputs_on_a_cpu_are_kept_until_they_fill_the_pool() -> None:
    """A memory op's, GEMM's and attention's outputs stay alive until a pool's worth has come
    after them, so that each call writes memory last written that long ago, as inside a model
    (an output dropped at once hands the next call the same block, hot in the core's caches);
    in-place ops and a GPU's cases (pool 0) are timed as they are."""
    from revati.predictors import profiler

    cpu = profiler.Device("cpu", repeats=1)
    pool = 4 << 20
    cases = {op: fn for _, op, _, _, fn in profiler.memory_cases(cpu, [64], [512], vocab=64,
                                                                 pool=pool)}
    keep = pool // (64 * 512 * 4)
    for op in ("aten::add", "aten::mul", "aten::clone", "aten::index_select"):
        ptrs = [cases[op]().data_ptr() for _ in range(keep)]
        assert len(set(ptrs)) == keep, op  # none handed the block of an earlier one
    gemm = next(profiler.model_gemm_cases(cpu, {"hidden_size": 64, "intermediate_size": 128,
                                                "num_attention_heads": 2, "vocab_size": 64},
                                          4, "fp32", pool))[4]
    assert len({gemm().data_ptr() for _ in range(64)}) == 64
    dst = cases["aten::index_copy_"]()
    assert cases["aten::index_copy_"]().data_ptr() == dst.data_ptr()  # in place: its table
    # a GPU's cases, and a CPU's without a pool: the call as it is
    def op() -> None:
        pass
    assert profiler.kept_outputs(cpu, op, 1, 0) is op
    assert profiler.kept_outputs(profiler.Device("cuda", repeats=1), op, 1, pool) is op



class _FixedTimes:
    """A Device whose n-th timed case takes per_pass[n] ns (twice): one case, one per pass."""

    kind = "cpu"

    def __init__(self, per_pass: list[float]) -> None:
        self.per_pass, self.calls = per_pass, 0

    def time_ns(self, fn: Any) -> list[float]:
        t = self.per_pass[min(self.calls, len(self.per_pass) - 1)]
        self.calls += 1
        return [t, t]


def test_passes_pool_each_cases_times_and_a_cpu_keeps_them_beyond_the_call_floor() -> None:
    """Every pass times every case; a case's row pools its times of all passes (a drift in
    one pass moves its median less); on a CPU the time of a call of the same op on
    one-element tensors (which the host pays in an emulated run already) is taken off."""
    from revati.predictors import profiler

    def grids() -> dict[str, Any]:
        return {"memory": iter([(Family.MEMORY, "aten::add", "fp32", (12, 1), lambda: None)]),
                "gemm": iter([(Family.GEMM, "aten::linear", "fp32", (1, 2, 2, 1), None)])}

    dev = _FixedTimes([100_000.0, 500_000.0, 900_000.0])
    rows = profiler.measure(dev, grids, {"memory"}, {"env": "x"}, passes=3)
    assert list(rows) == ["memory"] and dev.calls == 3  # gemm not asked for: not timed
    (row,) = rows["memory"]
    floor = profiler.cpu_call_floor_ns("aten::add")
    assert 0 < floor < 100_000
    assert row["repeats"] == 6 and row["env"] == "x"
    assert row["median_ns"] == round(500_000 - floor)
    assert row["p10_ns"] == round(100_000 - floor)
    assert row["mean_ns"] == round(500_000 - floor)
    # a pass in a slow spell moves the mean, which a predictor learns; a time over MEAN_CAP
    # medians (the timing thread preempted) counts as MEAN_CAP medians
    slow = profiler.measure(_FixedTimes([100_000.0, 100_000.0, 140_000.0, 100_000.0,
                                         100_000.0, 9_000_000.0]), grids, {"memory"}, {},
                            passes=6)["memory"][0]
    median = 100_000 - floor
    assert slow["median_ns"] == round(median)
    assert slow["mean_ns"] == round((4 * median + (140_000 - floor) + 3 * median) / 6)
    # an op without a floor call keeps its times; none goes below a tenth of its call
    assert profiler.cpu_call_floor_ns("aten::unknown_op") == 0.0
    tiny = profiler.measure(_FixedTimes([floor / 2]), lambda: {"memory": iter(
        [(Family.MEMORY, "aten::add", "fp32", (12, 1), None)])}, {"memory"}, {})
    assert tiny["memory"][0]["median_ns"] == round(floor / 2 * profiler.MIN_BEYOND_FLOOR)


def test_profiles_taken_at_other_moments_pool_into_one(tmp_path: Path) -> None:
    """`--merge`: each case of several profile folders is pooled (the median of their
    medians, p10s and p90s, the sum of repeats), a case one folder lacks keeps the others',
    a CSV not in the profile schema is skipped, and the merged folder gets its own spec."""
    from revati.predictors import profiler
    from revati.predictors.dataset import write_profile

    def row(feats: str, median: int) -> dict[str, Any]:
        return {"family": "GEMM", "op": "aten::linear", "dtype": "fp32", "feats": feats,
                "median_ns": median, "p10_ns": median - 10, "p90_ns": median + 10,
                "repeats": 5, "device_name": "cpu", "driver": "", "libraries": "torch=x"}

    dirs = [tmp_path / f"pass{i}" for i in range(3)]
    for d, median in zip(dirs, (1000, 1400, 1100), strict=True):
        d.mkdir()
        write_profile(d / "gemm.csv", [row("4 512 512 1", median) | {"mean_ns": median + 30}])
        (d / "notes.csv").write_text("a,b\n1,2\n")
    # a profile written before mean_ns: its median stands for its mean
    with open(dirs[0] / "gemm.csv", "w", newline="") as fh:
        legacy = csv.DictWriter(fh, fieldnames=PROFILE_COLUMNS[:-1])
        legacy.writeheader()
        legacy.writerows([row("4 512 512 1", 1000), row("8 512 512 1", 2000)])
    merged = profiler.pooled(dirs)
    assert list(merged) == ["gemm"]
    by_feats = {r["feats"]: r for r in merged["gemm"]}
    assert by_feats["4 512 512 1"]["median_ns"] == 1100
    assert by_feats["4 512 512 1"]["p90_ns"] == 1110 and by_feats["4 512 512 1"]["repeats"] == 15
    assert by_feats["4 512 512 1"]["mean_ns"] == round((1000 + 1430 + 1130) / 3)
    assert by_feats["8 512 512 1"]["median_ns"] == 2000 and by_feats["8 512 512 1"]["repeats"] == 5
    assert [m.time_ns for m in read_profiles(dirs[0])] == [1000, 2000]
    assert [m.time_ns for m in read_profiles(dirs[1])] == [1430]

    out = tmp_path / "merged"
    env = {k: v for k, v in os.environ.items() if k != "REVATI_SESSION"}
    cmd = [sys.executable, "-m", "revati.predictors.profiler", "--device", "cpu",
           "--wake-rounds", "0", "--out", str(out)]
    r = subprocess.run([*cmd, *(a for d in dirs for a in ("--merge", str(d)))],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gemm.csv", "spec.json"]
    assert len(read_profiles(out)) == 2
    assert json.loads((out / "spec.json").read_text())["flops"]["fp32"] == pytest.approx(
        2 * 8 * 512 * 512 / 2000e-9, rel=1e-6)
    missing = subprocess.run([*cmd, "--merge", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=300, env=env)
    assert missing.returncode == 2 and "no profile folder" in missing.stderr
