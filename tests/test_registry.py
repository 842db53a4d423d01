"""Registry integrity: registration, lookup, rollback and concurrency of :class:`BlockRegistry`.

Most tests use a fresh ``BlockRegistry(discover=False)`` so nothing leaks into the global
registry; the few that need the global one (because specs resolve against it) remove
what they add.  Entry-point loading itself is covered by ``test_plugins.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch.nn as nn
from pydantic import BaseModel, Field, ImportString, PositiveInt, ValidationError

import idmzoo
from idmzoo import BlockParams, DuplicateBlockError, IdmzooPluginWarning, InvalidBlockError, UnknownBlockError
from idmzoo.registry import REGISTRY, BlockRegistry
from idmzoo.registry.discovery import PluginFailure


class WidthParams(BlockParams):
    """A block parameter model with one field."""

    width: PositiveInt = Field(4, description="A width.")


def fresh(**blocks: str) -> BlockRegistry:
    """A registry without discovery holding ``name=package`` identity norms."""
    registry = BlockRegistry(discover=False)
    for name, package in blocks.items():
        registry.register("norm", name, nn.Identity, BlockParams, "an identity norm", package=package)
    return registry


# -- registering ---------------------------------------------------------------------------


def test_registered_block_is_found_by_name_and_by_qualified_name():
    registry = fresh(group_norm32="idmzoo")
    info = registry.get("norm", "group_norm32")
    assert (info.kind, info.name, info.package, info.qualified_name) == (
        "norm",
        "group_norm32",
        "idmzoo",
        "idmzoo:group_norm32",
    )
    assert registry.get("norm", "idmzoo:group_norm32") is info


def test_qualified_name_with_another_package_is_unknown():
    registry = fresh(group_norm32="idmzoo")
    with pytest.raises(
        UnknownBlockError, match=r"unknown norm block 'other:group_norm32'\. Did you mean 'group_norm32'\?"
    ):
        registry.get("norm", "other:group_norm32")


def test_registration_fixes_the_type_of_the_params_model():
    registry = BlockRegistry(discover=False)
    info = registry.register("norm", "wide", nn.Identity, WidthParams, "a norm", package="pkg")
    assert info.params(type="pkg:wide", width=8).width == 8
    with pytest.raises(ValidationError, match="type"):
        info.params(type="narrow")
    assert issubclass(info.params, WidthParams)


def test_registering_a_taken_name_names_both_packages():
    registry = fresh(shared="first-dist")
    with pytest.raises(
        DuplicateBlockError,
        match=r"norm block 'shared' is registered twice: by 'first-dist' and by 'second-dist'\. "
        r"Rename one of them, or pass override=True to replace first-dist's on purpose\.",
    ):
        registry.register("norm", "shared", nn.Identity, BlockParams, "again", package="second-dist")
    assert registry.get("norm", "shared").package == "first-dist"


def test_re_registering_from_the_same_package_is_also_refused():
    registry = fresh(twice="pkg")
    with pytest.raises(DuplicateBlockError, match="by 'pkg' and by 'pkg'"):
        registry.register("norm", "twice", nn.Identity, BlockParams, "again", package="pkg")


def test_override_replaces_and_unregister_removes():
    registry = fresh(swap="first")
    with pytest.warns(
        IdmzooPluginWarning, match="'swap' of 'second' .override=True. replaces the one of 'first'"
    ):
        replacement = registry.register(
            "norm", "swap", nn.GroupNorm, BlockParams, "a replacement", package="second", override=True
        )
    assert registry.get("norm", "swap") is replacement
    assert registry.unregister("norm", "swap") is replacement
    with pytest.raises(UnknownBlockError, match="unknown norm block 'swap'"):
        registry.get("norm", "swap")
    with pytest.raises(UnknownBlockError, match="no norm block named 'swap' to unregister"):
        registry.unregister("norm", "swap")


@pytest.mark.parametrize(
    ("kind", "name", "factory", "params", "description", "message"),
    [
        (
            "normalisation",
            "x",
            nn.Identity,
            BlockParams,
            "d",
            r"kind must be one of family, norm, .* but got 'normalisation'",
        ),
        (
            "norm",
            "",
            nn.Identity,
            BlockParams,
            "d",
            r"norm block name must be a non-empty string without ':'",
        ),
        (
            "norm",
            "pkg:x",
            nn.Identity,
            BlockParams,
            "d",
            r"without ':' or surrounding spaces, but got 'pkg:x'",
        ),
        ("norm", " x", nn.Identity, BlockParams, "d", r"but got ' x'"),
        ("norm", 3, nn.Identity, BlockParams, "d", r"but got 3"),
        (
            "norm",
            "x",
            "nn.Identity",
            BlockParams,
            "d",
            r"norm block 'x': factory must be callable, but got str",
        ),
        (
            "norm",
            "x",
            nn.Identity,
            BaseModel,
            "d",
            r"params must be a subclass of idmzoo.BlockParams, but got <class 'pydantic.main.BaseModel'>",
        ),
        (
            "norm",
            "x",
            nn.Identity,
            WidthParams(type="x"),
            "d",
            r"params must be a subclass of idmzoo.BlockParams",
        ),
        (
            "norm",
            "x",
            nn.Identity,
            BlockParams,
            "  ",
            r"norm block 'x': description must be a non-empty string",
        ),
    ],
)
def test_invalid_registrations_are_refused_and_leave_nothing(
    kind, name, factory, params, description, message
):
    registry = BlockRegistry(discover=False)
    with pytest.raises(InvalidBlockError, match=message):
        registry.register(kind, name, factory, params, description, package="pkg")
    assert registry.list() == []


class ImportingParams(BlockParams):
    """Would import whatever a spec names."""

    target: ImportString = Field("math", description="A dotted path.")


class CallingParams(BlockParams):
    """Would accept a callable (nothing a JSON spec can hold, but Python callers could pass one)."""

    hooks: list[Callable[[int], int]] = Field(default_factory=list, description="Callables.")


@pytest.mark.parametrize(("params", "field"), [(ImportingParams, "target"), (CallingParams, "hooks")])
def test_params_that_would_import_or_call_are_refused(params, field):
    registry = BlockRegistry(discover=False)
    with pytest.raises(
        InvalidBlockError,
        match=rf"norm block 'x': params field\(s\) {field} would import or call what a spec names",
    ):
        registry.register("norm", "x", nn.Identity, params, "d", package="pkg")


# -- lookup --------------------------------------------------------------------------------


def test_unknown_name_ranks_close_names_and_lists_the_rest():
    registry = fresh(group_norm32="idmzoo", group_norm16="idmzoo", layer_norm="idmzoo", rms_norm="p")
    with pytest.raises(
        UnknownBlockError,
        match=r"^unknown norm block 'group_nrom32'\. Did you mean 'group_norm32' or 'group_norm16'"
        r".*\? Registered norm blocks: group_norm16, group_norm32, layer_norm, rms_norm\.$",
    ):
        registry.get("norm", "group_nrom32")


def test_unknown_name_mentions_plugins_that_failed_to_load():
    registry = fresh(group_norm32="idmzoo")
    registry.failed_plugins.append(
        PluginFailure("idmzoo-fancy", "fancy = fancy:register", "ImportError: no module named fancy_cuda")
    )
    with pytest.raises(
        UnknownBlockError,
        match=r"Note: plugin 'idmzoo-fancy' failed to load \(ImportError: no module named fancy_cuda\)\.",
    ):
        registry.get("norm", "fancy_norm")


@pytest.mark.parametrize(
    "call", [lambda r: r.get("norms", "x"), lambda r: r.list("norms"), lambda r: r.unregister("norms", "x")]
)
def test_unknown_kind_is_named_with_the_valid_ones(call):
    with pytest.raises(
        UnknownBlockError,
        match=r"unknown block kind 'norms'; valid kinds: family, norm, activation, resblock",
    ):
        call(BlockRegistry(discover=False))


def test_non_string_name_is_refused_with_its_type():
    with pytest.raises(UnknownBlockError, match="norm block name must be a string, but got int"):
        fresh(x="p").get("norm", 3)


def test_list_filters_by_kind_and_pattern_and_sorts():
    registry = fresh(b_norm="p", a_norm="q", other="p")
    registry.register("attention", "a_attention", nn.Identity, BlockParams, "d", package="p")
    assert [i.name for i in registry.list()] == ["a_norm", "b_norm", "other", "a_attention"]
    assert [i.name for i in registry.list("norm", "*_norm")] == ["a_norm", "b_norm"]
    assert [i.name for i in registry.list(pattern="q:*")] == ["a_norm"]


# -- integrity under change ----------------------------------------------------------------


def test_registering_while_iterating_over_the_listing_is_safe():
    registry = fresh(a="p", b="p", c="p")
    seen = []
    for info in registry.list("norm"):
        seen.append(info.name)
        registry.register("norm", f"{info.name}_copy", nn.Identity, BlockParams, "d", package="p")
        registry.unregister("norm", info.name)
    assert seen == ["a", "b", "c"]
    assert registry.names("norm") == ["a_copy", "b_copy", "c_copy"]


def test_global_listing_survives_registration_during_iteration():
    added = []
    try:
        for info in idmzoo.list_blocks("norm"):
            name = f"test_copy_of_{info.name}"
            idmzoo.register_block(
                "norm", name, info.factory, params=BlockParams, description="d", package="t"
            )
            added.append(name)
        assert set(added) <= set(REGISTRY.names("norm"))
    finally:
        for name in added:
            REGISTRY.unregister("norm", name)


def test_failed_loading_removes_its_blocks_and_restores_what_it_overrode():
    registry = fresh(kept="idmzoo", replaced="idmzoo")
    original = registry.get("norm", "replaced")
    with pytest.raises(ImportError, match="plugin raised at import"):
        with registry.loading("broken-plugin"):
            added = registry.register("norm", "new", nn.Identity, BlockParams, "d")
            with pytest.warns(IdmzooPluginWarning, match="replaces the one of 'idmzoo'"):
                registry.register("norm", "replaced", nn.Identity, BlockParams, "d", override=True)
            assert added.package == "broken-plugin"
            raise ImportError("plugin raised at import")
    assert registry.names("norm") == ["kept", "replaced"]
    assert registry.get("norm", "replaced") is original


def test_successful_loading_keeps_its_blocks_under_its_package():
    registry = BlockRegistry(discover=False)
    with registry.loading("good-plugin"):
        idmzoo.register_block("norm", "good", nn.Identity, params=BlockParams, description="d")
    assert registry.get("norm", "good-plugin:good").package == "good-plugin"
    with pytest.raises(UnknownBlockError):
        REGISTRY.get("norm", "good")  # register_block went to the registry being loaded


def test_concurrent_registrations_all_land_and_a_contested_name_goes_to_exactly_one():
    registry = BlockRegistry(discover=False)
    outcomes: list[str] = []
    start = threading.Barrier(16)

    def register(i: int) -> None:
        start.wait()
        registry.register("norm", f"own_{i}", nn.Identity, BlockParams, "d", package=f"p{i}")
        try:
            registry.register("norm", "contested", nn.Identity, BlockParams, "d", package=f"p{i}")
            outcomes.append("won")
        except DuplicateBlockError:
            outcomes.append("refused")

    threads = [threading.Thread(target=register, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 15 + ["won"]
    assert len(registry.names("norm")) == 17


def test_lookups_from_other_threads_wait_for_plugin_discovery(monkeypatch):
    loading, release = threading.Event(), threading.Event()

    def slow_plugins(registry: BlockRegistry) -> None:
        loading.set()
        release.wait(timeout=10)
        registry.register("norm", "late", nn.Identity, BlockParams, "d", package="slow-plugin")

    monkeypatch.setattr(BlockRegistry, "_load_plugins", slow_plugins)
    registry = BlockRegistry()
    found: dict[str, Any] = {}
    first = threading.Thread(target=lambda: found.setdefault("first", registry.get("norm", "late")))
    first.start()
    assert loading.wait(timeout=10)

    def second_lookup() -> None:
        try:
            found["second"] = registry.get("norm", "late")
        except UnknownBlockError as err:
            found["second"] = err

    second = threading.Thread(target=second_lookup)
    second.start()
    second.join(timeout=0.2)  # it must be waiting for discovery, not answering already
    release.set()
    first.join()
    second.join()
    assert found["first"] is found["second"]


# -- the global registry and specs -----------------------------------------------------------


def test_spec_validation_follows_override_and_unregister():
    base = {
        "in_channels": 1,
        "model_channels": 8,
        "out_channels": 1,
        "num_res_blocks": 1,
        "channel_mult": [1],
    }
    spec = {**base, "norm": {"type": "test_width_norm", "width": 2}}
    REGISTRY.register("norm", "test_width_norm", nn.Identity, BlockParams, "no params", package="t")
    try:
        with pytest.raises(ValidationError, match=r"norm\.width\n  Extra inputs are not permitted"):
            idmzoo.load_spec(spec)
        REGISTRY.register(
            "norm", "test_width_norm", nn.Identity, WidthParams, "a width", package="t", override=True
        )
        assert idmzoo.load_spec(spec).norm.width == 2
    finally:
        REGISTRY.unregister("norm", "test_width_norm")
    with pytest.raises(ValidationError, match=r"norm\.type\n  unknown norm block 'test_width_norm'"):
        idmzoo.load_spec(spec)
