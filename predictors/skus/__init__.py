"""GPU SKU specifications (predictors/skus/specs.json), shared by the virtual device surface and
the roofline model."""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any


class UnknownSku(KeyError):
    """Raised for a SKU name that is neither a key nor an alias in specs.json."""

    def __str__(self) -> str:
        return f"unknown GPU SKU {self.args[0]!r}; known: {', '.join(sorted(all_specs()))}"


@cache
def all_specs() -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath("specs.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def canonical(name: str) -> str:
    """Map a SKU name or alias (any case) to its key in specs.json."""
    key = name.strip().lower()
    specs = all_specs()
    if key in specs:
        return key
    for sku, spec in specs.items():
        if key in spec["aliases"] or key == spec["name"].lower():
            return sku
    raise UnknownSku(name)


def spec(name: str) -> dict[str, Any]:
    return all_specs()[canonical(name)]


# -- profiled devices: a name that is not in specs.json but has a trained bundle (host-cpu)

# What a virtual device shows that a profile does not measure (a CPU has no compute capability,
# SM clock or L2 figure): neutral values, so torch.cuda's device properties are complete.
_DEVICE_DEFAULTS: dict[str, Any] = {
    "aliases": [], "capability": [8, 0], "l2_bytes": 32 << 20, "sm_clock_mhz": 1500,
    "mem_clock_mhz": 1500, "mem_bus_width": 4096, "max_threads_per_sm": 2048,
    "regs_per_sm": 65536, "smem_per_block_optin": 101376,
}


def user_bundles_dir() -> Path:
    """Where bundles built on this machine live (machine-specific, never in git):
    $REVATI_BUNDLES, else $REVATI_CACHE/bundles, else ~/.cache/revati/bundles."""
    if env := os.environ.get("REVATI_BUNDLES"):
        return Path(env)
    root = os.environ.get("REVATI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "revati")
    return Path(root) / "bundles"


def bundle_roots() -> list[Path]:
    """Folders searched for SKU bundles, first match wins: the shipped ones, then this
    machine's."""
    return [Path(__file__).resolve().parent.parent / "bundles", user_bundles_dir()]


def profiled_bundle(name: str) -> Path | None:
    """The bundle folder of a profiled device named `name` (not in specs.json), or None."""
    key = name.strip().lower()
    for root in bundle_roots():
        if (root / key / "bundle.json").is_file():
            return root / key
    return None


def resolve(name: str) -> str:
    """`canonical(name)`, or for a profiled device with a bundle (host-cpu) its name."""
    try:
        return canonical(name)
    except UnknownSku:
        if profiled_bundle(name) is None:
            raise
        return name.strip().lower()


def device_spec(name: str) -> dict[str, Any]:
    """`spec(name)`, or for a profiled device the spec its bundle was trained with, completed
    with neutral values for what a profile does not measure."""
    try:
        return spec(name)
    except UnknownSku:
        path = profiled_bundle(name)
        if path is None:
            raise
        measured = json.loads((path / "bundle.json").read_text())["spec"]
        return {**_DEVICE_DEFAULTS, **measured}
