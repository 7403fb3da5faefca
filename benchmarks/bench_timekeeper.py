"""Virtual-time costs: clock reads, hooked time.time(), jump latency, and the speed-up of the
M/D/1 scenario (revatid/demo/md1.py).

    python benchmarks/bench_timekeeper.py

Targets (issue 3): clock read < 1 us; jump latency p50 < 200 us ("all waiting" to "waiter
running", real time); M/D/1 wall time < 1/10 of its virtual time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from benchmarks._common import percentile, private_daemon
from revati.adapters.clock._vclock import Page

REVATICTL = [sys.executable, "-m", "revati.revatid.ctl"]
N = 1_000_000

IN_SESSION = r"""
import json, os, threading, time, timeit
from revati.adapters.clock import hooks, _vclock
hooked, original = time.time, hooks._originals["time.time"]
n = 1_000_000
cost = {"hooked_time_ns": min(timeit.repeat(hooked, number=n, repeat=5)) / n * 1e9,
        "original_time_ns": min(timeit.repeat(original, number=n, repeat=5)) / n * 1e9}
real = _vclock.real_monotonic_ns
idle = threading.Event()  # the other threads of a server process (vLLM's has ~50), all asleep
for _ in range(int(os.environ.get("REVATI_BENCH_THREADS", "0"))):
    threading.Thread(target=idle.wait, daemon=True).start()
lat = []
for _ in range(500):
    t0 = real()
    time.sleep(1.0)          # nothing else runs: the timekeeper jumps 1 s ahead
    lat.append(real() - t0)
cost["jump_latency_us"] = sorted(lat)
print(json.dumps(cost))
"""


def per_call_ns(fn: object) -> float:
    return min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e9  # type: ignore[arg-type]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        page = Page(os.path.join(tmp, "page"), create=True)
        print(f"clock read (page.now)          {per_call_ns(page.now):7.1f} ns")
        print(f"clock read (page.monotonic)    {per_call_ns(page.monotonic):7.1f} ns")
        print(f"time.monotonic (unhooked)      {per_call_ns(time.monotonic):7.1f} ns")
        page.slot_claim(0, os.getpid(), 1)  # a running participant, as in a session's hot path
        freeze = lambda: (page.freeze_enter(), page.freeze_exit())  # noqa: E731
        print(f"freeze enter+exit              {per_call_ns(freeze):7.1f} ns")
        member = Page(os.path.join(tmp, "page"))  # the op freeze credits a participant's ops
        member.slot_claim(0, os.getpid(), 1)
        member.set_op_credit(5000)
        op_freeze = lambda: (member.freeze_enter_op(), member.freeze_exit())  # noqa: E731
        print(f"op freeze enter+exit (credit)  {per_call_ns(op_freeze):7.1f} ns")

    with private_daemon() as sock:
        for threads in (0, 48):
            out = subprocess.run([*REVATICTL, "--socket", sock, "run", "--", sys.executable,
                                  "-c", IN_SESSION], capture_output=True, text=True, check=True,
                                 env={**os.environ, "REVATI_BENCH_THREADS": str(threads)})
            r = json.loads(out.stdout)
            lat = [x / 1e3 for x in r["jump_latency_us"]]
            if not threads:
                print(f"time.time() hooked             {r['hooked_time_ns']:7.1f} ns   "
                      f"(original {r['original_time_ns']:.1f} ns)")
            print(f"jump latency, {1 + threads:2d} threads       p50 {percentile(lat, 0.5):6.1f} us"
                  f"   p99 {percentile(lat, 0.99):6.1f} us")

        md1 = os.path.join(os.path.dirname(__file__), "..", "revatid", "demo", "md1.py")
        ratios = []
        for seed in (1, 2, 3):
            with tempfile.NamedTemporaryFile(suffix=".json") as summary:
                out = subprocess.run(
                    [*REVATICTL, "--socket", sock, "run", "--fixed-ns", "20000000", "--json",
                     summary.name, "--", sys.executable, md1, "200", str(seed), "0.05"],
                    capture_output=True, text=True, check=True)
                c = json.loads(Path(summary.name).read_text())["counters"]
            ratios.append(c["virtual_s"] / c["wall_s"])
            print(f"M/D/1 seed {seed}: virtual {c['virtual_s']:6.2f} s  wall {c['wall_s']:5.2f} s"
                  f"  speed-up {ratios[-1]:5.1f}x  jumps {c['jumps']}")
        print(f"M/D/1 speed-up, median of 3    {sorted(ratios)[1]:.1f}x (target > 10x)")


if __name__ == "__main__":
    main()
