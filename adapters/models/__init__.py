"""Bundled model configs (no weights) and the folders vLLM, SGLang and transformers load.

The package ships each model's `config.json` and `generation_config.json` only. Its stand-in
tokenizer (see `tokenizer.py`) is a few MB of generated JSON, so it is built on first use into a
cache folder keyed by the config and the builder's source: `model_dir("Llama-3.1-8B")` returns a
folder a serving framework can be pointed at, with nothing fetched from a hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from revati.adapters.models import tokenizer

HERE = Path(__file__).resolve().parent
CONFIG_FILES = ("config.json", "generation_config.json")


def names() -> list[str]:
    """The bundled models."""
    return sorted(p.parent.name for p in HERE.glob("*/config.json"))


def cache_root() -> Path:
    root = os.environ.get("REVATI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "revati")
    return Path(root)


def canonical(name: str) -> str:
    """The bundled model `name` names, its case aside ("llama-3.1-8b": "Llama-3.1-8B")."""
    for bundled in names():
        if bundled.lower() == name.lower():
            return bundled
    raise KeyError(f"unknown model {name!r}; bundled models: {', '.join(names())}")


def _source(name: str) -> Path:
    return HERE / canonical(name)


def config(name: str) -> dict:
    """`name`'s bundled config.json."""
    return json.loads((_source(name) / "config.json").read_text())


def model_dir(name: str) -> Path:
    """A folder with `name`'s config and tokenizer files, built once and reused."""
    src = _source(name)
    digest = hashlib.sha256(Path(tokenizer.__file__).read_bytes())
    for fname in CONFIG_FILES:
        digest.update((src / fname).read_bytes())
    dest = cache_root() / "models" / f"{src.name}-{digest.hexdigest()[:12]}"
    if (dest / "tokenizer.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the destination and renamed into place, so concurrent first uses never see
    # a half-written folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{src.name}-", dir=dest.parent))
    try:
        for fname in CONFIG_FILES:
            shutil.copyfile(src / fname, tmp / fname)
        cfg = json.loads((src / "config.json").read_text())
        for fname, text in tokenizer.build(src.name, cfg).items():
            (tmp / fname).write_text(text, encoding="utf-8")
        os.rename(tmp, dest)
    except OSError:
        if not (dest / "tokenizer.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve(model: str) -> str:
    """`model` itself if it is a path, else the folder of the bundled model of that name."""
    if os.path.sep in model or os.path.exists(model):
        return model
    return str(model_dir(model))
