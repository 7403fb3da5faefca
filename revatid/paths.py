"""Where revatid listens and keeps its session pages."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = Path("/run/revati/revatid.sock")


def default_socket() -> Path:
    """$REVATI_SOCKET, else $XDG_RUNTIME_DIR/revati/revatid.sock, else /tmp/revati-<uid>/."""
    if env := os.environ.get("REVATI_SOCKET"):
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "revati" if runtime else Path(f"/tmp/revati-{os.getuid()}")
    return base / "revatid.sock"


def page_dir() -> Path:
    """Session pages live in shared memory (tmpfs), private to the daemon's uid."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
    return base / f"revati-{os.getuid()}"
