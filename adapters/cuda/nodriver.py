"""Let CUDA extensions that link the driver import on a machine without one.

sgl-kernel, FlashMLA and DeepEP (and vLLM's `_C_stable_libtorch`) link `libcuda.so.1`; with no
driver installed their `import` fails at dlopen, and SGLang imports sgl-kernel at start-up as
soon as CUDA is visible. `install()` puts a finder first on `sys.meta_path` that, the first time
one of those packages is imported, loads Revati's stand-in driver (`_nodriver.c`, built by
setup.py, soname libcuda.so.1, every entry point failing with CUDA_ERROR_NO_DEVICE) with
RTLD_GLOBAL, so the dynamic loader finds "libcuda.so.1" already loaded. The packages then
import for real (their Python code and op schemas); none of their kernels can run, which is
the point: Revati replaces them at the frameworks' seams.

Nothing happens when a real driver is present, or before one of the packages is imported.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any

# Top-level packages whose extensions link libcuda.so.1 and that frameworks import eagerly.
PACKAGES = frozenset({"sgl_kernel", "flash_mla", "deep_ep"})

_loaded: Any = None


def _library() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "_nodriver" + suffix)
        if os.path.exists(path):
            return path
    return None


def driver_present() -> bool:
    """Is a real libcuda.so.1 loadable here? (Then the stand-in must never be loaded.)"""
    if _loaded is not None:
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def load() -> bool:
    """Load the stand-in driver now (idempotent). False if a real driver is present or the
    stand-in was not built."""
    global _loaded
    if _loaded is not None:
        return True
    if driver_present():
        return False
    path = _library()
    if path is None:
        print("revati: the stand-in libcuda.so.1 (_nodriver) was not built; CUDA extensions "
              "that link the driver will not import", file=sys.stderr)
        return False
    _loaded = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname in PACKAGES:
            sys.meta_path.remove(self)
            load()
        return None  # the ordinary finders import the package itself


_finder: _Finder | None = None


def install() -> None:
    """Load the stand-in driver before the first import of a package in PACKAGES (at once if
    one is already imported). Idempotent."""
    global _finder
    if any(name in sys.modules for name in PACKAGES):
        load()
        return
    if _finder is None:
        _finder = _Finder()
        sys.meta_path.insert(0, _finder)
