"""SGLang's decode CUDA-graph runner, its persistent input buffers marked for kept slices.

Every decode replay slices the runner's static buffers (input ids, positions, sequence
lengths, KV slots, request pool indices, the logits buffer) to the step's batch size; each
slice of a virtual tensor is a new view at 5-15 us. Marked with
`revati.adapters.cuda.keep_slices`, a slice taken again is the view made the first time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sglang.srt.model_executor.runner.decode_cuda_graph_runner import DecodeCudaGraphRunner

from revati.adapters import cuda


class RevatiDecodeGraphRunner(DecodeCudaGraphRunner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        keep_buffer_slices(self)


def keep_buffer_slices(runner: Any) -> None:
    """Mark the runner's input buffers (its `buffers` dataclass and its buffer registry's
    slots, which may hold other views of the same storage) for kept slices."""
    buffers = getattr(runner, "buffers", None)
    if dataclasses.is_dataclass(buffers):
        for field in dataclasses.fields(buffers):
            cuda.keep_slices(getattr(buffers, field.name))
    registry = getattr(runner, "buffer_registry", None)
    for slot in getattr(registry, "_slots", {}).values():
        cuda.keep_slices(slot.buffer)
