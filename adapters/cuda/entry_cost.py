"""What an op's way through Revati costs the program: measured once per process, kept out.

A torch op on a virtual tensor reaches Revati through the dispatcher's Python key: torch packs
the arguments into Python objects and calls `VirtualTensor.__torch_dispatch__`, whose first
lines find the op's handler; only then can the clock freeze. After the freeze the result
travels back up the same path, and a dropped result is torn down as a Python object. On a real
device none of this exists (the dispatcher goes on to a C++ kernel), so it is emulator
overhead (rule 4 of virtual time), yet it runs outside any freeze.

This module measures it on the real path, with a probe link whose op freeze stamps the real
clock: for a mix of the ops an LLM forward pass is made of (views, slices, element-wise ops,
a matmul, a concatenation, a reduction), the real time of each call outside the probe's
freezes, per dispatched op, less the time of the same call on one-element CPU tensors (the
dispatch the real program pays too). The session clock keeps the difference out of virtual
time (`VirtualClock.op_freeze`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch

# the real clock: this runs while the session clock is frozen (install time)
from revati.adapters.clock._vclock import real_monotonic_ns

# Blocks of rounds, virtual then CPU: a drift of the host's speed between the two sides would
# skew one long run of each (one start-up measured 9.3 us against 4.1-4.4 us for the others).
BLOCKS, ROUNDS = 6, 50


class _Probe:
    """Stands in for the link during the measurement (its launches go nowhere): counts the
    ops' freezes and the real time spent inside them (the outermost ones: handlers nest
    freezes)."""

    def __init__(self) -> None:
        self.depth = self.ops = self.inside = 0
        self._entered = 0

    def op_freeze(self) -> _Probe:
        return self

    freeze = op_freeze

    def now_ns(self) -> int:
        return 0

    def launch(self, ev: Any) -> None:
        pass

    def __enter__(self) -> None:
        if not self.depth:
            self.ops += 1
            self._entered = real_monotonic_ns()
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if not self.depth:
            self.inside += real_monotonic_ns() - self._entered


def _forward_mix(device: str) -> list[Callable[[], Any]]:
    """Calls of the kinds an LLM forward is made of, on one-element-sized tensors."""
    x, y = torch.ones(1, 1, device=device), torch.ones(1, 1, device=device)
    w = torch.ones(1, 1, device=device)
    idx = torch.zeros(1, dtype=torch.long, device=device)
    return [lambda: x.view(1), lambda: x.transpose(0, 1), lambda: x[:, :1],
            lambda: x.unsqueeze(0), lambda: x * y, lambda: x + y, lambda: x * 2.0,
            lambda: torch.nn.functional.silu(x), lambda: x.mean(-1, keepdim=True),
            lambda: torch.cat([x, y], dim=-1), lambda: x @ w.t(),
            lambda: x.index_select(0, idx)]


def _outside_ns(calls: list[Callable[[], Any]], probe: _Probe) -> float:
    """Median over rounds of the real ns one round of `calls` spends outside the probe's
    freezes (all of it with no probe installed: the CPU reference)."""
    rounds = []
    for _ in range(ROUNDS):
        probe.inside = 0
        t0 = real_monotonic_ns()
        for call in calls:
            call()
        rounds.append(real_monotonic_ns() - t0 - probe.inside)
    return statistics.median(rounds)


def measure_ns() -> int:
    """Real ns per op that the program spends on its way through Revati, beyond the cost of
    the same op's dispatch on the CPU. Needs virtual CUDA installed; runs frozen."""
    from revati.adapters.cuda.state import S

    probe = _Probe()  # from the start: the mix's tensors and launches stay off the session
    saved, S.link_override = S.link_override, probe
    try:
        virtual, cpu = _forward_mix("cuda"), _forward_mix("cpu")
        for call in virtual:  # first use: each op's schema is read
            call()
        probe.ops = 0
        extra = []
        for _ in range(BLOCKS):
            detour = _outside_ns(virtual, probe)
            extra.append(detour - _outside_ns(cpu, _Probe()))
        ops = probe.ops / (BLOCKS * ROUNDS)
    finally:
        S.link_override = saved
    return max(0, int(statistics.median(extra) / ops))
