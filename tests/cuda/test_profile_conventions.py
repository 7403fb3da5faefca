"""The profiler's memory rows and the adapter's launch events describe an op the same way:
a profiled row's kind and features are what a model's own call of that op launches on a
virtual GPU, so the memory model is asked about the shapes it was trained on. (The memory
model sees an op's kind, not its name: `softmax` reaches the dispatcher whole under inference
mode, `_softmax` under no_grad.)"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: virtual CUDA needs it")

from revati.predictors import profiler  # noqa: E402
from revati.predictors.features import memory_kind  # noqa: E402
from tests.cuda.conftest import RecordingLink  # noqa: E402

pytestmark = pytest.mark.torch


def test_every_profiled_memory_op_launches_its_rows_features(vcuda: Any,
                                                             link: RecordingLink) -> None:
    cases = list(profiler.memory_cases(profiler.Device("cuda", repeats=1), [3, 8], [16, 64],
                                       vocab=64))
    assert {"aten::index_copy_", "aten::mean", "aten::cat", "aten::pow"} <= {
        op for _, op, _, _, _ in cases}
    with torch.inference_mode():
        for family, op, dtype, feats, fn in cases:
            n = len(link.launches)
            fn()
            launched = [(e.family, memory_kind(e.op), e.dtype, e.feats)
                        for e in link.launches[n:]]
            assert launched == [(family, memory_kind(op), dtype, feats)], op
