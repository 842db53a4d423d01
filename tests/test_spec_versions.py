"""Specs that keep loading: spec_version, migrating version-1 files, refusing newer ones, renamed blocks."""

from __future__ import annotations

import json
import warnings

import pytest
import torch.nn as nn

import idmzoo
from idmzoo import BlockParams, DuplicateBlockError, IdmzooDeprecationWarning, SpecVersionError
from idmzoo.registry import REGISTRY, BlockRegistry
from tests.fixtures import FIXTURES, TINY

#: A spec as idmzoo 0.1 wrote it: no spec_version (kept as it was; never regenerate it).
VERSION_1 = FIXTURES / "specs" / "spec_version_1.json"


def test_a_version_1_file_without_spec_version_is_migrated_and_loads():
    data = json.loads(VERSION_1.read_text())
    assert "spec_version" not in data
    spec = idmzoo.load_spec(VERSION_1)
    assert spec.model_dump(mode="json") == data  # version 2 changed no field


def test_saved_specs_carry_the_current_spec_version_and_load_back(tmp_path):
    spec = idmzoo.load_spec(VERSION_1)
    path = spec.save(tmp_path / "spec.json")
    saved = json.loads(path.read_text())
    assert saved["spec_version"] == idmzoo.SPEC_VERSION == 2 and next(iter(saved)) == "spec_version"
    assert idmzoo.load_spec(path) == spec
    assert idmzoo.load_spec(spec.to_json()) == spec
    assert idmzoo.Spec.model_validate(json.loads(spec.to_json())) == spec  # any way into the model migrates


def test_load_spec_reads_json_text():
    assert idmzoo.load_spec("  \n" + json.dumps(TINY)) == idmzoo.load_spec(TINY)
    with pytest.raises(idmzoo.IdmzooError, match="spec text is not valid JSON"):
        idmzoo.load_spec('{"in_channels": ')


def test_a_newer_spec_version_is_refused_with_what_to_do(tmp_path):
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"spec_version": 3, **TINY}))
    with pytest.raises(
        SpecVersionError, match="spec_version 3, written by a newer idmzoo.*pip install --upgrade idmzoo"
    ):
        idmzoo.load_spec(newer)
    for bad in ("2", 0, True):
        with pytest.raises(SpecVersionError, match="must be a positive integer"):
            idmzoo.load_spec({"spec_version": bad, **TINY})


def test_the_cli_refuses_a_newer_spec_in_one_line(tmp_path):
    from tests.cli_runner import run_idmzoo

    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"spec_version": 3, **TINY}))
    result = run_idmzoo("validate", newer)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "spec_version 3" in result.stderr


# -- renamed blocks keep resolving --------------------------------------------------------------


@pytest.fixture
def renamed_norm():
    REGISTRY.ensure_discovered()
    idmzoo.register_block(
        "norm",
        "renamed_norm",
        nn.GroupNorm,
        params=BlockParams,
        description="t",
        package="idmzoo-fake-r",
        aliases=("old_norm",),
    )
    yield
    REGISTRY.unregister("norm", "renamed_norm")


def test_a_deprecated_alias_resolves_with_a_warning_naming_the_new_name(renamed_norm):
    with pytest.warns(
        IdmzooDeprecationWarning,
        match="'old_norm' is a deprecated name of 'renamed_norm'.*write 'renamed_norm'",
    ):
        spec = idmzoo.load_spec({**TINY, "norm": {"type": "old_norm"}})
    assert spec.norm.type == "renamed_norm"  # saved again under its new name
    assert json.loads(spec.to_json())["norm"]["type"] == "renamed_norm"
    with pytest.warns(IdmzooDeprecationWarning):
        assert idmzoo.get_block("norm", "idmzoo-fake-r:old_norm").name == "renamed_norm"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idmzoo.load_spec({**TINY, "norm": "renamed_norm"})  # the new name: no warning


def test_an_alias_cannot_take_another_blocks_name_or_alias(renamed_norm):
    registry = BlockRegistry(discover=False)
    registry.register("norm", "a", nn.Identity, BlockParams, "d", aliases=("old_a",))
    for alias in ("a", "old_a"):
        with pytest.raises(DuplicateBlockError, match=f"alias '{alias}'"):
            registry.register("norm", "b", nn.Identity, BlockParams, "d", aliases=(alias,))
    with pytest.raises(idmzoo.InvalidBlockError, match="alias"):
        registry.register("norm", "c", nn.Identity, BlockParams, "d", aliases=("x:y",))
    assert registry.names("norm") == ["a"]  # nothing half-registered
