"""Shared test data: the reference fixtures (tensors the original code produced) and small specs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_DIRS = ("reference", "guided", "consistency")


@cache
def fixture_index() -> dict[str, dict[str, Any]]:
    """Every fixture's index entry by name, from all fixture folders."""
    entries = {}
    for folder in REFERENCE_DIRS:
        for entry in json.loads((FIXTURES / folder / "index.json").read_text())["fixtures"]:
            entries[entry["name"]] = {**entry, "path": FIXTURES / folder / entry["file"]}
    return entries


def consistency_index() -> dict[str, Any]:
    """The consistency-models index, with ``create_model_cases``: flags → reference kwargs."""
    return json.loads((FIXTURES / "consistency" / "index.json").read_text())


def load_fixture(name: str) -> dict[str, Any]:
    """The fixture's tensors and metadata (``state_dict``, ``inputs``, ``output``, grads...)."""
    return torch.load(fixture_index()[name]["path"], weights_only=True)


def presets() -> list[dict[str, Any]]:
    """The 17 published configurations, with the parameter counts the reference produced."""
    return json.loads((FIXTURES / "reference" / "presets.json").read_text())["presets"]


#: A small U-Net with every block kind: attention at 4x4 on a 8x8 input, dropout on.
TINY = {
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 3,
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "attention_resolutions": [2],
    "dropout": 0.1,
    "attention": {"type": "legacy_attention", "num_heads": 2},
}
#: guided-diffusion's blocks: resampling resblocks, split-order attention, FiLM, class labels.
TINY_ADM = {
    **TINY,
    "num_classes": 3,
    "resblock": {"type": "resblock", "use_scale_shift_norm": True},
    "attention": {"type": "new_order_attention", "num_head_channels": 16},
    "upsample": {"type": "resblock_up"},
    "downsample": {"type": "resblock_down"},
}
#: consistency-models' blocks: guided-diffusion's with 1x1 Conv2d attention projections.
TINY_CM = {**TINY_ADM, "attention": {"type": "conv2d_attention", "num_head_channels": 16}}
