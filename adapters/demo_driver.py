"""What the framework demo drivers (`revati.adapters.<framework>.demo`) share: their command
line, a server process started in the session and waited for, and the result they hand to
`revatictl demo` (revatid/demo/serving.py)."""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from revati.adapters import models

STARTUP_TIMEOUT_S = 1800.0  # virtual seconds; start-up is host work, so about as much real time


def parse_args(doc: str, server: str, argv: list[str] | None,
               extra: tuple[tuple[str, int], ...] = ()) -> tuple[argparse.Namespace, list[str]]:
    """The demo drivers' common options; returns them and the server arguments after `--`."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--result", required=True, help="write the benchmark result JSON here")
    ap.add_argument("--model", default="Llama-3.1-8B",
                    help=f"a bundled model ({', '.join(models.names())}) or a folder")
    ap.add_argument("--num-prompts", type=int, default=200)
    ap.add_argument("--request-rate", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--prefix-len", type=int, default=0,
                    help="tokens of prompt prefix shared within each of PREFIX_GROUPS groups of "
                    "requests (0: independent random prompts)")
    ap.add_argument("--client", choices=("own", "vllm"), default="own",
                    help="the load generator: the framework's own benchmark (default), or "
                    "`vllm bench serve` from the vLLM environment (OpenAI API)")
    for flag, default in extra:
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("server_args", nargs=argparse.REMAINDER,
                    help=f"after --: more `{server}` arguments")
    args = ap.parse_args(argv)
    if not 0 <= args.prefix_len < args.input_len:
        ap.error("--prefix-len must be at least 0 and less than --input-len")
    rest = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    return args, rest


PREFIX_GROUPS = 4  # shared-prefix workloads: requests share one of this many prefixes


def metrics(port: int, names: tuple[str, ...]) -> dict[str, float]:
    """The server's Prometheus counters `names`, each summed over its labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[-1])
    return totals


def _ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections and to binds of port 0."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def free_port() -> int:
    """A free port for a server to bind later, chosen outside the ephemeral range.

    A port from the ephemeral range (what binding port 0 returns) can be taken before the
    server binds it: by any outgoing connection, and by our own /health polls, one of which
    can connect to itself (TCP simultaneous open) when the kernel picks the polled port as
    its source port. Either makes the server fail with "address already in use"."""
    ephemeral = _ephemeral_ports()
    candidates = [p for p in range(10000, 65536) if p not in ephemeral]
    for port in random.sample(candidates, min(64, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # every port is ephemeral here: take the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(command: list[str], port: int, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """Start the server, wait until /health answers 200 (in virtual time), stop it (SIGINT)
    at the end."""
    server = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise SystemExit(f"{name} exited with {server.returncode} during start-up")
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not become healthy")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        yield server
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _cpu_s(pid: int | str) -> tuple[str, int, float]:
    """(name, parent pid, CPU seconds so far) of a process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    name = data[data.index(b"(") + 1:data.rindex(b")")].decode(errors="replace")
    fields = data[data.rindex(b")") + 2:].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (name, CPU seconds) of `root` ("server") and its descendants."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                procs[int(entry)] = _cpu_s(entry)
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
    tree, frontier = set(), {root}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, (_, ppid, _) in procs.items() if ppid in frontier} - tree
    return {pid: ("server" if pid == root else procs[pid][0], procs[pid][2])
            for pid in tree if pid in procs}


def _by_name(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, seconds in pairs:
        out[name] = out.get(name, 0.0) + seconds
    return out


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class HostUse:
    """Where this host's time went while the benchmark ran: CPU seconds of the serving
    processes (by name), of the benchmark client and of revatid; the real seconds each of
    those processes spent inside Revati's own code; and the session's own accounting (frozen
    for Revati's bookkeeping, kept out as CPU contention, jumped)."""

    def __init__(self, server: int, client: int) -> None:
        from revati.adapters.session import member

        self.server = server
        self.client = client
        self.member = member()
        if self.member is not None:
            with self.member.clock.freeze(), self.member.lock:
                self.daemon = self.member.client.request("ping")["pid"]
        self.before = self._snapshot(_cpu_s(client)[2])

    def _snapshot(self, client_cpu_s: float) -> dict[str, Any]:
        m = self.member
        if m is None:
            return {}
        with m.clock.freeze(), m.lock:
            session = m.client.request("session.status", session=m.session_id)["session"]
        tree = _tree_cpu_s(self.server)
        cpu = _by_name(tree.values())
        cpu["benchmark client"] = client_cpu_s
        cpu["revatid"] = _cpu_s(self.daemon)[2]
        # the same names for the participants' time inside Revati (the client's once it left)
        names = {pid: name for pid, (name, _) in tree.items()}
        names[self.client] = "benchmark client"
        revati = _by_name((names[p["pid"]], p["revati_s"])
                          for p in session["participants"] + session["exited"]
                          if p["pid"] in names)
        return {"cpu_s": cpu, "revati_s": revati,
                **{k: session["counters"][k] for k in
                   ("virtual_s", "frozen_s", "contended_s", "jumped_s")}}

    def result(self, client_cpu_s: float) -> dict[str, Any]:
        """The deltas since construction; `client_cpu_s`: the client's CPU time in all."""
        after = self._snapshot(client_cpu_s)
        if not after:
            return {}

        def delta(key: str) -> dict[str, float]:
            return {k: round(v - self.before[key].get(k, 0.0), 3) for k, v in after[key].items()}

        out = {k: after[k] - self.before[k] for k in ("frozen_s", "contended_s", "jumped_s")}
        return {"cpu_s": delta("cpu_s"), "revati_s": delta("revati_s"),
                "virtual_window_s": [self.before["virtual_s"], after["virtual_s"]], **out}


# Both vLLM's `bench serve` and SGLang's `bench_serving` print this once their own start-up
# (imports, tokenizer, dataset, warm-up request) is over and the measured run begins.
MAIN_RUN = b"Starting main benchmark run"


class HeldClient:
    """The benchmark client, started before the server is up and held before its run
    (revati.adapters.held_start): its imports (vLLM's, ~15 s here) overlap the server's
    start-up instead of following it. `command` is `[python, "-m", module, *args]`; `preload`
    names the modules whose import the client would otherwise do once let go. Use it as a
    context manager: leaving it unreleased (the server failed) ends the client unrun."""

    def __init__(self, command: list[str], preload: tuple[str, ...]) -> None:
        if len(command) < 3 or command[1] != "-m":
            raise ValueError(f"a held client runs a module (python -m ...), not {command}")
        python, _, module, *args = command
        go_read, self._go = os.pipe()
        self.output, out_write = os.pipe()
        self.proc = subprocess.Popen(
            [python, "-m", "revati.adapters.held_start", str(go_read), ",".join(preload),
             module, *args], stdout=out_write, pass_fds=(go_read,))
        os.close(go_read)
        os.close(out_write)

    def release(self) -> None:
        """Let the client run."""
        os.write(self._go, b"1")
        os.close(self._go)
        self._go = -1

    def __enter__(self) -> HeldClient:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._go >= 0:  # never released: end of file tells it not to run
            os.close(self._go)
            self._go = -1
        with suppress(OSError):
            os.close(self.output)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_benchmark(client: HeldClient, server: subprocess.Popen[bytes],
                  ) -> tuple[int, float, dict[str, Any]]:
    """Let the held benchmark client run, its output passed through. Returns its exit status,
    the wall seconds of its measured run (from its MAIN_RUN line to its exit) and
    HostUse.result() over that run."""
    from revati.adapters.clock.hooks import real_monotonic

    children0 = _children_cpu_s()
    client.release()
    use, start, seen = None, real_monotonic(), b""
    while chunk := os.read(client.output, 1 << 16):  # a hooked wait: the session may jump
        os.write(1, chunk)
        if use is None:
            seen = seen[-len(MAIN_RUN):] + chunk
            if MAIN_RUN in seen:
                start, use = real_monotonic(), HostUse(server.pid, client.proc.pid)
    code = client.proc.wait()
    wall_s = real_monotonic() - start
    host_use = use.result(_children_cpu_s() - children0) if use is not None else {}
    return code, wall_s, host_use


def write_result(path: str, result: dict[str, Any], bench_wall_s: float,
                 output_len: int, prefix_cache: tuple[float, float],
                 host_use: dict[str, Any]) -> None:
    """`prefix_cache`: (prompt tokens, of them served from the prefix cache), by the server's
    own metrics; `host_use`: HostUse.result()."""
    result["bench_wall_s"] = bench_wall_s
    result["requested_output_len"] = output_len
    result["host_use"] = host_use
    result["prefix_cache"] = {"prompt_tokens": prefix_cache[0], "hit_tokens": prefix_cache[1]}
    Path(path).write_text(json.dumps(result))
