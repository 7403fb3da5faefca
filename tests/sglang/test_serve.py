"""SGLang 0.5.23 on a virtual H100: `sglang.launch_server` driven by `sglang.bench_serving` in
one session, through `revatictl demo --framework sglang` (run in the SGLang environment:
scripts/setup_sglang_env.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REVATICTL, Daemon

pytest.importorskip("sglang", reason="needs the SGLang environment (scripts/setup_sglang_env.sh)")
pytestmark = [pytest.mark.sglang, pytest.mark.slow]

NUM_PROMPTS, OUTPUT_LEN = 4, 24


@pytest.fixture(scope="module")
def serve(module_daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """Llama-3.1-8B on one virtual H100: a few seeded random-ids requests (64 in, 24 out)."""
    tmp = tmp_path_factory.mktemp("serve")
    out = tmp / "demo.json"
    env = {**os.environ, "REVATI_SGLANG_PYTHON": sys.executable}
    proc = subprocess.run(
        [*REVATICTL, "--socket", str(module_daemon.socket), "demo", "--framework", "sglang",
         "--json", str(out), "--num-prompts", str(NUM_PROMPTS), "--request-rate", "1",
         "--seed", "7", "--input-len", "64", "--output-len", str(OUTPUT_LEN)],
        capture_output=True, text=True, timeout=1800, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return json.loads(out.read_text()), log


def test_every_request_gets_exactly_its_output_length(serve: tuple[dict, str]) -> None:
    r, log = serve
    assert r["framework"] == "sglang"
    assert r["completed"] == NUM_PROMPTS and r["failed"] == 0
    assert r["output_lens_ok"] is True
    assert r["total_output_tokens"] == NUM_PROMPTS * OUTPUT_LEN
    assert "Serving Benchmark Result" in log  # SGLang's own table


def test_latencies_are_virtual_and_consistent(serve: tuple[dict, str]) -> None:
    r, _ = serve
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p99"):
            assert r[f"{stat}_{metric}_ms"] > 0, (metric, stat)
    # E2E is about TTFT + (OUTPUT_LEN - 1) * TPOT, request by request
    assert r["mean_e2el_ms"] == pytest.approx(
        r["mean_ttft_ms"] + (OUTPUT_LEN - 1) * r["mean_tpot_ms"], rel=0.05)
