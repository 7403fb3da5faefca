"""A probe of this host's speed, timed around the self-check's real runs and CPU profiles.

The self-check compares a real CPU run with an emulated one whose kernel times come from a
profile taken at another moment. On the shared VMs it runs on, the host's speed drifts: the
same lone GEMM took 2.85 ms in one process and 3.55 ms in another a quarter of an hour later.
The probe says how far the host moved between the profiles and the real runs, so that a
failing comparison shows whether the host or the emulation is off, and SteadyHost takes a step
again when the host was in a slow spell around it.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Iterator
from functools import cache, partial
from typing import Any, TypeVar

T = TypeVar("T")

# rows, in, out: one of the self-check model's MLP GEMMs at a prefill's size (fp32, one thread)
PROBE_SHAPE = (32, 512, 2048)
PROBE_SPAN_BYTES = 64 << 20  # weight copies rotated through, as a forward reads its weights


def probe_ms(calls: int = 30) -> float:
    """Median ms of a linear layer of PROBE_SHAPE on one torch thread, each call on the next
    of several weight copies spanning PROBE_SPAN_BYTES (the profiler's own rotation and
    timing loop: profiler.rotating, Device.time_ns)."""
    import torch
    import torch.nn.functional as F

    from revati.predictors import profiler

    m, k, _ = PROBE_SHAPE
    dev = profiler.Device("cpu", repeats=calls)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, weights = dev.tensor(m, k), _weights()
        return statistics.median(dev.time_ns(lambda: F.linear(x, next(weights)))) / 1e6
    finally:
        torch.set_num_threads(threads)


@cache
def _weights() -> Iterator[Any]:
    """The probe's weight copies, made once a process."""
    from revati.predictors import profiler

    _, k, n = PROBE_SHAPE
    make = partial(profiler.Device("cpu", repeats=1).tensor, n, k)
    first = make()
    return profiler.rotating(first, first.numel() * first.element_size(), PROBE_SPAN_BYTES,
                             make)


SLOW_SPELL = 1.15  # a probe this much over the check's fastest one: the host is in a slow spell
RETRIES = 2  # a step taken in a slow spell is taken again at most this many times


class SteadyHost:
    """Runs each step of the self-check (a real run, a profile's passes, an emulated run)
    between two probes, and again (at most RETRIES times) while a probe finds the host in a
    slow spell: SLOW_SPELL times slower than the fastest probe of the check. The hosts it
    runs on have such spells (probed back to back for 90 s: 8% of probes 20-50% slow, in
    spells of 0.05 to 1.5 s, and a pure-Python loop 44% slower in them, so host and kernel
    time alike); a step caught in one is not the device the others ran on. A spell wholly
    inside a step is not seen: the comparison of median runs (metrics.typical) is what
    copes with that. The last try of a step is kept whatever its probes say."""

    def __init__(self) -> None:
        self.probes: list[float] = [probe_ms() for _ in range(3)]
        self.retried: list[str] = []

    def run(self, step: Callable[[], T], what: str) -> tuple[T, list[float]]:
        """`step()`'s result and the probes (ms) before and after its kept try."""
        tries = 0
        while True:
            before = probe_ms()
            result = step()
            after = probe_ms()
            self.probes += [before, after]
            fastest = min(self.probes)
            if max(before, after) <= SLOW_SPELL * fastest or tries == RETRIES:
                return result, [before, after]
            tries += 1
            self.retried.append(f"{what}: probes {before:.3f} and {after:.3f} ms, the "
                                f"fastest {fastest:.3f} ms")
            print(f"validate: the host was in a slow spell ({self.retried[-1]}): again",
                  file=sys.stderr, flush=True)


def drift(around_real: list[float], around_profile: list[float]) -> dict[str, Any]:
    """The report's `host_speed`: the probe's times and how much slower (+) or faster (-) the
    host was around the real runs than around the profiles, in percent. Kernel-bound steps of
    the emulation come out short by about that much when it is positive."""
    real, prof = statistics.median(around_real), statistics.median(around_profile)
    m, k, n = PROBE_SHAPE
    return {"probe": f"F.linear [{m}, {k}] x [{k}, {n}] fp32, 1 thread, weights rotated over "
                     f"{PROBE_SPAN_BYTES >> 20} MiB",
            "real_ms": round(real, 4), "profile_ms": round(prof, 4),
            "around_real_ms": [round(t, 4) for t in around_real],
            "around_profile_ms": [round(t, 4) for t in around_profile],
            "drift_pct": round(100.0 * (real / prof - 1.0), 2)}
