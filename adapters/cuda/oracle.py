"""Values for what no kernel computed: sampled token ids read back from a virtual GPU.

A serving engine reads sampled ids with `.tolist()` / `.cpu()` and decides from them whether a
request stopped. The kernels that would have produced them never run, so the values come from
here: token ids drawn uniformly from the vocabulary, deterministic for a seed, never an EOS id
unless `eos_rate` asks for them (the workload owns output lengths, not the emulator). Floating
point values (logprobs, probabilities) read back are 0 and booleans are False.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class TokenOracle:
    def __init__(self, vocab_size: int = 32000, eos_ids: Iterable[int] = (), seed: int = 0,
                 eos_rate: float = 0.0) -> None:
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive")
        self.vocab_size = vocab_size
        self.eos_ids = np.array(sorted(set(int(e) for e in eos_ids)), dtype=np.int64)
        if len(self.eos_ids) >= vocab_size:
            raise ValueError("every token of the vocabulary is an EOS id")
        self.seed = seed
        self.eos_rate = eos_rate
        self._rng = np.random.default_rng(seed)

    def tokens(self, n: int) -> np.ndarray:
        """`n` token ids (int64)."""
        eos = self.eos_ids
        # Draw among the non-EOS ids, then shift each draw past the EOS ids below it: uniform
        # over the allowed ids with no rejection loop.
        ids = self._rng.integers(0, self.vocab_size - len(eos), size=n, dtype=np.int64)
        if len(eos):
            for e in eos:
                ids += ids >= e
            if self.eos_rate > 0:
                hit = self._rng.random(n) < self.eos_rate
                ids[hit] = self._rng.choice(eos, size=int(hit.sum()))
        return ids

    def fill(self, t: Any) -> None:
        """Fill a CPU tensor in place: token ids for integer dtypes, zeros otherwise."""
        import torch

        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            t.zero_()
        else:
            t.copy_(torch.from_numpy(self.tokens(t.numel())).view(t.shape))
