"""Every layer a block, at every place: overrides by level, stage and path; per-level depth;
activation, timestep and label embeddings chosen by name."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import ValidationError

import idmzoo
from idmzoo import BlockBuildError, BlockParams, Place, SiteCheckError
from idmzoo.blocks.attention import LegacyOrderAttention, SplitOrderAttention
from idmzoo.blocks.resample import Upsample
from idmzoo.registry import REGISTRY
from idmzoo.shape_check import uses_plugin_blocks
from tests.fixtures import TINY, TINY_ADM

#: The issue's example: three levels of 32, 64, 64 channels, attention at levels 1 and 2.
ISSUE = {
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 3,
    "num_res_blocks": [1, 2, 1],
    "channel_mult": [1, 2, 2],
    "attention_resolutions": [2, 4],
    "attention": {"type": "legacy_attention", "num_heads": 2},
    "overrides": [
        {"at": {"level": 2}, "attention": {"type": "new_order_attention", "num_head_channels": 16}},
        {"at": {"stage": "middle"}, "attention": {"num_heads": 8}},
        {"at": {"stage": "output", "level": 1}, "upsample": "nearest"},
    ],
}


def blocks_by_place(model: nn.Module) -> dict[tuple[str, int], Counter]:
    """``(stage, level)`` → Counter of (kind, module class, heads) of the blocks at the sites there."""
    found: dict[tuple[str, int], Counter] = {}
    for site in model.layout.sites():
        if site.kind == "stem":
            continue
        module = model.get_submodule(site.path)
        key = (site.kind, type(module).__name__, getattr(module, "num_heads", None))
        found.setdefault((site.stage, site.level), Counter())[key] += 1
    return found


def randomised(model: nn.Module) -> nn.Module:
    """Off the zero init, so every output and gradient depends on every block."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    return model


def train_step(model: nn.Module, spec: idmzoo.Spec) -> None:
    """One SGD step on a random batch: every parameter gets a finite gradient, and the loss falls."""
    randomised(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(2, spec.in_channels, 8, 8)
    kwargs = {"y": torch.tensor([0, 1])} if spec.num_classes else {}

    def loss() -> torch.Tensor:
        return model(x, torch.tensor([3.0, 40.0]), **kwargs).square().mean()

    first = loss()
    first.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    optimizer.step()
    with torch.no_grad():
        assert loss() < first


def test_the_issues_overrides_build_the_blocks_the_rules_say_and_train():
    spec = idmzoo.load_spec(ISSUE)
    model = idmzoo.build(spec, check_shapes=True)
    legacy, split = LegacyOrderAttention.__name__, SplitOrderAttention.__name__
    res, up, down = (
        ("resblock", "ResBlock", None),
        ("upsample", "Upsample", None),
        ("downsample", "Downsample", None),
    )
    assert blocks_by_place(model) == {
        ("input", 0): Counter({res: 1, down: 1}),
        ("input", 1): Counter({res: 2, ("attention", legacy, 2): 2, down: 1}),
        ("input", 2): Counter({res: 1, ("attention", split, 64 // 16): 1}),
        # num_head_channels=16 (kept from the level-2 override) fixes the head count over num_heads
        ("middle", 2): Counter({res: 2, ("attention", split, 64 // 16): 1}),
        ("output", 2): Counter({res: 2, ("attention", split, 4): 2, up: 1}),
        ("output", 1): Counter({res: 3, ("attention", legacy, 2): 3, up: 1}),
        ("output", 0): Counter({res: 2}),
    }
    # the upsampler reading level 2 keeps its conv; the one reading level 1 is the override's
    assert model.get_submodule("output_blocks.1.2").conv is not None
    assert isinstance(model.get_submodule("output_blocks.4.2"), Upsample)
    assert model.get_submodule("output_blocks.4.2").conv is None
    assert model.spec.block_at("attention", model.layout.middle_block[1]).num_heads == 8
    train_step(model, spec)


def test_a_partial_override_keeps_the_block_chosen_so_far():
    overrides = [
        *ISSUE["overrides"][:2],
        {"at": {"stage": "middle"}, "attention": {"num_head_channels": None}},
    ]
    model = idmzoo.build({**ISSUE, "overrides": overrides}, device="meta")
    middle = model.get_submodule("middle_block.1")
    assert type(middle) is SplitOrderAttention and middle.num_heads == 8
    output = idmzoo.build(
        {**TINY_ADM, "overrides": [{"at": {"stage": "output"}, "attention": {"num_head_channels": 32}}]}
    )
    for site in output.layout.sites():
        if site.kind == "attention":
            module = output.get_submodule(site.path)
            assert type(module) is SplitOrderAttention
            assert module.num_heads == (2 if site.stage == "output" else 4), site.path


def test_later_overrides_win_and_a_path_selects_a_group():
    overrides = [
        {"at": {"stage": "output"}, "upsample": "nearest"},
        {"at": {"path": "output_blocks.1"}, "upsample": {"type": "nearest_conv"}},
    ]
    assert idmzoo.build({**TINY, "overrides": overrides[:1]}).get_submodule("output_blocks.1.2").conv is None
    assert idmzoo.build({**TINY, "overrides": overrides}).get_submodule("output_blocks.1.2").conv is not None


def test_top_level_partial_blocks_change_the_default_block():
    spec = idmzoo.load_spec({**TINY, "norm": {"num_groups": 8}, "attention": {"num_heads": 4}})
    assert spec.norm.type == "group_norm32" and spec.norm.num_groups == 8
    assert spec.attention.type == "legacy_attention" and spec.attention.num_heads == 4


def test_zoo_spec_merges_partial_blocks_and_overrides():
    spec = idmzoo.zoo_spec(
        "adm_imagenet64_cond",
        attention={"num_heads": 8},
        overrides=[{"at": {"level": 3}, "resblock": {"skip_conv": True}}],
    )
    entry = idmzoo.zoo_spec("adm_imagenet64_cond")
    assert spec.attention == entry.attention.model_copy(update={"num_heads": 8})
    assert spec.resblock == entry.resblock and len(spec.overrides) == 1


@pytest.mark.parametrize(
    ("overrides", "loc", "message"),
    [
        (
            [{"at": {"level": 1}, "attention": {"num_head_channels": 24}}],
            ("overrides", 0, "attention", "num_head_channels"),
            r"num_head_channels=24 does not divide 64 channels \(at input_blocks.3.1\)",
        ),
        ([{"at": {"level": 5}, "norm": "group_norm32"}], ("overrides", 0, "at"), "has 3 levels"),
        (
            [{"at": {"level": [0, 3]}, "norm": "group_norm32"}],
            ("overrides", 0, "at"),
            "level 3 is not a level",
        ),
        ([{"at": {"stage": "bottom"}, "norm": "group_norm32"}], ("overrides", 0, "at", "stage"), "input"),
        ([{"at": {"path": "decoder.*"}, "norm": "group_norm32"}], ("overrides", 0, "at"), "no block's path"),
        ([{"at": {}, "norm": "group_norm32"}], ("overrides", 0, "at"), "at least one of level, stage, path"),
        (
            [{"at": {"level": 0}, "attention": {"num_heads": 2}}],
            ("overrides", 0, "attention"),
            "no attention",
        ),
        ([{"at": {"level": 0}}], ("overrides", 0), "names no block"),
        ([{"at": {"level": 0}, "pool": "adaptive"}], ("overrides", 0, "pool"), "model-wide"),
        (
            [{"at": {"level": 0}, "atention": "nearest"}],
            ("overrides", 0, "atention"),
            "Did you mean 'attention'",
        ),
        (
            [{"at": {"level": 1}, "attention": {"num_head": 2}}],
            ("overrides", 0, "attention", "num_head"),
            "Extra",
        ),
        (
            [{"at": {"level": 1}, "attention": "flash"}],
            ("overrides", 0, "attention", "type"),
            "unknown attention",
        ),
        (
            [{"at": {"stage": "output"}, "norm": {"num_groups": 5}}],
            ("overrides", 0, "norm", "num_groups"),
            r"does not divide .* inside the block at output_blocks",
        ),
        (
            [{"at": {"level": 1}, "attention": {"type": "new_order_attention", "num_heads": 3}}],
            ("overrides", 0, "attention", "num_heads"),
            r"num_heads=3 does not divide 64",
        ),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, list) else None,
)
def test_bad_overrides_fail_at_validation_with_their_json_path(overrides, loc, message):
    with pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**ISSUE, "overrides": overrides})
    errors = {tuple(e["loc"]): e["msg"] for e in caught.value.errors()}
    assert loc in errors, errors
    assert re.search(message, errors[loc]), errors[loc]


def test_an_error_is_reported_at_whichever_field_chose_the_parameter():
    spec = {**ISSUE, "attention": {"type": "legacy_attention", "num_heads": 3}}  # 3 divides neither 32 nor 64
    overrides = [{"at": {"level": 1}, "attention": {"num_heads": 4}}]
    with pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**spec, "overrides": overrides})
    assert [e["loc"] for e in caught.value.errors()] == [("attention", "num_heads")]
    assert "(at output_blocks.0.1)" not in caught.value.errors()[0]["msg"]  # level 2 took new_order


def test_num_res_blocks_per_level_and_its_length_is_checked():
    layout = idmzoo.load_spec(ISSUE).layout()
    encoder = Counter(s.level for s in layout.sites() if s.kind == "resblock" and s.stage == "input")
    decoder = Counter(s.level for s in layout.sites() if s.kind == "resblock" and s.stage == "output")
    assert encoder == {0: 1, 1: 2, 2: 1} and decoder == {0: 2, 1: 3, 2: 2}
    with pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**ISSUE, "num_res_blocks": [1, 2]})
    assert [e["loc"] for e in caught.value.errors()] == [("num_res_blocks",)]


# -- activation, time and label embeddings ---------------------------------------------------


def test_another_activation_leaves_no_silu_and_the_same_state_dict_keys():
    silu = idmzoo.build(TINY_ADM)
    gelu = idmzoo.build({**TINY_ADM, "activation": "gelu"})
    assert not any(isinstance(m, nn.SiLU) for m in gelu.modules())
    assert sum(isinstance(m, nn.GELU) for m in gelu.modules()) == sum(
        isinstance(m, nn.SiLU) for m in silu.modules()
    )
    assert list(gelu.state_dict()) == list(silu.state_dict())
    encoder = idmzoo.build("specs/adm_encoder_spatial_v2.json", device="meta").spec.model_dump()
    assert not any(isinstance(m, nn.SiLU) for m in idmzoo.build({**encoder, "activation": "gelu"}).modules())


def test_activation_by_place():
    model = idmzoo.build({**TINY, "overrides": [{"at": {"level": 0}, "activation": {"type": "gelu"}}]})
    for site in model.layout.sites():
        if site.kind == "resblock":
            acts = {
                type(m)
                for m in model.get_submodule(site.path).modules()
                if getattr(m, "idmzoo_kind", "") == "activation"
            }
            assert acts == ({nn.GELU} if site.level == 0 else {nn.SiLU}), site.path
    assert isinstance(model.out[1], nn.GELU) and isinstance(model.time_embed[1], nn.SiLU)


def test_fourier_time_embedding_keeps_the_mlp_keys_and_saves_its_frequencies():
    model = idmzoo.build({**TINY, "time_embed": {"type": "fourier", "scale": 4.0}}, seed=0)
    keys = {k for k in model.state_dict() if k.startswith("time_embed.")}
    assert keys == {
        "time_embed.0.weight",
        "time_embed.0.bias",
        "time_embed.2.weight",
        "time_embed.2.bias",
        "time_embed.frequencies",
    }
    assert model.time_embed.frequencies.shape == (TINY["model_channels"] // 2,)
    emb = model.embed(torch.tensor([0.0, 0.5]))
    assert emb.shape == (2, 4 * TINY["model_channels"]) and not torch.equal(emb[0], emb[1])
    twin = idmzoo.build({**TINY, "time_embed": {"type": "fourier", "scale": 4.0}}, seed=1)
    twin.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(twin.embed(torch.tensor([0.5])), model.embed(torch.tensor([0.5])))


def test_cfg_label_embedding_has_a_no_label_entry():
    spec = {**TINY_ADM, "label_embed": "cfg_embedding"}
    model = randomised(idmzoo.build(spec)).eval()
    assert model.label_emb.weight.shape == (TINY_ADM["num_classes"] + 1, 4 * TINY["model_channels"])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model(x, t, y=torch.tensor([-1, -1])))
        assert not torch.allclose(model(x, t), model(x, t, y=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match=r"needs labels y of shape \[2\]"):
        idmzoo.build(TINY_ADM)(x, t)
    with pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**TINY, "label_embed": "cfg_embedding"})
    assert [e["loc"] for e in caught.value.errors()] == [("label_embed",)]


# -- plugin blocks placed by override ---------------------------------------------------------


class EvenOnly(BlockParams):
    def check(self, place: Place) -> None:
        if place.level != 1:
            raise SiteCheckError(None, f"only for level 1, not {place.level}")


class Bilinear(nn.Module):
    def __init__(self, channels: int, ctx: idmzoo.BlockContext) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear")


class Shrinks(Bilinear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture
def plugin_upsamplers() -> Iterator[None]:
    idmzoo.register_block(
        "upsample", "test_bilinear", Bilinear, params=EvenOnly, description="t", package="p"
    )
    idmzoo.register_block("upsample", "test_identity", Shrinks, description="t", package="p")
    yield
    REGISTRY.unregister("upsample", "test_bilinear")
    REGISTRY.unregister("upsample", "test_identity")


def test_a_plugin_block_can_be_placed_by_override(plugin_upsamplers):
    spec = idmzoo.load_spec({**ISSUE, "overrides": [{"at": {"level": 1}, "upsample": "test_bilinear"}]})
    assert uses_plugin_blocks(spec)  # so the build checks shapes
    model = idmzoo.build(spec)
    assert isinstance(model.get_submodule("output_blocks.4.2"), Bilinear)
    assert model.get_submodule("output_blocks.4.2").idmzoo_block == "p:test_bilinear"
    with pytest.raises(ValidationError) as caught:  # its own check runs where it lands
        idmzoo.load_spec({**ISSUE, "overrides": [{"at": {"stage": "output"}, "upsample": "test_bilinear"}]})
    assert [e["loc"] for e in caught.value.errors()] == [("overrides", 0, "upsample")]
    assert "only for level 1, not 2 (at output_blocks.1.2)" in caught.value.errors()[0]["msg"]
    bad = {**ISSUE, "overrides": [{"at": {"path": "output_blocks.4.*"}, "upsample": "test_identity"}]}
    with pytest.raises(
        BlockBuildError, match=r"upsample block 'test_identity' \(from package 'p'\) at output_blocks.4.2"
    ):
        idmzoo.build(bad)


# -- what the summary, the schema and the diffusers export say ----------------------------------


def test_the_summary_shows_the_blocks_chosen_at_each_level_and_stage():
    summary = idmzoo.summarize(idmzoo.build({**ISSUE, "activation": "silu"}, device="meta"))
    places = {(p.stage, p.level): {(k, n): c for k, n, c in p.blocks} for p in summary.places}
    assert places[("middle", 2)][("attention", "new_order_attention(num_heads=8, num_head_channels=16)")] == 1
    assert places[("output", 1)][("upsample", "nearest")] == 1
    assert places[("output", 2)][("upsample", "nearest_conv")] == 1
    assert places[("input", 1)][("attention", "legacy_attention")] == 2
    text = str(summary)
    assert "blocks by stage and level" in text
    assert summary.to_dict()["places"][0] == {
        "stage": "input",
        "level": 0,
        "blocks": [
            {"kind": "resblock", "name": "resblock", "count": 1},
            {"kind": "downsample", "name": "strided_conv", "count": 1},
        ],
    }


def test_cli_build_prints_the_blocks_by_stage_and_level(tmp_path, capsys):
    from idmzoo.cli import main

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(ISSUE))
    assert main(["build", str(path), "--device", "meta"]) == 0
    out = capsys.readouterr().out
    assert "blocks by stage and level" in out
    assert any(line.split()[:2] == ["output", "1"] and "nearest x1" in line for line in out.splitlines())


def test_the_schema_describes_overrides():
    schema = idmzoo.spec_schema()
    override = schema["$defs"]["Override"]
    assert set(override["properties"]) == {
        "at",
        "norm",
        "activation",
        "resblock",
        "attention",
        "upsample",
        "downsample",
    }
    attention = override["properties"]["attention"]["anyOf"]
    assert attention[0]["discriminator"]["propertyName"] == "type"
    assert any(option.get("not") == {"required": ["type"]} for option in attention)  # the partial form
    assert schema["$defs"]["At"]["properties"]["stage"]["anyOf"][0]["enum"] == [
        "input",
        "middle",
        "output",
        "head",
    ]


def test_the_diffusers_export_refuses_what_it_cannot_express():
    from idmzoo.diffusers_interop import diffusers_config
    from idmzoo.errors import DiffusersConversionError

    base = {**TINY, "attention": {"type": "legacy_attention", "num_heads": 1}}
    diffusers_config(idmzoo.load_spec(base))
    for change, field in [
        ({"overrides": [{"at": {"level": 1}, "upsample": "nearest"}]}, "overrides"),
        ({"num_res_blocks": [1, 2]}, "num_res_blocks"),
        ({"activation": "gelu"}, "activation"),
        ({"time_embed": "fourier"}, "time_embed"),
    ]:
        with pytest.raises(DiffusersConversionError) as caught:
            diffusers_config(idmzoo.load_spec({**base, **change}))
        assert caught.value.field == field
