"""Access to the reference fixtures: tensors the original improved-/guided-diffusion code produced."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_DIRS = ("reference", "guided")


@cache
def fixture_index() -> dict[str, dict[str, Any]]:
    """Every fixture's index entry by name, from both fixture folders."""
    entries = {}
    for folder in REFERENCE_DIRS:
        for entry in json.loads((FIXTURES / folder / "index.json").read_text())["fixtures"]:
            entries[entry["name"]] = {**entry, "path": FIXTURES / folder / entry["file"]}
    return entries


def load_fixture(name: str) -> dict[str, Any]:
    """The fixture's tensors and metadata (``state_dict``, ``inputs``, ``output``, grads...)."""
    return torch.load(fixture_index()[name]["path"], weights_only=True)


def presets() -> list[dict[str, Any]]:
    """The 17 published configurations, with the parameter counts the reference produced."""
    return json.loads((FIXTURES / "reference" / "presets.json").read_text())["presets"]
