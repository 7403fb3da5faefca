"""The op credit's measurement: what an op's way through Revati costs the program, beyond the
same op's dispatch on the CPU (adapters/cuda/entry_cost.py)."""

from __future__ import annotations

from typing import Any

from revati.adapters.cuda import entry_cost


def test_the_detour_costs_more_than_a_cpu_dispatch(link: Any) -> None:
    ns = entry_cost.measure_ns()
    # a few microseconds on any host this runs on; far below a small kernel's time
    assert 200 < ns < 50_000
    assert link.launches == []  # the probe took the mix's launches, the link saw none


def test_the_probe_counts_outermost_freezes_only() -> None:
    probe = entry_cost._Probe()
    with probe.op_freeze(), probe.freeze():  # a handler that freezes inside an op's freeze
        pass
    with probe.op_freeze():
        pass
    assert probe.ops == 2 and probe.depth == 0 and probe.inside > 0
