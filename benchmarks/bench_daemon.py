"""revatid request round trips: throughput and latency of a small request (ping), with 1 and
16 concurrent clients, each client its own process with its own connection.

    python benchmarks/bench_daemon.py [--seconds 3]

Target (issue 2): over 20k round trips/s with 16 clients on a 2-core machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

from benchmarks._common import percentile, private_daemon
from revati.revatid.client import Client


def _client(path: str, seconds: float, start: float, out: mp.Queue) -> None:
    latencies = []
    with Client(path) as c:
        while time.monotonic() < start:
            pass
        end = start + seconds
        while (t0 := time.perf_counter()) and time.monotonic() < end:
            c.request("ping")
            latencies.append(time.perf_counter() - t0)
    out.put(latencies)


def run(path: str, clients: int, seconds: float) -> dict:
    out: mp.Queue = mp.Queue()
    start = time.monotonic() + 0.5
    procs = [mp.Process(target=_client, args=(path, seconds, start, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    latencies = [x for _ in procs for x in out.get()]
    for p in procs:
        p.join()
    return {"clients": clients, "round_trips_per_s": len(latencies) / seconds,
            "p50_us": percentile(latencies, 0.5) * 1e6, "p99_us": percentile(latencies, 0.99) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with private_daemon() as path:
        for clients in (1, 16):
            r = run(path, clients, args.seconds)
            print(f"{r['clients']:>2} clients: {r['round_trips_per_s']:>9,.0f} round trips/s   "
                  f"p50 {r['p50_us']:7.1f} us   p99 {r['p99_us']:7.1f} us")


if __name__ == "__main__":
    main()
