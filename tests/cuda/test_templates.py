"""Forward templates: an eager forward's launches, fitted over the token count and replayed."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")

from revati.predictors.launch import Family  # noqa: E402
from tests.cuda.conftest import RecordingLink  # noqa: E402

pytestmark = pytest.mark.torch

HIDDEN = 64


class Toy(torch.nn.Module):
    """Two GEMMs and an activation around a dynamic node (as framework glue makes attention:
    it launches with the current step's batch, not with anything the token count says)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(HIDDEN, 4 * HIDDEN, device="cuda", dtype=torch.bfloat16)
        self.down = torch.nn.Linear(4 * HIDDEN, HIDDEN, device="cuda", dtype=torch.bfloat16)
        self.batch = 1  # what the dynamic node reads at each run
        self.sync = False
        self.square = False

    def forward(self, x: Any) -> Any:
        from revati.adapters.cuda import graphs, launch

        h = self.up(x)
        graphs.dynamic(lambda: launch(Family.ATTENTION, "toy::attention", "bf16",
                                      (self.batch,)))
        if self.sync:
            torch.cuda.synchronize()
        if self.square:  # a feature that is not affine in the token count
            torch.empty(x.shape[0] ** 2, device="cuda").zero_()
        return self.down(torch.relu(h))


def tokens(n: int) -> Any:
    return torch.empty(n, HIDDEN, device="cuda", dtype=torch.bfloat16)


def static(events: list[Any]) -> list[tuple]:
    return [(e.op, e.dtype, e.feats) for e in events if e.op != "toy::attention"]


@pytest.fixture
def toy(vcuda: Any) -> Toy:
    return Toy()


def run(store: Any, toy: Toy, n: int) -> Any:
    with torch.inference_mode():  # as servers run (an output that needs grad is not templated)
        return store.run("toy", n, lambda: toy(tokens(n)))


def test_a_forward_between_recorded_token_counts_is_one_graph_launch(
        toy: Toy, link: RecordingLink) -> None:
    from revati.adapters.cuda.templates import OP, ForwardTemplates

    store = ForwardTemplates()
    for n in (17, 40, 23):
        run(store, toy, n)
    assert store.recorded == 3 and store.templates["toy"]
    eager = RecordingLink()  # what the same forward launches eagerly at 31 tokens
    from revati.adapters import cuda

    x = tokens(31)
    cuda.install("h100", 2, link=eager)
    with torch.inference_mode():
        toy(x)
    cuda.install("h100", 2, link=link)

    del link.launches[:]
    toy.batch = 5
    out = run(store, toy, 31)
    assert store.replays == 1
    assert out.shape == (31, HIDDEN) and out.dtype == torch.bfloat16 and out.is_cuda
    graph, *rest = link.launches
    assert graph.family == Family.GRAPH and graph.op == OP
    assert static(link.graphs[graph.feats[0]]) == static(eager.launches)
    # the dynamic node ran at the replay, with the step's own state
    assert [(e.op, e.feats) for e in rest] == [("toy::attention", (5,))]
    assert link.stream_busy_ns() == eager.stream_busy_ns()


def test_the_graph_of_a_token_count_is_registered_once(toy: Toy, link: RecordingLink) -> None:
    from revati.adapters.cuda.templates import ForwardTemplates

    store = ForwardTemplates()
    for n in (17, 40, 23, 31, 31, 31):
        run(store, toy, n)
    assert store.replays == 3 and len(link.graphs) == 1


def test_a_token_count_far_outside_the_recorded_ones_runs_eagerly(
        toy: Toy, link: RecordingLink) -> None:
    from revati.adapters.cuda.templates import ForwardTemplates

    store = ForwardTemplates()
    for n in (20, 30, 25):
        run(store, toy, n)
    run(store, toy, 200)  # the range is 20-30, widened by its width: 10-40
    assert store.replays == 0 and store.recorded == 4
    run(store, toy, 35)
    assert store.replays == 1


@pytest.mark.parametrize("spoil", ["sync", "square"])
def test_forwards_that_are_not_their_launches_or_not_affine_are_never_templated(
        toy: Toy, link: RecordingLink, spoil: str) -> None:
    from revati.adapters.cuda.templates import ForwardTemplates

    setattr(toy, spoil, True)
    store = ForwardTemplates()
    for n in (17, 40, 23, 31, 35):
        run(store, toy, n)
    assert store.replays == 0 and not store.templates.get("toy")


def test_a_forward_that_changes_within_the_range_drops_the_template(
        toy: Toy, link: RecordingLink, monkeypatch: pytest.MonkeyPatch) -> None:
    from revati.adapters.cuda import templates

    monkeypatch.setattr(templates, "CHECK_EVERY", 2)  # every second use re-checks
    store = templates.ForwardTemplates()
    for n in (17, 40, 23):
        run(store, toy, n)
    run(store, toy, 30)
    assert store.replays == 1
    toy.square = True  # the model now launches differently at the same token counts
    run(store, toy, 30)  # the re-check
    assert store.dropped == 1 and not store.templates["toy"]
    run(store, toy, 30)
    assert store.replays == 1


def test_a_token_count_that_repeats_is_templated_on_its_own(
        toy: Toy, link: RecordingLink) -> None:
    """Fixed-length prompts give a few token counts only (2048, 2049, ...)."""
    from revati.adapters.cuda.templates import ForwardTemplates

    store = ForwardTemplates()
    for n in (64, 64, 64, 65):
        run(store, toy, n)
    assert store.replays == 1 and store.recorded == 3  # 65 is new: recorded
