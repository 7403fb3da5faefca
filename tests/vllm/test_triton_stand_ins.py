"""The V2 runner's state-carrying Triton kernels: Revati's host stand-ins compute what the
kernels compute (tests/vllm/stand_in_check.py runs both on the same batches)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs the vLLM environment (scripts/setup_vllm_env.sh)")
pytest.importorskip("triton", reason="the reference is the kernel under Triton's interpreter")
pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ("prepare_prefill_inputs", "prepare_pos_seq_lens",
           "combine_sampled_and_draft_tokens", "get_num_sampled_and_rejected", "post_update",
           "post_update_num_computed_tokens", "expand_idx_mapping", "apply_write 2-D",
           "apply_write 1-D")


@pytest.mark.parametrize("seed", [0, 1])
def test_stand_ins_match_the_kernels(seed: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/vllm/stand_in_check.py"),
                           str(seed)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    lines = proc.stdout.splitlines()
    assert [ln[3:] for ln in lines if ln.startswith("ok ")] == list(KERNELS)
