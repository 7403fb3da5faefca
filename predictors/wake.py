"""A device that has been idle runs its next kernels slower: the wake model.

On the self-check's 2-core VM, a step of the model's GEMMs at 48 rows, timed right after the
same step and again after an idle spell, took longer after 300 ms idle: +0.2 ms by its first
GEMM, +0.6-0.8 ms by 6 ms of work, +1.9-2.8 ms by 55-60 ms; after 3 ms idle, the first GEMM's
+0.06 ms and nothing after. (The first steps seen: 25.1 ms back to back, 27-29 ms after
10-300 ms idle.) A GPU whose clocks drop while it idles does the same. The predictors time
kernels back to back, so without this a step that follows idle (a serving engine's first
prefill after a quiet spell: its TTFT) came out short.

The model: an idle spell of g (at least the shortest spell measured: a host's own gaps between
kernels are not idle) adds `kick`(g) to the next kernel and leaves the device `cold` =
slowdown(g) (both interpolated between the spells measured); a kernel of predicted duration d
that starts cold c takes d + c * decay * (1 - exp(-d / decay)) more (the slowdown fades as
exp(-busy / decay) with the work done since waking) and leaves the device c * exp(-d / decay)
cold. The profiler measures it (`measure`) into the device's spec (`wake`); the timeline
applies it (revatid/gpu.py).
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# Idle spells the profiler times a step after, in seconds: from the longest gap a serving loop
# leaves between its steps to a quiet spell between requests.
GAPS_S = (0.001, 0.01, 0.1, 0.5)
# Decay times the fit tries, in seconds: from a few kernels' worth to a second.
_DECAYS_S = tuple(0.001 * 1.25 ** i for i in range(32))
COLD_FLOOR = 1e-4  # colder than this is warm: the timeline stops computing the fade


@dataclass(frozen=True)
class WakeModel:
    gaps_ns: tuple[int, ...]  # the idle spells measured, ascending
    kick_ns: tuple[float, ...]  # the first kernel's extra ns after each
    slowdown: tuple[float, ...]  # the extra share of time at waking after each
    decay_ns: float  # busy time over which the extra share falls by a factor e

    def after(self, gap_ns: int) -> tuple[int, float]:
        """An idle spell of `gap_ns`: (the next kernel's extra ns, how cold it leaves the
        device), interpolated between the spells measured, none below the shortest, the
        longest one's beyond it."""
        gaps = self.gaps_ns
        if gap_ns < gaps[0]:
            return 0, 0.0
        if gap_ns >= gaps[-1]:
            return int(self.kick_ns[-1]), self.slowdown[-1]
        i = bisect.bisect_right(gaps, gap_ns)
        w = (gap_ns - gaps[i - 1]) / (gaps[i] - gaps[i - 1])
        return (int(self.kick_ns[i - 1] + w * (self.kick_ns[i] - self.kick_ns[i - 1])),
                self.slowdown[i - 1] + w * (self.slowdown[i] - self.slowdown[i - 1]))

    def run(self, cold: float, dur_ns: int) -> tuple[int, float]:
        """A kernel of `dur_ns` started `cold`: (its extra ns, how cold it leaves the
        device)."""
        fade = math.exp(-dur_ns / self.decay_ns)
        return int(cold * self.decay_ns * (1.0 - fade)), cold * fade

    def to_spec(self) -> dict[str, Any]:
        return {"gaps_s": [g / 1e9 for g in self.gaps_ns],
                "kick_s": [k / 1e9 for k in self.kick_ns], "slowdown": list(self.slowdown),
                "decay_s": self.decay_ns / 1e9}

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> WakeModel | None:
        """The spec's `wake` entry; None when it has none or it slows nothing."""
        if not spec:
            return None
        try:
            gaps = tuple(int(float(g) * 1e9) for g in spec["gaps_s"])
            kick = tuple(max(0.0, float(k) * 1e9) for k in spec["kick_s"])
            slowdown = tuple(max(0.0, float(s)) for s in spec["slowdown"])
            decay = float(spec["decay_s"]) * 1e9
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad wake entry in the device spec: {exc!r}") from None
        if not gaps or not len(gaps) == len(kick) == len(slowdown) \
                or list(gaps) != sorted(set(gaps)) or gaps[0] <= 0 or not decay > 0:
            raise ValueError("bad wake entry in the device spec: gaps_s must ascend from above "
                             "0, with one kick_s and one slowdown each, and decay_s be > 0")
        if max(kick) < 1 and max(slowdown) < COLD_FLOOR:
            return None
        return cls(gaps, kick, slowdown, decay)


def _fit_spell(extra: Sequence[float], unit: Sequence[float]) -> tuple[float, float, float]:
    """Least squares of extra = kick + slowdown * unit, both at least 0: (kick, slowdown,
    squared error)."""
    n, su, se = len(unit), sum(unit), sum(extra)
    suu, sue = sum(u * u for u in unit), sum(u * e for u, e in zip(unit, extra, strict=True))
    det = n * suu - su * su
    kick, slow = ((suu * se - su * sue) / det, (n * sue - su * se) / det) if det else (0.0, 0.0)
    if slow < 0 or kick < 0:  # one term alone, the better of the two
        candidates = [(max(0.0, se / n), 0.0), (0.0, max(0.0, sue / suu) if suu else 0.0)]
        kick, slow = min(candidates, key=lambda c: sum(
            (e - c[0] - c[1] * u) ** 2 for e, u in zip(extra, unit, strict=True)))
    err = sum((e - kick - slow * u) ** 2 for e, u in zip(extra, unit, strict=True))
    return kick, slow, err


def fit(base: Sequence[float], extra: dict[float, Sequence[float]]) -> WakeModel:
    """The model from `base`, each kernel's ns in a step run back to back, and
    `extra[gap_s]`, how much later than in `base` each kernel of a step that followed an idle
    spell of gap_s ended (cumulative ns). One decay for all spells (the best of a grid to the
    step's length), a kick and a slowdown per spell (least squares at that decay)."""
    ends = list(itertools.accumulate(base))
    spells = sorted(extra)
    best: tuple[float, float, list[tuple[float, float, float]]] | None = None
    # a slowdown that lasts the whole step fades over the step's length at most: how long it
    # lasts beyond is not seen
    for decay in sorted({min(d * 1e9, ends[-1]) for d in _DECAYS_S}):
        unit = [decay * (1.0 - math.exp(-b / decay)) for b in ends]
        fits = [_fit_spell(extra[g], unit) for g in spells]
        err = sum(f[2] for f in fits)
        if best is None or err < best[0]:
            best = (err, decay, fits)
    assert best is not None
    _, decay, fits = best
    return WakeModel(tuple(int(g * 1e9) for g in spells), tuple(f[0] for f in fits),
                     tuple(f[1] for f in fits), decay)


def measure(step: Callable[[], list[float]], sleep: Callable[[float], None], rounds: int,
            gaps_s: Sequence[float] = GAPS_S) -> WakeModel:
    """Time `step` (it returns each kernel's ns) right after another step and again after an
    idle spell of each of `gaps_s`, `rounds` times, in an order that rotates: each pair is
    timed within a step's length of itself, so that the host's drift cancels out of the
    difference. Medians per kernel over the rounds."""
    for _ in range(3):
        step()
    base: list[list[float]] = []
    extra: dict[float, list[list[float]]] = {g: [] for g in gaps_s}
    for r in range(rounds):
        for i in range(len(gaps_s)):
            gap = gaps_s[(i + r) % len(gaps_s)]
            step()
            steady = step()
            sleep(gap)
            woken = step()
            base.append(steady)
            extra[gap].append([w - s for s, w in zip(itertools.accumulate(steady),
                                                     itertools.accumulate(woken), strict=True)])
    medians = [statistics.median(k) for k in zip(*base, strict=True)]
    return fit(medians, {g: [statistics.median(k) for k in zip(*rows, strict=True)]
                         for g, rows in extra.items()})
