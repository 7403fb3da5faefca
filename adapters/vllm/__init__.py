"""vLLM on virtual GPUs: an out-of-tree platform plugin and the glue at vLLM's own seams.

vLLM finds `platform_plugin` through the `vllm.platform_plugins` entry point in every process
(API server, engine core, workers) when it first resolves `current_platform`. Outside a Revati
session it returns None and vLLM picks its platform as usual; inside one it names
`RevatiPlatform`, whose device, memory and capability come from the session's virtual GPUs.
See docs/vllm.md.
"""

from __future__ import annotations

import sys


def platform_plugin() -> str | None:
    """Entry point (`vllm.platform_plugins`): the platform's qualname inside a Revati session
    whose processes have virtual GPUs, else None."""
    try:
        from revati.adapters import session

        member = session.member()
        if member is None or not member.session.get("num_gpus"):
            return None
        from revati.adapters.vllm import early

        early.install()
        return "revati.adapters.vllm.platform.RevatiPlatform"
    except Exception as exc:  # vLLM swallows plugin errors at DEBUG level: say it here
        print(f"revati: the vLLM platform plugin failed: {exc!r}", file=sys.stderr)
        raise
