"""The transformers adapter hooks a program's continuous batching by itself: the program
(cb_program.py) calls nothing of Revati's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import Daemon, revatictl_run


def run_program(daemon: Daemon, *flags: str, options: tuple[str, ...] = (), ranks: int = 1,
                ) -> tuple[list[dict], str, dict]:
    """cb_program.py with `flags` under `revatictl run` on `ranks` virtual H100s (more than one:
    under torchrun, a process each): each rank's result line, the run's stderr and the session
    summary."""
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    result, summary = revatictl_run(
        daemon, [*launcher, "-m", "tests.adapters.cb_program", *flags], "--gpu", "h100",
        "--num-gpus", str(ranks), *options, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    outs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(outs) == ranks
    return outs, result.stderr, summary


@pytest.mark.torch
def test_a_cb_program_runs_unchanged_on_a_virtual_gpu(daemon: Daemon) -> None:
    """Under `revatictl run`, transformers' `generate_batch` gets the glue: every request
    generates its max_new_tokens of ids from the model's vocabulary (the token oracle set from
    the model when the manager is made; without it ids come from a 32000-id default and an
    EOS may end a request early), and the paged attention calls are recorded."""
    pytest.importorskip("transformers")
    (out,), _, summary = run_program(daemon)
    assert [len(ids) for ids in out["generated"]] == [12, 12, 12]
    ids = [i for req in out["generated"] for i in req]
    assert all(0 <= i < out["vocab"] and i != out["eos"] for i in ids), ids
    assert out["attention_calls"] > 0
    assert summary["counters"]["launches"] > 100


@pytest.mark.torch
def test_a_cb_program_with_cuda_graphs(daemon: Daemon, tmp_path: Path) -> None:
    """With `use_cuda_graph=True`, CB makes a torch.cuda.MemPool for its graphs and samples
    inside them: the steps replay graphs, and each replay's ids are fresh draws of the token
    oracle (a replay reruns no op: without the glue every id after the first would be what
    the capture left, 0)."""
    pytest.importorskip("transformers")
    trace = tmp_path / "trace.json"
    (out,), _, _ = run_program(daemon, "--cuda-graphs", options=("--trace", str(trace)))
    assert [len(ids) for ids in out["generated"]] == [12, 12, 12]
    for ids in out["generated"]:
        assert len(set(ids[1:])) > 5 and all(0 <= i < out["vocab"] and i != out["eos"]
                                             for i in ids), ids
    events = json.loads(trace.read_text())
    events = events["traceEvents"] if isinstance(events, dict) else events
    assert sum(e.get("name") == "cuda_graph" for e in events) >= 10


@pytest.mark.torch
@pytest.mark.parametrize("where", [[], ["--device-map"]], ids=["to-cuda", "device-map"])
def test_from_pretrained_on_a_folder_with_a_config_and_no_weights(daemon: Daemon,
                                                                  where: list[str]) -> None:
    """In a session, `from_pretrained` on a config-only folder (a bundled config) builds the
    model with initialised weights and says so, its keyword arguments still apply (two layers
    of four), and the model serves, moved with `.to("cuda")` after a CPU build or built on the
    virtual GPU by `device_map="cuda"`."""
    pytest.importorskip("transformers")
    (out,), stderr, summary = run_program(daemon, "--from-pretrained", *where)
    assert "holds a config and no weights: LlamaForCausalLM gets initialised weights" in stderr
    assert out["layers"] == 2 and [len(ids) for ids in out["generated"]] == [12, 12, 12]
    assert summary["counters"]["launches"] > 100


def test_only_a_config_folder_without_weights_is_built_from_its_config(tmp_path: Path) -> None:
    from revati.adapters.transformers import _config_only

    assert not _config_only(tmp_path) and not _config_only("meta-llama/Llama-3.1-8B")
    (tmp_path / "config.json").write_text("{}")
    assert _config_only(tmp_path) and _config_only(str(tmp_path))
    for weights in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        (tmp_path / weights).write_text("")
        assert not _config_only(tmp_path), weights
        (tmp_path / weights).unlink()


@pytest.mark.torch
def test_tensor_parallel_cb_under_torchrun(daemon: Daemon) -> None:
    """`torchrun --nproc-per-node 2` in a session (its rendezvous pickles a datetime), and
    `from_pretrained(tp_plan="auto")`: each rank holds its half of every sharded weight on its
    own virtual GPU (a DTensor, randomly initialised through the CUDA generator's Philox
    state), the ranks' all-reduces meet in revatid, and both serve every request."""
    pytest.importorskip("transformers")
    ranks, _, summary = run_program(daemon, "--tp", ranks=2)
    assert sorted(r["weight"][1] for r in ranks) == ["cuda:0", "cuda:1"]
    for r in ranks:
        assert r["weight"][0] == "DTensor" and r["weight"][2] == [1024, 512]  # 2048 / 2 rows
        assert [len(ids) for ids in r["generated"]] == [12, 12, 12]
    assert summary["counters"]["collectives"] > 0
