"""Factory calls on the virtual device built in one frozen step (adapters/cuda/factories.py):
the same tensor, values, launch and memory as PyTorch's own path, which every other form
keeps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")

from tests.cuda.conftest import RecordingLink  # noqa: E402

pytestmark = pytest.mark.torch

PLAIN: list[tuple[str, Callable[[], Any]]] = [
    ("empty", lambda: torch.empty(4, 3, device="cuda")),
    ("zeros", lambda: torch.zeros(4, dtype=torch.int32, device="cuda")),
    ("zeros size tuple", lambda: torch.zeros((2, 0, 3), device="cuda:1")),
    ("ones", lambda: torch.ones([5], dtype=torch.bfloat16, device=torch.device("cuda", 0))),
    ("full", lambda: torch.full((3, 2), -1, dtype=torch.int64, device="cuda")),
    ("full inferred", lambda: torch.full((2,), 2.5, device="cuda")),
    ("arange", lambda: torch.arange(5, device="cuda")),
    ("arange step", lambda: torch.arange(10, 2, -3, dtype=torch.int32, device="cuda")),
    ("arange empty", lambda: torch.arange(3, 3, device="cuda")),
    ("zeros large", lambda: torch.zeros(1 << 22, device="cuda")),  # meta-backed: no values
]


def _made(link: RecordingLink, call: Callable[[], Any]) -> tuple[Any, ...]:
    from revati.adapters.cuda.tensor import host_values

    n = len(link.launches)
    before = torch.cuda.memory_allocated(0)
    t = call()
    values = host_values(t).tolist() if t._a.host is not None else None
    return (type(t).__name__, t.device, t.dtype, t.shape, t.stride(), t.is_inference(),
            values, [(e.family, e.op, e.dtype, e.feats) for e in link.launches[n:]],
            torch.cuda.memory_allocated(0) - before)


@pytest.mark.parametrize("inference", [False, True])
@pytest.mark.parametrize(("name", "call"), PLAIN, ids=[p[0] for p in PLAIN])
def test_a_plain_factory_call_makes_what_pytorchs_path_makes(
        link: RecordingLink, monkeypatch: pytest.MonkeyPatch, name: str,
        call: Callable[[], Any], inference: bool) -> None:
    from revati.adapters.cuda import factories

    mode = torch.inference_mode(inference)
    with mode:
        freezes = link.freezes
        direct = _made(link, call)
        assert link.freezes == freezes + 1  # one frozen step
    monkeypatch.setattr(factories, "_plan", lambda *_: None)  # PyTorch's own path
    with mode:
        slow = _made(link, call)
    if 0 in direct[3]:  # no elements: CUDA's fill and arange kernels launch nothing
        assert direct[7] == [] and all(e[3] == (0, 0) for e in slow[7])
        direct, slow = direct[:7] + direct[8:], slow[:7] + slow[8:]
    assert direct == slow


def test_other_forms_keep_pytorchs_path_and_its_errors(link: RecordingLink) -> None:
    out = torch.empty(3, dtype=torch.int64, device="cuda")
    assert torch.arange(3, out=out) is out and out.tolist() == [0, 1, 2]
    assert torch.zeros(2, device="cuda", requires_grad=True).requires_grad
    assert torch.ones(2, 2, device="cpu").device.type == "cpu"
    assert torch.arange(0.0, 1.0, 0.25, device="cuda").tolist() == [0.0, 0.25, 0.5, 0.75]
    with torch.device("cuda"):  # a device context: PyTorch's own mode places it
        assert torch.zeros(2).device.type == "cuda"
    with pytest.raises(RuntimeError, match="negative"):
        torch.zeros(-1, device="cuda")
    with pytest.raises(RuntimeError, match="step must be nonzero"):
        torch.arange(0, 4, 0, device="cuda")
    with pytest.raises(RuntimeError, match="inconsistent with step sign"):
        torch.arange(10, 2, device="cuda")
    with pytest.raises(TypeError, match="missing 1 required positional"):
        torch.zeros(device="cuda")
    with pytest.raises(TypeError, match="must be tuple of ints"):
        torch.full(3, 1.0, device="cuda")
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.zeros(2, device="cuda:7")
