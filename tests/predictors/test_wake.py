"""The wake model (a device that idled runs its next kernels slower): its fit, its measurement
loop on a simulated device, its spec entry."""

from __future__ import annotations

import math

import pytest

from revati.predictors import wake
from revati.predictors.roofline import Hardware
from revati.predictors.skus import spec
from revati.predictors.wake import WakeModel

MS = 1_000_000
TRUE = WakeModel(gaps_ns=(MS, 100 * MS), kick_ns=(0.0, 200_000.0), slowdown=(0.0, 0.12),
                 decay_ns=8 * MS)


class SimulatedDevice:
    """40 kernels of 0.5 ms a step, slowed after idle by TRUE; `sleep` is the idle spell."""

    def __init__(self) -> None:
        self.gap_ns = 0

    def sleep(self, seconds: float) -> None:
        self.gap_ns = int(seconds * 1e9)

    def step(self) -> list[float]:
        gap, self.gap_ns = self.gap_ns, 0
        extra, cold = TRUE.after(gap) if gap else (0, 0.0)
        out = []
        for _ in range(40):
            fading, cold = TRUE.run(cold, 500_000)
            out.append(500_000.0 + extra + fading)
            extra = 0
        return out


def test_measure_recovers_a_simulated_devices_slowdown() -> None:
    dev = SimulatedDevice()
    model = wake.measure(dev.step, dev.sleep, rounds=3, gaps_s=(0.001, 0.1))
    assert model.gaps_ns == TRUE.gaps_ns
    assert model.decay_ns == pytest.approx(TRUE.decay_ns, rel=0.15)
    assert model.slowdown[0] == pytest.approx(0.0, abs=1e-3)
    assert model.slowdown[1] == pytest.approx(0.12, rel=0.1)
    assert model.kick_ns[1] == pytest.approx(200_000, rel=0.1)
    # what matters downstream: a step's extra time after 0.1 s idle
    assert _step_extra(model, 100 * MS) == pytest.approx(_step_extra(TRUE, 100 * MS), rel=0.02)


def _step_extra(model: WakeModel, gap_ns: int) -> float:
    extra, cold = model.after(gap_ns)
    for _ in range(40):
        fading, cold = model.run(cold, 500_000)
        extra += fading
    return extra


def test_fit_keeps_both_terms_at_least_zero() -> None:
    """Noise that would fit a negative slowdown (a kick alone) gives a slowdown of 0."""
    base = [1e6] * 10
    model = wake.fit(base, {0.01: [50_000.0] + [40_000.0] * 9})
    assert model.slowdown == (0.0,) and model.kick_ns[0] == pytest.approx(41_000)
    assert wake.fit(base, {0.01: [-5_000.0] * 10}).kick_ns == (0.0,)


def test_spells_below_the_shortest_measured_are_not_idle() -> None:
    """A host's own gaps between kernels (microseconds) must not add up to a slowdown."""
    assert TRUE.after(MS - 1) == (0, 0.0)
    assert TRUE.after(MS) == (0, 0.0)
    kick, cold = TRUE.after(int(50.5 * MS))  # halfway between the spells measured
    assert kick == 100_000 and cold == pytest.approx(0.06)
    assert TRUE.after(10_000 * MS) == (200_000, 0.12)


def test_the_slowdown_fades_with_the_work_done() -> None:
    extra, cold = TRUE.run(0.12, 8 * MS)
    assert cold == pytest.approx(0.12 / math.e)
    assert extra == pytest.approx(0.12 * 8 * MS * (1 - 1 / math.e), abs=1)
    # split into two kernels, the same work costs the same
    e1, c1 = TRUE.run(0.12, 3 * MS)
    e2, c2 = TRUE.run(c1, 5 * MS)
    assert e1 + e2 == pytest.approx(extra, abs=2) and c2 == pytest.approx(cold)


def test_spec_entry_round_trips_and_bad_entries_say_why() -> None:
    assert WakeModel.from_spec(TRUE.to_spec()) == TRUE
    assert WakeModel.from_spec(None) is None
    flat = {"gaps_s": [0.01], "kick_s": [0.0], "slowdown": [0.0], "decay_s": 0.01}
    assert WakeModel.from_spec(flat) is None  # slows nothing: no model
    for bad in ({"gaps_s": [0.01]}, {**flat, "gaps_s": [0.1, 0.01], "kick_s": [0, 0],
                                     "slowdown": [0.1, 0.1]},
                {**flat, "decay_s": 0}, {**flat, "slowdown": [0.1, 0.2]},
                {**flat, "gaps_s": ["soon"]}):
        with pytest.raises(ValueError, match="bad wake entry"):
            WakeModel.from_spec(bad)


def test_a_devices_hardware_carries_its_wake_model() -> None:
    h100 = spec("h100")
    assert Hardware.from_spec(h100).wake is None  # not measured: no slowdown
    assert Hardware.from_spec({**h100, "wake": TRUE.to_spec()}).wake == TRUE
