"""vLLM adapter pieces that need no server: the all-reduce + RMSNorm fusion production runs
under torch.compile, decided from the user's settings and folded at launch time."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (scripts/setup_vllm_env.sh)")
torch = pytest.importorskip("torch")

from tests.cuda.conftest import RecordingLink  # noqa: E402

MiB = 1 << 20


def _config(tp: int, level: int = 2, mode: Any = None, fuse: bool | None = None,
            limit_mb: float | None = None) -> Any:
    from vllm.config.vllm import OptimizationLevel

    return SimpleNamespace(
        compilation_config=SimpleNamespace(
            mode=mode,
            pass_config=SimpleNamespace(fuse_allreduce_rms=fuse,
                                        fi_allreduce_fusion_max_size_mb=limit_mb)),
        optimization_level=OptimizationLevel(level),
        parallel_config=SimpleNamespace(tensor_parallel_size=tp),
        additional_config={})


@pytest.mark.parametrize(("capability", "kwargs", "expected"), [
    ((9, 0), {"tp": 2}, 64 * MiB),  # vLLM's defaults on H100: -O2, compiled, fused
    ((9, 0), {"tp": 4}, 2 * MiB),
    ((9, 0), {"tp": 8}, MiB // 2),
    ((10, 0), {"tp": 4}, 32 * MiB),
    ((9, 0), {"tp": 1}, 0),  # nothing to fuse
    ((8, 0), {"tp": 2}, 0),  # A100: the pass is off by default
    ((8, 0), {"tp": 2, "fuse": True, "limit_mb": 4}, 4 * MiB),  # the user's own pass config
    ((9, 0), {"tp": 2, "level": 1}, 0),  # -O1
    ((9, 0), {"tp": 2, "mode": "none"}, 0),  # -cc.mode=none, --enforce-eager
    ((9, 0), {"tp": 2, "fuse": False}, 0),
])
def test_the_fusion_production_would_run_is_decided_from_the_users_settings(
        monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], kwargs: dict,
        expected: int) -> None:
    from vllm.config.compilation import CompilationMode
    from vllm.platforms import current_platform
    from vllm.platforms.interface import DeviceCapability

    from revati.adapters.vllm import config

    if kwargs.get("mode") == "none":
        kwargs["mode"] = CompilationMode.NONE
    monkeypatch.setattr(current_platform, "get_device_capability",
                        lambda device_id=0: DeviceCapability(*capability))
    cfg = _config(**kwargs)
    config.record_allreduce_rms_fusion(cfg)
    assert cfg.additional_config[config.FUSION_KEY] == expected
    cfg.compilation_config.mode = CompilationMode.NONE  # as the platform then sets it
    config.record_allreduce_rms_fusion(cfg)  # a configuration checked again
    assert cfg.additional_config[config.FUSION_KEY] == expected


def test_a_norm_folded_into_the_all_reduce_launches_nothing(vcuda: Any,
                                                           link: RecordingLink) -> None:
    """The residual-add RMSNorm right after a fused all-reduce is part of its kernel; any
    other norm, or the next one, launches as before."""
    from revati.adapters.vllm import custom_ops

    x, residual, other = (torch.empty(4, 4096, dtype=torch.bfloat16, device="cuda")
                          for _ in range(3))
    weight = torch.empty(4096, dtype=torch.bfloat16, device="cuda")
    n = len(link.launches)
    custom_ops.fold_next_norm(x)
    assert custom_ops.fused_add_rms_norm(x, residual, weight, 1e-5) == (x, residual)
    assert len(link.launches) == n
    custom_ops.fused_add_rms_norm(x, residual, weight, 1e-5)  # the fold is spent
    custom_ops.fold_next_norm(x)
    custom_ops.fused_add_rms_norm(other, residual, weight, 1e-5)  # another tensor's norm
    assert [ev.op for ev in link.launches[n:]] == ["vllm::fused_add_rms_norm"] * 2
