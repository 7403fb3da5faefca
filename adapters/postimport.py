"""Run a callback right after a module's first import (hooks for torch, asyncio, zmq, uvloop
are installed only in processes that use them, and cost nothing at start-up otherwise)."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable
from typing import Any


class _PostImport(importlib.abc.MetaPathFinder):
    """Finds `name` through the ordinary path finder and wraps its loader. It stays in
    sys.meta_path until the module really executes: `importlib.util.find_spec("torch")`
    (how transformers asks whether torch is installed) finds without importing."""

    def __init__(self, name: str, callback: Callable[[Any], None]) -> None:
        self.name = name
        self.callback = callback

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        finder = self

        def exec_and_hook(module: Any) -> None:
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            exec_module(module)
            finder.callback(module)

        spec.loader.exec_module = exec_and_hook  # type: ignore[method-assign]
        return spec


def when_imported(name: str, callback: Callable[[Any], None]) -> None:
    """Call `callback(module)` once `name` is imported (at once if it already is)."""
    if name in sys.modules:
        callback(sys.modules[name])
    else:
        sys.meta_path.insert(0, _PostImport(name, callback))
