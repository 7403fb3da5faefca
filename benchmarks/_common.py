"""Helpers shared by the benchmarks: a private daemon and percentile printing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextmanager
def private_daemon() -> Iterator[str]:
    """A revatid on a temporary socket, for the duration of a benchmark."""
    with tempfile.TemporaryDirectory(prefix="revati-bench-") as tmp:
        path = os.path.join(tmp, "revatid.sock")
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen(
            [sys.executable, "-m", "revati.revatid.main", "--socket", path, "--ready-fd",
             str(write_fd), "--log-level", "warning"], pass_fds=(write_fd,))
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as ready:
            if ready.readline().strip() != b"ready":
                raise SystemExit("revatid did not start")
        try:
            yield path
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
