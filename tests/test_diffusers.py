"""diffusers interop: exports compute the same function, imports invert them, the rest is refused by field.

diffusers is a test dependency here (the CI installs ``idmzoo[diffusers]``): a missing
diffusers fails these tests instead of skipping them.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any

import diffusers
import pytest
import torch

import idmzoo
from idmzoo.diffusers_interop import (
    diffusers_config,
    from_diffusers,
    spec_from_diffusers_config,
    to_diffusers,
)
from idmzoo.errors import DiffusersConversionError

TOL = 1e-4
BASE = dict(
    image_size=16,
    in_channels=3,
    model_channels=32,
    out_channels=3,
    num_res_blocks=1,
    attention_resolutions=(2,),
    channel_mult=(1, 2),
)


def adm(**kwargs: Any) -> idmzoo.Spec:
    return idmzoo.spec_from_reference("guided-diffusion", "UNetModel", {**BASE, **kwargs})


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (the zero-initialised convs would hide mapping bugs), norms near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            is_norm_scale = (
                p.dim() == 1 and name.endswith("weight") and "norm" in name or ".in_layers.0." in name
            )
            p.copy_(1 + 0.2 * noise if is_norm_scale else 0.2 * noise)
    return module.eval()


def inputs(spec: idmzoo.Spec, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, spec.in_channels, 16, 16, generator=generator)
    t = torch.tensor([3.0, 811.5])
    y = None if spec.num_classes is None else torch.tensor([1, spec.num_classes - 1])
    return x, t, y


# The whole product of the six two-valued flags: each export takes ~0.1 s on one core.
FLAGS = (
    "use_new_attention_order",
    "use_scale_shift_norm",
    "resblock_updown",
    "class_cond",
    "learn_sigma",
    "heads",
)
GRID = list(itertools.product((0, 1), repeat=len(FLAGS)))


def grid_spec(row: tuple[int, ...]) -> idmzoo.Spec:
    new, scale_shift, updown, class_cond, learn_sigma, heads = map(bool, row)
    return adm(
        use_new_attention_order=new,
        use_scale_shift_norm=scale_shift,
        resblock_updown=updown,
        num_classes=5 if class_cond else None,
        out_channels=6 if learn_sigma else 3,
        # 16-channel heads: 2 heads at 32 channels, 4 at 64 (legacy order regrouped per head)
        num_head_channels=16 if heads else -1,
    )


def roundtrip(spec: idmzoo.Spec, seed: int = 0) -> tuple[float, float]:
    """(|idmzoo - diffusers|, |idmzoo - from_diffusers(diffusers)|), max over a random batch."""
    model = randomized(idmzoo.build(spec), seed)
    unet = to_diffusers(model)
    assert isinstance(unet, diffusers.UNet2DModel)
    assert not unet.training
    x, t, y = inputs(spec)
    attention = "legacy_attention" if spec.attention.type == "legacy_attention" else "new_order_attention"
    back = from_diffusers(unet, attention=attention)
    # the same spec, but for how the heads are written (num_heads=4 may come back as num_head_channels=16)
    assert back.spec.model_dump(exclude={"attention"}) == spec.model_dump(exclude={"attention"})
    assert back.spec.attention.type == spec.attention.type
    assert back.state_dict().keys() == model.state_dict().keys()
    with torch.no_grad():
        expected = model(x, t, y)
        exported = unet(x, t, class_labels=y).sample
        imported = back(x, t, y)
    assert expected.shape == exported.shape == (2, spec.out_channels, 16, 16)
    assert expected.abs().max() > 0.1  # the random weights make a non-trivial output
    return (exported - expected).abs().max().item(), (imported - expected).abs().max().item()


@pytest.mark.parametrize("row", GRID, ids=lambda row: "".join(map(str, row)))
def test_grid_export_and_import_are_exact(row: tuple[int, ...]) -> None:
    spec = grid_spec(row)
    config = diffusers_config(spec)
    assert config["resnet_time_scale_shift"] == ("scale_shift" if row[1] else "default")
    assert config["downsample_type"] == config["upsample_type"] == ("resnet" if row[2] else "conv")
    assert config["num_class_embeds"] == (5 if row[3] else None)
    assert config["attention_head_dim"] == (16 if row[5] else None)
    exported, imported = roundtrip(spec)
    assert exported < TOL
    assert imported < TOL


@pytest.mark.parametrize(
    "kwargs",
    [
        # four heads whose width is the same everywhere they attend: attention_head_dim = 64 / 4
        dict(num_heads=4),
        # three levels, two blocks each, attention at full resolution and the bottleneck level,
        # a fractional multiplier past the first level, resblock resampling, scale-shift
        dict(
            model_channels=64,
            channel_mult=(1, 1.5, 2),
            num_res_blocks=2,
            attention_resolutions=(1, 4),
            num_head_channels=32,
            resblock_updown=True,
            use_scale_shift_norm=True,
        ),
        # no attention outside the bottleneck, three levels, dropout (inactive in eval)
        dict(channel_mult=(1, 2, 2), attention_resolutions=(), dropout=0.1),
    ],
    ids=["num_heads_uniform_width", "three_levels_fractional", "no_attention_levels"],
)
def test_other_expressible_configurations(kwargs: dict[str, Any]) -> None:
    exported, imported = roundtrip(adm(**kwargs))
    assert exported < TOL and imported < TOL


def test_norm_parameters_and_mixed_resampling_export() -> None:
    spec = idmzoo.Spec.model_validate(
        {
            **adm(num_head_channels=16).model_dump(),
            "norm": {"type": "group_norm32", "num_groups": 16, "eps": 1e-6},
            "downsample": {"type": "resblock_down"},
        }
    )
    config = diffusers_config(spec)
    assert (config["norm_num_groups"], config["norm_eps"]) == (16, 1e-6)
    assert (config["downsample_type"], config["upsample_type"]) == ("resnet", "conv")
    exported, imported = roundtrip(spec)
    assert exported < TOL and imported < TOL


def refused(spec: idmzoo.Spec | dict[str, Any]) -> DiffusersConversionError:
    spec = spec if isinstance(spec, idmzoo.Spec) else idmzoo.Spec.model_validate(spec)
    with pytest.raises(DiffusersConversionError) as info:
        to_diffusers(idmzoo.build(spec, device="meta"))
    return info.value


def with_block(kind: str, block: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**adm().model_dump(), kind: block, **fields}


@pytest.mark.parametrize(
    ("spec", "field", "why"),
    [
        (lambda: adm(num_heads=4, attention_resolutions=(1, 2)), "attention.num_heads", "one head width"),
        (lambda: adm(num_heads=4, num_heads_upsample=2), "attention.num_heads_upsample", "one head width"),
        (lambda: adm(conv_resample=False), "upsample.type", "3x3 conv"),
        (lambda: with_block("downsample", {"type": "avg_pool"}), "downsample.type", "average-pool"),
        (lambda: adm(dims=1), "dims", "2-D"),
        (lambda: adm(dims=3), "dims", "2-D"),
        (lambda: adm(use_fp16=True), "use_fp16", "float16"),
        (lambda: adm(channel_mult=(2, 4)), "channel_mult", "block_out_channels[0]"),
        (
            lambda: idmzoo.spec_from_reference("guided-diffusion", "SuperResModel", BASE),
            "family",
            "super-resolution",
        ),
        (
            lambda: idmzoo.spec_from_reference("guided-diffusion", "EncoderUNetModel", BASE),
            "family",
            "encoder",
        ),
        (lambda: with_block("norm", {"type": "rms_norm"}), "norm.type", "idmzoo-rmsnorm"),
        (lambda: with_block("upsample", {"type": "conv_transpose"}), "upsample.type", "idmzoo-convtranspose"),
        (
            lambda: with_block("resblock", {"type": "resblock", "skip_conv": True}),
            "resblock.skip_conv",
            "1x1",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_inexpressible_specs_are_refused_by_field(spec: Any, field: str, why: str) -> None:
    error = refused(spec())
    assert error.field == field
    assert str(error).startswith(f"{field}: ")
    assert why in str(error)


def test_runtime_fp16_torso_is_refused() -> None:
    model = idmzoo.build(adm())
    model.convert_to_fp16()
    with pytest.raises(DiffusersConversionError, match="convert_to_fp32") as info:
        to_diffusers(model)
    assert info.value.field == "use_fp16"


def diffusers_unet(**overrides: Any) -> dict[str, Any]:
    config = diffusers_config(adm(num_head_channels=16))
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(time_embedding_type="fourier"), "time_embedding_type"),
        (dict(flip_sin_to_cos=False), "flip_sin_to_cos"),
        (dict(freq_shift=1), "freq_shift"),
        (dict(center_input_sample=True), "center_input_sample"),
        (dict(act_fn="mish"), "act_fn"),
        (dict(mid_block_type=None), "mid_block_type"),
        (dict(add_attention=False), "add_attention"),
        (dict(class_embed_type="timestep"), "class_embed_type"),
        (dict(time_embedding_dim=64), "time_embedding_dim"),
        (dict(resnet_time_scale_shift="scale_shift", attn_norm_num_groups=None), "attn_norm_num_groups"),
        (dict(down_block_types=("AttnSkipDownBlock2D", "AttnDownBlock2D")), "down_block_types"),
        (dict(up_block_types=("AttnUpBlock2D", "AttnUpBlock2D")), "up_block_types"),
        (dict(attention_head_dim=24), "attention_head_dim"),
        # 48 / 32 = 1.5: expressible, as channel_mult (1, 1.5)
        (
            dict(
                block_out_channels=(32, 48),
                attention_head_dim=16,
                norm_num_groups=16,
                attn_norm_num_groups=16,
            ),
            None,
        ),
    ],
    ids=lambda value: str(value),
)
def test_inexpressible_unets_are_refused_by_config_field(
    overrides: dict[str, Any], field: str | None
) -> None:
    config = diffusers_unet(**overrides)
    if field is None:
        assert spec_from_diffusers_config(config).channel_mult == (1, 1.5)
        return
    with pytest.raises(DiffusersConversionError) as info:
        spec_from_diffusers_config(config)
    assert info.value.field == field


NATIVE_UNETS = {
    # diffusers' default block mix, in small
    "default_mix": dict(
        sample_size=16,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        num_class_embeds=3,
    ),
    # TEST_UNET_CONFIG of diffusers' scripts/convert_consistency_to_diffusers.py (ADM-style)
    "consistency_test": dict(
        sample_size=32,
        layers_per_block=2,
        num_class_embeds=1000,
        block_out_channels=(32, 64),
        attention_head_dim=8,
        down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        resnet_time_scale_shift="scale_shift",
        attn_norm_num_groups=32,
        upsample_type="resnet",
        downsample_type="resnet",
    ),
}


@pytest.mark.parametrize("name", NATIVE_UNETS)
def test_from_diffusers_of_a_native_unet(name: str) -> None:
    """UNet2DModels written in diffusers' own terms import exactly, in either qkv order."""
    unet = randomized(diffusers.UNet2DModel(**NATIVE_UNETS[name]))
    x = torch.randn(2, 3, 16, 16)
    t, y = torch.tensor([10.0, 500.0]), torch.tensor([0, 2])
    with torch.no_grad():
        expected = unet(x, t, class_labels=y).sample
        assert expected.abs().max() > 0.1
        for attention in ("legacy_attention", "new_order_attention"):
            model = from_diffusers(unet, attention=attention)
            assert model.spec.attention.num_head_channels == 8
            assert (model(x, t, y) - expected).abs().max() < TOL
            assert (to_diffusers(model)(x, t, class_labels=y).sample - expected).abs().max() < TOL
    with pytest.raises(TypeError):
        from_diffusers(model)


def test_sampling_with_diffusers_pipelines() -> None:
    """An export runs in DDPMPipeline (learned range variance) and DDIMPipeline."""
    learned = to_diffusers(randomized(idmzoo.build(adm(out_channels=6))))
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type="learned_range")
    pipe = diffusers.DDPMPipeline(unet=learned, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=2, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 16, 16, 3)
    assert ((images >= 0) & (images <= 1)).all()

    plain = to_diffusers(randomized(idmzoo.build(adm())))
    pipe = diffusers.DDIMPipeline(unet=plain, scheduler=diffusers.DDIMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=1, num_inference_steps=3, generator=torch.manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 16, 16, 3)


def test_exported_model_is_on_the_models_dtype() -> None:
    model = idmzoo.build(adm()).to(torch.float64)
    unet = to_diffusers(model)
    assert unet.dtype == torch.float64
    assert {p.dtype for p in from_diffusers(unet).parameters()} == {torch.float64}


def test_qkv_regrouping_matters() -> None:
    """Exporting a multi-head legacy model as if it were in the new order gives a different function."""
    legacy = randomized(idmzoo.build(adm(num_head_channels=16)))
    as_new = idmzoo.build(adm(num_head_channels=16, use_new_attention_order=True))
    as_new.load_state_dict(legacy.state_dict())
    x, t, y = inputs(legacy.spec)
    with torch.no_grad():
        assert (to_diffusers(as_new)(x, t).sample - legacy(x, t, y)).abs().max() > 1e-2


def test_missing_diffusers_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    model = idmzoo.build(adm(), device="meta")
    for call in (lambda: to_diffusers(model), lambda: from_diffusers(object())):
        with pytest.raises(idmzoo.IdmzooError, match=r'pip install "idmzoo\[diffusers\]"'):
            call()


def test_public_names() -> None:
    assert idmzoo.to_diffusers is to_diffusers and idmzoo.from_diffusers is from_diffusers
    assert issubclass(idmzoo.DiffusersConversionError, (idmzoo.IdmzooError, ValueError))


def test_fp16_spec_exports_through_its_float32_twin() -> None:
    """The recipe the use_fp16 refusal gives: the float32 twin takes the weights and exports."""
    half = randomized(idmzoo.build(adm(use_fp16=True)))
    assert refused(half.spec).field == "use_fp16"
    twin = idmzoo.build(idmzoo.Spec.model_validate({**half.spec.model_dump(), "use_fp16": False}))
    twin.load_state_dict(half.state_dict())
    unet = to_diffusers(twin.eval())
    x, t, y = inputs(twin.spec)
    with torch.no_grad():
        expected = twin(x, t, y)
        assert expected.abs().max() > 0.1
        assert (unet(x, t).sample - expected).abs().max() < TOL
