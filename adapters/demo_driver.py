"""What the framework demo drivers (`revati.adapters.<framework>.demo`) share: their command
line, a server process started in the session and waited for, and the result they hand to
`revatictl demo` (revatid/demo/serving.py)."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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
    for flag, default in extra:
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("server_args", nargs=argparse.REMAINDER,
                    help=f"after --: more `{server}` arguments")
    args = ap.parse_args(argv)
    rest = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    return args, rest


def free_port() -> int:
    with socket.socket() as s:
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


def write_result(path: str, result: dict[str, Any], bench_wall_s: float,
                 output_len: int) -> None:
    result["bench_wall_s"] = bench_wall_s
    result["requested_output_len"] = output_len
    Path(path).write_text(json.dumps(result))
