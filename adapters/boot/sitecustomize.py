"""Revati's start-up hook. `revatictl run` puts this folder first on PYTHONPATH, so every
Python process of the run (and its children) joins the session before user code runs.
Another sitecustomize further down the path still runs after this one."""

import importlib.machinery
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))

try:
    from revati.adapters.session import boot
except ImportError as exc:  # an interpreter without revati installed: leave it alone
    print(f"revati: hooks unavailable in {sys.executable}: {exc}", file=sys.stderr)
else:
    boot()

_rest = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
