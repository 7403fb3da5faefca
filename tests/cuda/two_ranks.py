"""Two ranks meet at an all-reduce on virtual GPUs; rank 1 arrives 50 ms (virtual) later.

    python two_ranks.py            start both ranks (under `revatictl run`)
    python two_ranks.py RANK PORT  one rank; prints "rank R arrived A at T done D": A seconds
                                   after its own start, at session time T, done at D
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

LATE_S = 0.05


def rank(r: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=r,
                            world_size=2)
    torch.cuda.set_device(r)
    x = torch.empty(1024, 1024, device="cuda")
    torch.cuda.synchronize()
    t0 = time.monotonic()
    if r == 1:
        time.sleep(LATE_S)
    arrived = time.monotonic() - t0
    arrived_at = time.monotonic()
    dist.all_reduce(x)
    torch.cuda.synchronize()
    done_at = time.monotonic()  # on the session clock, which both ranks share
    # One write(2) per line: both ranks share the pipe, and print() may split a line in two.
    os.write(1, f"rank {r} arrived {arrived:.6f} at {arrived_at:.6f} done {done_at:.6f}\n"
             .encode())
    dist.destroy_process_group()


def main() -> None:
    if len(sys.argv) == 3:
        rank(int(sys.argv[1]), int(sys.argv[2]))
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port)]) for r in range(2)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
