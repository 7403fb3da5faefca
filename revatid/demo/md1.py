"""An M/D/1 serving scenario: the virtual-time tests and `revatictl demo --framework toy`.

Three processes, all session participants: an asyncio relay server, an "actor" that serves
each request with one 20 ms kernel on its virtual GPU and a stream sync, and an asyncio client
that sends N requests with seeded exponential gaps and records each request's latency with
time.monotonic(). The client prints one JSON line: latencies, and the scheduled and actual
send offsets (s).

    python md1.py [N] [SEED] [MEAN_GAP_S] [SERVICE]

SERVICE is "kernel" (one kernel per request: its time is whatever the session predicts, a
fixed 20 ms in the tests) or "llama8b" (the GEMMs of one Llama-3.1-8B decode step at batch
1, predicted for the session's GPU).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def arrivals(n: int, seed: int, mean_gap: float) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(1.0 / mean_gap)
        out.append(t)
    return out


def expected_latencies(arrive: list[float], service: float) -> list[float]:
    """Deterministic service, one server, FIFO (Lindley's recursion)."""
    free, out = 0.0, []
    for a in arrive:
        start = max(a, free)
        free = start + service
        out.append(free - a)
    return out


# Llama-3.1-8B: hidden 4096, 32 layers, 32 heads / 8 KV heads of 128, MLP 14336, vocab 128256.
LLAMA8B_STEP = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)] * 32 + [(128256, 4096)]


def actor(port: int, ready_file: str, service: str) -> None:
    from revati.adapters.session import SessionLink, member
    from revati.predictors.launch import Family, LaunchEvent

    link = SessionLink(member())
    shapes = LLAMA8B_STEP if service == "llama8b" else [(4096, 4096)]
    sock = socket.create_connection(("127.0.0.1", port))
    # Without it, Nagle holds a small reply in the kernel until an ACK that the peer delays:
    # a message in flight that no process can see (asyncio sets it on its own sockets).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"actor\n")
    open(ready_file, "w").close()
    for line in sock.makefile("rb"):
        # the service's kernels, then wait for the stream
        for n, k in shapes:
            link.launch(LaunchEvent(Family.GEMM, "aten::mm", "bf16", 0, 0, link.now_ns(),
                                    (1, n, k, 1)))
        link.synchronize(0, 0)
        sock.sendall(line)


class Relay(asyncio.Protocol):
    """Forwards request lines from the client to the actor, and replies back."""

    def __init__(self, peers: dict[str, asyncio.Transport]) -> None:
        self.peers = peers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.transport is self.peers.get("actor"):
            self.peers["client"].write(data)
        elif "actor" not in self.peers and data == b"actor\n":
            self.peers["actor"] = self.transport
        else:
            self.peers["client"] = self.transport
            self.peers["actor"].write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is self.peers.get("actor") and "client" in self.peers:
            self.peers["client"].close()  # the actor died: fail the client, do not hang it


async def server(port_file: str) -> None:
    loop = asyncio.get_running_loop()
    peers: dict[str, asyncio.Transport] = {}
    srv = await loop.create_server(lambda: Relay(peers), "127.0.0.1", 0)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.sockets[0].getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    await srv.serve_forever()


class Client(asyncio.Protocol):
    def __init__(self, n: int, done: asyncio.Future) -> None:
        self.sent = [0.0] * n
        self.latencies = [0.0] * n
        self.left = n
        self.done = done
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, i: int) -> None:
        self.sent[i] = time.monotonic()
        self.transport.write(b"%d\n" % i)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        *lines, self.buf = (self.buf + data).split(b"\n")
        for line in lines:
            i = int(line)
            self.latencies[i] = now - self.sent[i]
            self.left -= 1
        if self.left == 0:
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"server closed with {self.left} requests "
                                                    "unanswered (did the actor fail?)"))


async def client(port: int, n: int, seed: int, mean_gap: float) -> None:
    loop = asyncio.get_running_loop()
    arrive = arrivals(n, seed, mean_gap)
    done = loop.create_future()
    _, proto = await loop.create_connection(lambda: Client(n, done), "127.0.0.1", port)
    t0 = time.monotonic()
    for i, a in enumerate(arrive):
        delay = t0 + a - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        proto.send(i)
    await done
    print(json.dumps({"latencies": proto.latencies, "arrivals": arrive,
                      "sent": [t - t0 for t in proto.sent],  # later than arrivals, a little
                      "virtual_span": time.monotonic() - t0}))


def _wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.005)


def main() -> None:
    args = sys.argv[1:] + ["200", "1", "0.05", "kernel"][len(sys.argv) - 1:]
    n, seed, mean_gap, service = int(args[0]), int(args[1]), float(args[2]), args[3]
    base = f"/tmp/revati-md1-{os.getpid()}"
    srv = subprocess.Popen([sys.executable, HERE, "--server", base + ".port"])
    _wait_for(base + ".port")
    with open(base + ".port") as f:
        port = f.read()
    act = subprocess.Popen([sys.executable, HERE, "--actor", port, base + ".actor", service])
    _wait_for(base + ".actor")
    for suffix in (".port", ".actor"):
        os.unlink(base + suffix)
    code = subprocess.run([sys.executable, HERE, "--client", port, str(n), str(seed),
                           str(mean_gap)]).returncode
    for p in (act, srv):
        p.terminate()
        p.wait()
    sys.exit(code)


if __name__ == "__main__":
    role = sys.argv[1:2]
    if role == ["--server"]:
        asyncio.run(server(sys.argv[2]))
    elif role == ["--actor"]:
        actor(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    elif role == ["--client"]:
        asyncio.run(client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                           float(sys.argv[5])))
    else:
        main()
