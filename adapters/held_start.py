"""Start a Python program now, run it later: its imports overlap with whatever the caller
waits for meanwhile (a demo's benchmark client imports vLLM, ~15 s on a small host, while the
server it will load starts), and its run begins when the caller says so.

    python -m revati.adapters.held_start GO_FD PRELOAD[,PRELOAD...] MODULE [ARGS...]

imports the PRELOAD modules, waits for one byte on the inherited descriptor GO_FD, then runs
MODULE as `python -m MODULE ARGS...` would. End of file on GO_FD (the caller gave up) exits
with status 3 without running it. The wait is an os.read, a hooked wait in a Revati session.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys

NOT_STARTED = 3  # the caller closed GO_FD without a go


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    go_fd, preload, module, args = int(argv[0]), argv[1], argv[2], argv[3:]
    for name in filter(None, preload.split(",")):
        importlib.import_module(name)
    go = os.read(go_fd, 1)
    os.close(go_fd)
    if not go:
        return NOT_STARTED
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
