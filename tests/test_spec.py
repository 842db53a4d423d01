"""The spec: validation errors name their field before anything is built; specs round-trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import idmzoo
from idmzoo import Spec
from idmzoo.reference import spec_from_reference
from tests.fixtures import TINY, fixture_index

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.json"))

#: Attention at 64 channels in the encoder and decoder; the error messages below quote them.
BASE = {**TINY, "attention": {"type": "legacy_attention"}, "dropout": 0.0}


def errors_of(data: dict) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        Spec.model_validate(data)
    return info.value.errors()


@pytest.fixture
def no_module_construction(monkeypatch):
    """Fail the test if any torch module is constructed while it runs."""

    def refuse(*args, **kwargs):
        raise AssertionError("a module was constructed during validation")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        (
            {"norm": {"type": "group_norm"}},
            ("norm", "type"),
            r"unknown norm block 'group_norm'\. Did you mean 'group_norm32'",
        ),
        (
            {"attention": {"type": "legacy_attention", "num_heads": "four"}},
            ("attention", "num_heads"),
            "valid integer",
        ),
        (
            {"attention": {"type": "legacy_attention", "num_head": 4}},
            ("attention", "num_head"),
            "Extra inputs",
        ),
        ({"model_channels": 48}, ("norm", "num_groups"), "num_groups=32 does not divide 48 channels"),
        (
            {"attention": {"type": "legacy_attention", "num_heads": 3}},
            ("attention", "num_heads"),
            "num_heads=3 does not divide 64 channels",
        ),
        (
            {"attention": {"type": "new_order_attention", "num_head_channels": 24}},
            ("attention", "num_head_channels"),
            "num_head_channels=24 does not divide 64 channels",
        ),
        (
            {"attention": {"type": "legacy_attention", "num_heads_upsample": 5}},
            ("attention", "num_heads_upsample"),
            "num_heads_upsample=5 does not divide 64 channels .at output_blocks",
        ),
        (
            {"attention_resolutions": [8]},
            ("attention_resolutions", 0),
            "downsampling rate 8 is never reached.*rates are 1, 2",
        ),
        ({"dims": 4}, ("dims",), "Input should be 1, 2 or 3"),
        ({"channel_mult": [0.01, 1]}, ("channel_mult", 0), "leaves no channels"),
        ({"family": {"type": "encoder_unet"}}, ("pool",), "needs a pool head"),
        ({"pool": {"type": "adaptive"}}, ("pool",), "only the encoder_unet family"),
    ],
)
def test_bad_spec_names_the_field_before_building(no_module_construction, change, loc, message):
    errors = errors_of({**BASE, **change})
    assert [e["loc"] for e in errors] == [loc]
    assert re.search(message, errors[0]["msg"])


def test_unknown_block_lists_every_registered_name():
    (error,) = errors_of({**BASE, "upsample": {"type": "transposed"}})
    for block in idmzoo.list_blocks("upsample"):
        assert block.name in error["msg"]


def test_block_shorthand_and_qualified_names():
    spec = Spec.model_validate({**BASE, "norm": "group_norm32", "upsample": {"type": "idmzoo:nearest"}})
    assert spec.norm.type == "group_norm32" and spec.norm.num_groups == 32
    assert spec.upsample.type == "idmzoo:nearest"
    (error,) = errors_of({**BASE, "upsample": {"type": "someone-else:nearest"}})
    assert error["loc"] == ("upsample", "type")


def test_attention_resolutions_are_normalised():
    spec = Spec.model_validate({**BASE, "attention_resolutions": [2, 1, 2]})
    assert spec.attention_resolutions == (1, 2)


#: Above this size the round trip compares shapes on the meta device instead of weights.
ROUND_TRIP_WEIGHTS_LIMIT = 5_000_000


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_file_validates_round_trips_and_builds(path):
    spec = idmzoo.load_spec(path)
    again = Spec.model_validate_json(spec.model_dump_json())
    assert again == spec
    shapes = [
        {k: v.shape for k, v in idmzoo.build(s, device="meta").state_dict().items()} for s in (spec, again)
    ]
    assert shapes[0] == shapes[1]
    if sum(shape.numel() for shape in shapes[0].values()) <= ROUND_TRIP_WEIGHTS_LIMIT:
        first, second = (idmzoo.build(s, seed=0).state_dict() for s in (spec, again))
        assert all(torch.equal(first[k], second[k]) for k in first)


def test_build_accepts_spec_dict_and_path(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(BASE))
    models = [
        idmzoo.build(source, device="meta") for source in (Spec.model_validate(BASE), BASE, path, str(path))
    ]
    shapes = [{k: v.shape for k, v in m.state_dict().items()} for m in models]
    assert all(s == shapes[0] for s in shapes)


def test_unreadable_spec_file_is_a_clear_error(tmp_path):
    with pytest.raises(idmzoo.IdmzooError, match="cannot read spec file"):
        idmzoo.build(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(idmzoo.IdmzooError, match="is not valid JSON"):
        idmzoo.build(broken)


@pytest.mark.parametrize("name", sorted(fixture_index()))
def test_each_fixture_configuration_has_its_spec_file(name):
    entry = fixture_index()[name]
    expected = spec_from_reference(entry["library"], entry["class"], entry["kwargs"])
    path = Path(__file__).parent.parent / "specs" / f"{name}.json"
    assert idmzoo.load_spec(path) == expected
