"""GPU SKU specifications (predictors/skus/specs.json), shared by the virtual device surface and
the roofline model."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
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
