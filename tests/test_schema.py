"""``idmzoo.spec_schema``: a JSON Schema that agrees with the spec validator, plugins included."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch.nn as nn
from pydantic import ValidationError

import idmzoo
from idmzoo.registry import BLOCK_KINDS, BlockParams, BlockRegistry
from idmzoo.schema import block_parameters, block_schema

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.json"))
BASE = json.loads((Path(__file__).parent.parent / "specs" / "idm_uncond_ssn.json").read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = idmzoo.spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_file_is_valid(validator, path):
    assert list(validator.iter_errors(json.loads(path.read_text()))) == []


@pytest.mark.parametrize("kind", [k for k in BLOCK_KINDS if k in idmzoo.Spec.model_fields])
def test_each_block_field_is_a_discriminated_union_of_every_registered_block(kind):
    field = idmzoo.spec_schema()["properties"][kind]
    objects, shorthand = field["anyOf"][:2]
    blocks = idmzoo.list_blocks(kind)
    expected = {name for info in blocks for name in (info.name, info.qualified_name)}
    assert objects["discriminator"]["propertyName"] == "type"
    assert set(objects["discriminator"]["mapping"]) == expected
    assert len(objects["oneOf"]) == len(blocks)
    assert set(shorthand.get("enum", [shorthand.get("const")])) == {info.name for info in blocks}


@pytest.mark.parametrize(
    "change",
    [
        {"norm": {"type": "group_norm33"}},
        {"norm": {"type": "group_norm32", "num_groups": 0}},
        {"norm": {"type": "group_norm32", "groups": 8}},
        {"norm": {"groups": 8}},
        {"norm": {"type": "rms_norm", "eps": -1.0}},
        {"upsample": {"type": "conv_transpose", "init": "nearest"}},
        {"upsample": "bilinear"},
        {"overrides": [{"at": {}, "attention": {"num_heads": 2}}]},
        {"overrides": [{"at": {"level": 1}}]},
        {"overrides": [{"at": {"stage": "bottom"}, "norm": "group_norm32"}]},
        {"overrides": [{"at": {"level": 1}, "pool": "adaptive"}]},
        {"overrides": [{"at": {"level": 1}, "attention": {"type": "legacy_attention", "num_head": 2}}]},
    ],
    ids=str,
)
def test_schema_rejects_what_the_validator_rejects(validator, change):
    spec = {**BASE, **change}
    with pytest.raises(ValidationError):
        idmzoo.load_spec(spec)
    assert not validator.is_valid(spec)


@pytest.mark.parametrize(
    "change",
    [
        {"norm": "rms_norm"},
        {"norm": {"type": "idmzoo-rmsnorm:rms_norm", "num_groups": 2}},
        {"upsample": {"type": "conv_transpose", "init": "bilinear"}},
        {"attention": {"type": "new_order_attention", "num_head_channels": 16}},
        {"norm": {"num_groups": 8}},  # no type: the default block, group_norm32, with these parameters
        {"num_res_blocks": [1, 2, 3], "overrides": [{"at": {"level": 1}, "attention": {"num_heads": 4}}]},
    ],
    ids=str,
)
def test_schema_accepts_what_the_validator_accepts(validator, change):
    spec = {**BASE, **change}
    idmzoo.load_spec(spec)
    assert validator.is_valid(spec)


def test_block_schema_follows_the_registry_it_is_given():
    registry = BlockRegistry(discover=False)

    class WidthParams(BlockParams):
        width: int = 3

    registry.register("norm", "only_norm", nn.GroupNorm, WidthParams, "the only one", package="somewhere")
    schema = block_schema("norm", registry)
    (definition,) = schema["$defs"].values()
    assert definition["required"] == ["type"]
    assert definition["properties"]["width"]["default"] == 3
    assert definition["description"] == "the only one (from somewhere)"
    assert set(schema["anyOf"][0]["discriminator"]["mapping"]) == {"only_norm", "somewhere:only_norm"}


def test_block_parameters_come_from_the_params_model():
    info = idmzoo.get_block("norm", "group_norm32")
    docs = {doc.name: doc for doc in block_parameters(info)}
    assert list(docs) == [name for name in info.params.model_fields if name != "type"]
    for name, field in info.params.model_fields.items():
        if name != "type":
            assert docs[name].default == json.dumps(field.default)
            assert docs[name].description == field.description
    assert docs["num_groups"].type == "integer > 0"


def test_required_parameters_have_no_default():
    class RequiredParams(BlockParams):
        depth: int

    registry = BlockRegistry(discover=False)
    info = registry.register("norm", "needs_depth", nn.GroupNorm, RequiredParams, "x", package="p")
    (doc,) = block_parameters(info)
    assert (doc.name, doc.type, doc.default) == ("depth", "integer", None)
