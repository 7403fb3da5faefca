"""SGLang on virtual GPUs: an out-of-tree platform plugin and the glue at SGLang's own seams.

SGLang resolves `current_platform` from the `sglang.srt.platforms` entry points in every
process (HTTP server, schedulers, detokenizer). Outside a Revati session `platform_plugin`
returns None and SGLang picks its platform as usual; inside one it names `RevatiPlatform`.
`general_plugin` (`sglang.srt.plugins`, run by SGLang's `load_plugins()` in every process, before
the CLI is parsed in the HTTP server) registers the "revati" attention backend, single-launch
stand-ins for the fused ops (fused_ops.py) and the token oracle's hook (oracle.py).
See docs/sglang-hookmap.md. Work in progress: see its section 12.
"""

from __future__ import annotations

import os
import sys

ENV_DEFAULTS = {"SGLANG_ENABLE_JIT_DEEPGEMM": "0"}


def _in_gpu_session() -> bool:
    from revati.adapters import session

    member = session.member()
    return member is not None and bool(member.session.get("num_gpus"))


def platform_plugin() -> str | None:
    """Entry point (`sglang.srt.platforms`): the platform's qualname inside a Revati session
    whose processes have virtual GPUs, else None."""
    try:
        if not _in_gpu_session():
            return None
        # Read by SGLang at import time, in this process and in the schedulers it spawns
        # (they inherit the environment): DeepGEMM's JIT asks the driver for its device.
        for name, value in ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        return "revati.adapters.sglang.platform.RevatiPlatform"
    except Exception as exc:  # SGLang logs plugin errors with logger.exception; say it here too
        print(f"revati: the SGLang platform plugin failed: {exc!r}", file=sys.stderr)
        raise


def general_plugin() -> None:
    """Entry point (`sglang.srt.plugins`): register Revati's attention backend, the fused-op
    stand-ins, the kernel hooks and the token oracle's hook."""
    if not _in_gpu_session():
        return
    from revati.adapters.sglang import attention, fused_ops, kernels, oracle

    attention.register()
    fused_ops.register()
    kernels.register()
    oracle.register()
