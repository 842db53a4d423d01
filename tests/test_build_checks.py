"""Build-time checks: a misbehaving plugin block is named at build time, not deep inside torch.

Each test registers a deliberately broken block under a throwaway package in the global
registry (where specs look names up) and removes it afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

import idmzoo
from idmzoo import BlockBuildError, BlockParams
from idmzoo.blocks.context import BlockContext
from idmzoo.layout import UNetLayout, unet_layout
from idmzoo.registry import REGISTRY
from idmzoo.shape_check import check_block_shapes, uses_plugin_blocks

SPECS = Path(__file__).parents[1] / "specs"
PACKAGE = "broken-blocks"
SPEC: dict[str, Any] = {
    "in_channels": 3,
    "model_channels": 8,
    "out_channels": 3,
    "num_res_blocks": 1,
    "attention_resolutions": [2],
    "channel_mult": [1, 2],
    "image_size": 16,
    "norm": {"type": "group_norm32", "num_groups": 4},
}


@pytest.fixture
def register() -> Iterator[Callable[..., None]]:
    """``register(kind, name, factory)``: a block of package ``broken-blocks``, removed after the test."""
    added: list[tuple[str, str]] = []

    def add(
        kind: str, name: str, factory: Callable[..., Any], params: type[BlockParams] = BlockParams
    ) -> None:
        REGISTRY.register(kind, name, factory, params, "a broken test block", package=PACKAGE)
        added.append((kind, name))

    yield add
    for kind, name in added:
        REGISTRY.unregister(kind, name)


class _Lambda(nn.Module):
    """A parameter-free block computing ``fn(x)``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@pytest.mark.parametrize(
    ("kind", "factory", "message"),
    [
        (
            "attention",
            lambda channels, ctx: _Lambda(lambda x: x[:, : x.shape[1] // 2]),
            r"attention block 'wrong' \(from package 'broken-blocks'\) at input_blocks\.3\.1 returned "
            r"\[2, 8, 8, 8\] for an input of \[2, 16, 8, 8\], but the layout expects \[2, 16, 8, 8\]",
        ),
        (
            "upsample",
            lambda channels, ctx: nn.Identity(),
            r"upsample block 'wrong' \(from package 'broken-blocks'\) at output_blocks\.1\.2 returned "
            r"\[2, 16, 8, 8\] for an input of \[2, 16, 8, 8\], but the layout expects \[2, 16, 16, 16\]",
        ),
        (
            "downsample",
            lambda channels, ctx: _Lambda(lambda x: (x, x)),
            r"downsample block 'wrong' .* at input_blocks\.2\.0 returned tuple",
        ),
        (
            "norm",
            lambda channels, **_: _Lambda(lambda x: x.mean(1, keepdim=True)),
            r"the norm inside the resblock block 'resblock' \(from package 'idmzoo'\) at "
            r"input_blocks\.1\.0 returned \[2, 1, 16, 16\] for an input of \[2, 8, 16, 16\], but the "
            r"layout expects \[2, 8, 16, 16\]",
        ),
    ],
    ids=["attention-drops-channels", "upsample-keeps-size", "downsample-returns-tuple", "norm-squashes"],
)
def test_block_with_the_wrong_output_is_named_with_its_path_and_shapes(register, kind, factory, message):
    register(kind, "wrong", factory)
    with pytest.raises(BlockBuildError, match=message):
        idmzoo.build({**SPEC, kind: "wrong"})


def test_pool_head_with_the_wrong_width_is_named(register):
    class WideHead(nn.Module):
        def __init__(self, channels: int, ctx: BlockContext) -> None:
            super().__init__()
            self.proj = nn.Linear(channels, ctx.out_channels + 1)

        def forward(self, h: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
            return self.proj(h.mean(dim=(2, 3)))

    register("pool", "too_wide", WideHead)
    spec = {**SPEC, "family": "encoder_unet", "out_channels": 5, "pool": "too_wide"}
    with pytest.raises(
        BlockBuildError,
        match=r"pool block 'too_wide' \(from package 'broken-blocks'\) at out returned \[2, 6\] for a "
        r"bottleneck of \[2, 16, 8, 8\], but the model's output is \[2, 5\]",
    ):
        idmzoo.build(spec)


def test_block_failing_on_the_meta_device_is_named_and_the_check_can_be_skipped(register):
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 0 if x.abs().max().item() > 1e6 else x  # needs real data

    register("attention", "data_dependent", lambda channels, ctx: DataDependent())
    spec = {**SPEC, "attention": "data_dependent"}
    with pytest.raises(
        BlockBuildError,
        match=r"attention block 'data_dependent' \(from package 'broken-blocks'\) at "
        r"input_blocks\.3\.1 raised RuntimeError on a dummy meta-device input of \[2, 16, 8, 8\]: .*"
        r"build with check_shapes=False",
    ):
        idmzoo.build(spec)
    model = idmzoo.build(spec, check_shapes=False)
    assert model(torch.randn(1, 3, 8, 8), torch.tensor([1.0])).shape == (1, 3, 8, 8)


class _UNetLaidOut(idmzoo.FamilyParams):
    """A plugin family laid out like the U-Net, so only its factory is at fault."""

    def layout(self, spec: Any) -> UNetLayout:
        return unet_layout(spec, in_channels=spec.in_channels)


def test_family_returning_a_plain_module_is_named(register):
    register("family", "plain", lambda spec: nn.Linear(2, 2), params=_UNetLaidOut)
    with pytest.raises(
        BlockBuildError,
        match=r"model family 'plain' \(from package 'broken-blocks'\) returned Linear, not an "
        r"idmzoo\.models\.base\.IdmzooModel",
    ):
        idmzoo.build({**SPEC, "family": "plain"})


def _raises(error: Exception) -> Callable[..., nn.Module]:
    def factory(*args: Any, **kwargs: Any) -> nn.Module:
        raise error

    return factory


@pytest.mark.parametrize(
    ("kind", "params", "error", "message"),
    [
        (
            "attention",
            BlockParams,
            ValueError("odd channel counts only"),
            r"attention block 'raising' \(from broken-blocks\) failed to build for 16 channels: "
            r"ValueError: odd channel counts only",
        ),
        (
            "family",
            _UNetLaidOut,
            RuntimeError("no GPU here"),
            r"model family 'raising' \(from package 'broken-blocks'\) failed to build: "
            r"RuntimeError: no GPU here",
        ),
    ],
)
def test_factory_raising_is_wrapped_naming_the_block_and_its_package(register, kind, params, error, message):
    register(kind, "raising", _raises(error), params=params)
    with pytest.raises(BlockBuildError, match=message) as caught:
        idmzoo.build({**SPEC, kind: "raising"})
    assert caught.value.__cause__ is error


def test_family_without_a_layout_is_rejected_at_validation_naming_it(register):
    register("family", "no_layout", lambda spec: nn.Linear(2, 2), params=idmzoo.FamilyParams)
    with pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**SPEC, "family": "no_layout"})
    [error] = caught.value.errors()
    assert error["loc"] == ("family",)
    assert error["msg"] == (
        "family block 'no_layout' (from package 'broken-blocks') failed in layout(): NotImplementedError"
    )


def test_block_check_crashing_is_reported_against_its_field(register):
    class Fragile(BlockParams):
        def check(self, channels: int, stage: str) -> None:
            raise ZeroDivisionError("division by zero")

    register("attention", "fragile", lambda channels, ctx: nn.Identity(), params=Fragile)
    with pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**SPEC, "attention": "fragile"})
    [error] = caught.value.errors()
    assert error["loc"] == ("attention",)
    assert error["msg"].startswith(
        "attention block 'fragile' (from package 'broken-blocks') failed in check(): "
        "ZeroDivisionError: division by zero (at input_blocks.3.1)"
    )


def test_shape_check_runs_by_default_only_for_specs_with_plugin_blocks(register, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(
        "idmzoo.builder.check_block_shapes", lambda model: calls.append(model.spec.attention.type)
    )
    register("attention", "plain_plugin", lambda channels, ctx: nn.Identity())
    idmzoo.build(SPEC)
    idmzoo.build({**SPEC, "attention": "plain_plugin"})
    idmzoo.build(SPEC, check_shapes=True)
    idmzoo.build({**SPEC, "attention": "plain_plugin"}, check_shapes=False)
    assert calls == ["plain_plugin", "legacy_attention"]
    assert not uses_plugin_blocks(idmzoo.load_spec(SPEC))


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.json")), ids=lambda path: path.stem)
def test_every_shipped_spec_passes_the_shape_check(path):
    check_block_shapes(idmzoo.build(path, device="meta"))


def test_shape_check_of_a_550m_parameter_model_allocates_no_weights():
    spec = idmzoo.spec_from_flags(
        "guided-diffusion",
        "--attention_resolutions 32,16,8 --class_cond True --image_size 256 --learn_sigma True "
        "--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
        "--use_scale_shift_norm True",
    )
    model = idmzoo.build(spec, device="meta")
    assert sum(p.numel() for p in model.parameters()) > 550_000_000
    check_block_shapes(model)  # its cost is measured by benchmarks/bench_build.py
    assert all(t.is_meta for t in model.state_dict().values())
