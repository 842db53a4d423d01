"""diffusers interop: an idmzoo U-Net as a ``diffusers.UNet2DModel`` with the same weights, and back.

``to_diffusers(model)`` writes the ``UNet2DModel`` config that builds the same network and
moves every weight across (regrouping the qkv projection of the attention blocks);
``from_diffusers(unet)`` does the inverse.  Both are exact: the converted model computes
the same function.  What one side cannot express is refused with a
:class:`~idmzoo.errors.DiffusersConversionError` naming the field; nothing is approximated.

Only public idmzoo API is used (``idmzoo.build``, ``idmzoo.Spec``, ``idmzoo.get_block``,
the spec's field values, the documented block names and the reference state-dict keys),
and diffusers is imported inside the functions, so ``import idmzoo`` does not need it.
See docs/diffusers.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from .builder import build
from .errors import DiffusersConversionError, IdmzooError
from .registry import get_block
from .spec import Spec

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["to_diffusers", "from_diffusers", "diffusers_config"]

AttentionType = Literal["new_order_attention", "legacy_attention"]

# Spec block parameters each supported block is known to have; any other parameter (a
# future one, a plugin's) might change the network, so it is refused rather than ignored.
_KNOWN_PARAMS = {
    "norm": {"group_norm32": {"num_groups", "eps"}},
    "resblock": {"resblock": {"use_scale_shift_norm", "skip_conv"}},
    "attention": {
        "legacy_attention": {"num_heads", "num_head_channels", "num_heads_upsample"},
        "new_order_attention": {"num_heads", "num_head_channels", "num_heads_upsample"},
    },
    "upsample": {"nearest_conv": set(), "resblock_up": set()},
    "downsample": {"strided_conv": set(), "resblock_down": set()},
}
_RESAMPLE = {
    "nearest_conv": "conv",
    "strided_conv": "conv",
    "resblock_up": "resnet",
    "resblock_down": "resnet",
}
_UNEXPRESSIBLE_RESAMPLE = {
    "nearest": "diffusers' up blocks always follow the nearest-neighbour upsampling with a 3x3 conv "
    "(Upsample2D(use_conv=True)) or use a resnet upsampler; there is no parameter-free upsampler",
    "avg_pool": "diffusers' down blocks always downsample with a strided 3x3 conv "
    "(Downsample2D(use_conv=True)) or a resnet downsampler; there is no average-pool downsampler",
}
_RESBLOCK_KEYS = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)
_DOWN_BLOCKS = {"DownBlock2D": "conv", "ResnetDownsampleBlock2D": "resnet", "AttnDownBlock2D": None}
_UP_BLOCKS = {"UpBlock2D": "conv", "ResnetUpsampleBlock2D": "resnet", "AttnUpBlock2D": None}


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as err:
        raise IdmzooError(
            f'diffusers interop needs the diffusers package ({err}); install it with: pip install "idmzoo[diffusers]"'
        ) from err
    return diffusers


def _refuse(field: str, message: str) -> DiffusersConversionError:
    return DiffusersConversionError(field, message)


# --------------------------------------------------------------------------- spec → config


def _builtin(kind: str, params: Any) -> str:
    """The built-in block name of a spec block field; a plugin's block is refused."""

    info = get_block(kind, params.type)
    known = _KNOWN_PARAMS[kind]
    if info.package != "idmzoo" or info.name not in known:
        if info.name in _UNEXPRESSIBLE_RESAMPLE and info.package == "idmzoo":
            raise _refuse(f"{kind}.type", f"{info.name!r}: {_UNEXPRESSIBLE_RESAMPLE[info.name]}")
        supported = ", ".join(repr(name) for name in known)
        raise _refuse(
            f"{kind}.type",
            f"block {params.type!r} (from {info.package}) has no diffusers counterpart; "
            f"UNet2DModel can express the built-in {supported}",
        )
    extra = set(params.model_dump()) - {"type"} - known[info.name]
    if extra:
        raise _refuse(
            f"{kind}.{sorted(extra)[0]}",
            "parameter unknown to the diffusers exporter, so it cannot be mapped",
        )
    return info.name


def _widths(spec: Any) -> list[int]:
    return [int(mult * spec.model_channels) for mult in spec.channel_mult]


def _attention_sites(spec: Any) -> list[tuple[int, str]]:
    """(channels, stage) of every attention block, as the reference lays them out."""
    widths, rates = _widths(spec), set(spec.attention_resolutions)
    sites = []
    for level, width in enumerate(widths):
        if 2**level in rates:
            sites.append((width, "input"))
            sites.append((width, "output"))
    sites.append((widths[-1], "middle"))
    return sites


def _attention_head_dim(spec: Any) -> int | None:
    """diffusers' single ``attention_head_dim`` (None: one head per block), or a refusal."""
    params = spec.attention
    if params.num_head_channels is not None:
        return params.num_head_channels
    heads = {}
    for channels, stage in _attention_sites(spec):
        count = (
            params.num_heads_upsample if stage == "output" and params.num_heads_upsample else params.num_heads
        )
        heads[channels, stage] = count
    if all(count == 1 for count in heads.values()):
        return None  # diffusers' attention_head_dim=None: each block's width, i.e. one head
    widths = {channels // count for (channels, _), count in heads.items()}
    if len(widths) == 1:
        return widths.pop()
    upsample_differs = params.num_heads_upsample not in (None, params.num_heads)
    field = "attention.num_heads_upsample" if upsample_differs else "attention.num_heads"
    described = ", ".join(f"{c // n} at {c} channels ({stage})" for (c, stage), n in sorted(heads.items()))
    raise _refuse(
        field,
        "UNet2DModel has one head width (attention_head_dim) for every attention layer, but this "
        f"spec's head counts give head widths {described}; use attention.num_head_channels "
        "(a fixed head width) or a head count that gives one width everywhere",
    )


def diffusers_config(spec: Any, *, sample_size: int | None = None) -> dict[str, Any]:
    """The ``UNet2DModel`` config that builds the network ``spec`` describes.

    Raises:
        DiffusersConversionError: the spec uses something UNet2DModel cannot express;
            ``field`` names the spec field.
    """

    family = get_block("family", spec.family.type)
    if family.package != "idmzoo" or family.name != "unet":
        raise _refuse(
            "family",
            f"{spec.family.type!r}: UNet2DModel is the plain image U-Net; the super-resolution and "
            "encoder families (low-res concatenation, pooling heads) have no UNet2DModel counterpart",
        )
    if set(spec.family.model_dump()) - {"type"}:
        raise _refuse("family", "family parameters unknown to the diffusers exporter")
    if spec.dims != 2:
        raise _refuse("dims", f"dims={spec.dims}: UNet2DModel is 2-D only")
    if spec.use_fp16:
        raise _refuse(
            "use_fp16",
            "a float16 torso with float32 norms, embeddings and output has no UNet2DModel counterpart "
            "(a diffusers model runs in one dtype); export the float32 twin instead: "
            "build(Spec.model_validate({**spec.model_dump(), 'use_fp16': False})), load this model's "
            "state dict into it, export that, and cast the UNet2DModel with .half() if wanted",
        )
    if spec.pool is not None:
        raise _refuse("pool", "UNet2DModel has no pooling head")
    if spec.overrides:
        raise _refuse(
            "overrides", "UNet2DModel has one block of each kind for every level; remove the overrides"
        )
    per_level = set(spec.res_blocks_per_level)
    if len(per_level) > 1:
        raise _refuse("num_res_blocks", "UNet2DModel has one layers_per_block for every level")
    for kind, default in (("activation", "silu"), ("time_embed", "sinusoidal"), ("label_embed", "embedding")):
        params = getattr(spec, kind)
        if params.type.rpartition(":")[2] != default or params != type(params)(type=params.type):
            raise _refuse(kind, f"the diffusers exporter maps only the default {kind}, {default!r}")
    if spec.channel_mult[0] != 1:
        raise _refuse(
            "channel_mult",
            f"channel_mult[0]={spec.channel_mult[0]}: UNet2DModel's timestep sinusoid has "
            "block_out_channels[0] frequencies, idmzoo's has model_channels; they agree only when "
            "the first level's multiplier is 1",
        )
    _builtin("norm", spec.norm)  # group_norm32: its num_groups and eps map onto the config
    _builtin("resblock", spec.resblock)
    _builtin("attention", spec.attention)
    up = _RESAMPLE[_builtin("upsample", spec.upsample)]
    down = _RESAMPLE[_builtin("downsample", spec.downsample)]
    if spec.resblock.skip_conv:
        raise _refuse(
            "resblock.skip_conv",
            "diffusers' resnets always use a 1x1 conv on the skip path when the channel count changes",
        )
    head_dim = _attention_head_dim(spec)
    widths, rates = _widths(spec), set(spec.attention_resolutions)
    attn = [2**level in rates for level in range(len(widths))]
    down_types = [
        "AttnDownBlock2D" if a else ("ResnetDownsampleBlock2D" if down == "resnet" else "DownBlock2D")
        for a in attn
    ]
    up_types = [
        "AttnUpBlock2D" if a else ("ResnetUpsampleBlock2D" if up == "resnet" else "UpBlock2D")
        for a in reversed(attn)
    ]
    if sample_size is None:
        sample_size = spec.image_size
    return {
        "sample_size": sample_size,
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,  # cos first, then sin
        "freq_shift": 0,  # frequencies exp(-ln(10000) * i / half)
        "down_block_types": tuple(down_types),
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": tuple(up_types),
        "block_out_channels": tuple(widths),
        "layers_per_block": spec.res_blocks_per_level[0],
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": down,
        "upsample_type": up,
        "dropout": spec.dropout,
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": spec.norm.num_groups,
        # explicit, or the mid block's attention loses its norm under scale-shift
        "attn_norm_num_groups": spec.norm.num_groups,
        "norm_eps": spec.norm.eps,
        "resnet_time_scale_shift": "scale_shift" if spec.resblock.use_scale_shift_norm else "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": spec.num_classes,
    }


# --------------------------------------------------------------------------- key mapping


def _module_pairs(config: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
    """(idmzoo prefix, diffusers prefix) of every plain module, and of every attention block with its heads.

    idmzoo's prefixes are the reference's module paths; both lists follow one walk over
    the levels, so export and import use the same table.
    """
    widths = list(config["block_out_channels"])
    nrb = config["layers_per_block"]
    head_dim = config["attention_head_dim"]
    down_attn = [t == "AttnDownBlock2D" for t in config["down_block_types"]]
    last = len(widths) - 1
    plain: list[tuple[str, str]] = [
        ("time_embed.0", "time_embedding.linear_1"),
        ("time_embed.2", "time_embedding.linear_2"),
        ("label_emb", "class_embedding"),
        ("input_blocks.0.0", "conv_in"),
        ("out.0", "conv_norm_out"),
        ("out.2", "conv_out"),
    ]
    attention: list[tuple[str, str, int]] = []

    def resblock(src: str, dst: str) -> None:
        plain.extend((f"{src}.{a}", f"{dst}.{b}") for a, b in _RESBLOCK_KEYS)

    def heads(channels: int) -> int:
        return 1 if head_dim is None else channels // head_dim

    k = 1
    for level, width in enumerate(widths):
        for j in range(nrb):
            resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}")
            if down_attn[level]:
                attention.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", heads(width)))
            k += 1
        if level != last:
            if config["downsample_type"] == "resnet":
                resblock(f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0")
            else:
                plain.append((f"input_blocks.{k}.0.op", f"down_blocks.{level}.downsamplers.0.conv"))
            k += 1
    resblock("middle_block.0", "mid_block.resnets.0")
    attention.append(("middle_block.1", "mid_block.attentions.0", heads(widths[-1])))
    resblock("middle_block.2", "mid_block.resnets.1")
    k = 0
    for i, level in enumerate(reversed(range(len(widths)))):
        for j in range(nrb + 1):
            resblock(f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}")
            index = 1
            if down_attn[level]:
                attention.append(
                    (f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", heads(widths[level]))
                )
                index = 2
            if level and j == nrb:
                if config["upsample_type"] == "resnet":
                    resblock(f"output_blocks.{k}.{index}", f"up_blocks.{i}.upsamplers.0")
                else:
                    plain.append((f"output_blocks.{k}.{index}.conv", f"up_blocks.{i}.upsamplers.0.conv"))
            k += 1
    return plain, attention


def _qkv_to_diffusers(qkv: torch.Tensor, heads: int, legacy: bool) -> tuple[torch.Tensor, ...]:
    """Rows of the ``3C`` qkv projection → (q, k, v), each ``C`` rows grouped by head as diffusers wants."""
    if legacy:  # rows are [head][q|k|v][head width]
        rest = qkv.shape[1:]
        qkv = qkv.reshape(heads, 3, -1, *rest).transpose(0, 1).reshape(qkv.shape)
    return tuple(part.contiguous() for part in qkv.chunk(3, dim=0))


def _qkv_from_diffusers(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, legacy: bool
) -> torch.Tensor:
    qkv = torch.cat([q, k, v], dim=0)  # [q|k|v][head][head width]
    if legacy:
        rest = qkv.shape[1:]
        qkv = qkv.reshape(3, heads, -1, *rest).transpose(0, 1).reshape(qkv.shape)
    return qkv


def _squeeze(weight: torch.Tensor) -> torch.Tensor:
    return weight[..., 0]


def _unsqueeze(weight: torch.Tensor) -> torch.Tensor:
    return weight[..., None]


def _convert_state(
    source: Mapping[str, torch.Tensor],
    pairs: list[tuple[str, str]],
    attention: list[tuple[str, str, int]],
    legacy: bool,
    *,
    to_diffusers: bool,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The converted state dict and the source keys it did not use."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def move(src: str, dst: str, transform: Any = None) -> None:
        if src in source:
            value = source[src]
            out[dst] = value if transform is None else transform(value)
            used.add(src)

    for idm, dif in pairs:
        for name in ("weight", "bias"):
            move(
                *((f"{idm}.{name}", f"{dif}.{name}") if to_diffusers else (f"{dif}.{name}", f"{idm}.{name}"))
            )
    for idm, dif, heads in attention:
        for name in ("weight", "bias"):
            qkv, proj = f"{idm}.qkv.{name}", f"{idm}.proj_out.{name}"
            parts = [f"{dif}.to_{part}.{name}" for part in "qkv"]
            if to_diffusers:  # 1x1 Conv1d weights [out, in, 1] become Linear weights [out, in]
                move(f"{idm}.norm.{name}", f"{dif}.group_norm.{name}")
                move(proj, f"{dif}.to_out.0.{name}", _squeeze if name == "weight" else None)
                if qkv in source:
                    rows = source[qkv][..., 0] if name == "weight" else source[qkv]
                    out.update(zip(parts, _qkv_to_diffusers(rows, heads, legacy), strict=True))
                    used.add(qkv)
            else:
                move(f"{dif}.group_norm.{name}", f"{idm}.norm.{name}")
                move(f"{dif}.to_out.0.{name}", proj, _unsqueeze if name == "weight" else None)
                if all(part in source for part in parts):
                    rows = _qkv_from_diffusers(*(source[part] for part in parts), heads, legacy)
                    out[qkv] = _unsqueeze(rows) if name == "weight" else rows
                    used.update(parts)
    return out, set(source) - used


# Config entries older diffusers releases do not take, with the behaviour they hard-wire.
_IMPLICIT = {"mid_block_type": "UNetMidBlock2D", "add_attention": True, "dropout": 0.0}


def _unet_kwargs(diffusers: Any, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` restricted to what this diffusers' ``UNet2DModel`` takes, or a refusal."""
    import inspect

    accepted = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    kwargs = {}
    for name, value in config.items():
        if name in accepted:
            kwargs[name] = value
        elif name not in _IMPLICIT or value != _IMPLICIT[name]:
            raise IdmzooError(
                f"diffusers {diffusers.__version__}'s UNet2DModel has no {name!r} parameter, which this "
                f'model needs ({name}={value!r}); upgrade it: pip install "idmzoo[diffusers]"'
            )
    return kwargs


def _on(device: Any, cls: Any, **kwargs: Any) -> Any:
    with torch.device(device):
        return cls(**kwargs)


def _allocate(make: Any, like: torch.Tensor) -> Any:
    """``make(device)`` allocated on ``like``'s device and dtype, its weights left for the strict load.

    The module is built on the meta device and given uninitialised storage (no random
    init of weights about to be overwritten); a module with non-persistent buffers, which
    the load would not fill, is built for real instead.
    """
    module = make("meta")
    if {name for name, _ in module.named_buffers()} - set(module.state_dict()):
        module = make(like.device)
    else:
        module = module.to_empty(device=like.device)
    dtypes = {p.dtype for p in module.parameters()}
    return module if dtypes == {like.dtype} else module.to(like.dtype)


def _load(module: nn.Module, state: dict[str, torch.Tensor], what: str, field: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise _refuse(field, f"the converted weights do not fit the {what}: {err}") from err


# --------------------------------------------------------------------------- export


def to_diffusers(model: nn.Module, *, sample_size: int | None = None) -> Any:
    """A ``diffusers.UNet2DModel`` computing the same function as the idmzoo ``model``.

    ``unet(x, t, class_labels=y).sample`` equals ``model(x, t, y)``.  The copy lives on the
    model's device and dtype.

    Args:
        model: an idmzoo model of the ``unet`` family (anything with ``.spec`` and the
            reference's state-dict keys).
        sample_size: the ``sample_size`` config entry (the image side pipelines sample
            at); defaults to ``spec.image_size``.

    Raises:
        DiffusersConversionError: UNet2DModel cannot express the model; ``field`` names
            the spec field (e.g. ``"attention.num_heads"``, ``"upsample.type"``).
        IdmzooError: diffusers is not installed.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise TypeError(f"to_diffusers needs an idmzoo model (with .spec), got {type(model).__name__}")
    config = diffusers_config(spec, sample_size=sample_size)
    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        raise _refuse(
            "use_fp16",
            f"the model's parameters have mixed dtypes {sorted(map(str, dtypes))} (convert_to_fp16); "
            "UNet2DModel runs in one dtype: call model.convert_to_fp32() first",
        )
    diffusers = _import_diffusers()
    legacy = _builtin("attention", spec.attention) == "legacy_attention"
    pairs, attention = _module_pairs(config)
    state, unused = _convert_state(model.state_dict(), pairs, attention, legacy, to_diffusers=True)
    if unused:
        raise _refuse("spec", f"parameters with no UNet2DModel counterpart: {', '.join(sorted(unused)[:5])}")
    param = next(model.parameters())
    unet = _allocate(
        lambda device: _on(device, diffusers.UNet2DModel, **_unet_kwargs(diffusers, config)), param
    )
    _load(unet, state, "UNet2DModel built from the exported config", "spec")
    return unet.train(model.training)


# --------------------------------------------------------------------------- import


def _config_value(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    return config.get(name, default)


def _require(config: Mapping[str, Any], name: str, allowed: tuple[Any, ...], default: Any, why: str) -> Any:
    value = _config_value(config, name, default)
    if value not in allowed:
        raise _refuse(name, f"{value!r}: {why}")
    return value


def spec_from_diffusers_config(
    config: Mapping[str, Any], *, attention: AttentionType = "new_order_attention"
) -> Any:
    """The idmzoo :class:`~idmzoo.Spec` of a ``UNet2DModel`` config.

    Raises:
        DiffusersConversionError: the config uses something idmzoo cannot express;
            ``field`` names the config field.
    """
    from pydantic import ValidationError

    if attention not in ("new_order_attention", "legacy_attention"):
        raise ValueError(f"attention must be 'new_order_attention' or 'legacy_attention', got {attention!r}")
    _require(
        config, "time_embedding_type", ("positional",), "positional", "idmzoo embeds timesteps with sinusoids"
    )
    _require(config, "flip_sin_to_cos", (True,), True, "idmzoo's sinusoid puts the cosines first")
    _require(config, "freq_shift", (0,), 0, "idmzoo's frequencies are exp(-ln(10000) * i / half)")
    _require(config, "center_input_sample", (False,), False, "idmzoo does not rescale the input")
    _require(config, "act_fn", ("silu", "swish"), "silu", "idmzoo's blocks use SiLU")
    _require(
        config,
        "mid_block_type",
        ("UNetMidBlock2D",),
        "UNetMidBlock2D",
        "idmzoo's bottleneck is resnet-attention-resnet",
    )
    _require(config, "add_attention", (True,), True, "idmzoo's bottleneck always has attention")
    _require(config, "mid_block_scale_factor", (1, 1.0), 1, "idmzoo's residuals are not rescaled")
    _require(config, "downsample_padding", (1,), 1, "idmzoo's strided conv pads by 1 on every side")
    _require(
        config, "class_embed_type", (None,), None, "idmzoo's class conditioning is a label embedding table"
    )
    shift = _require(
        config,
        "resnet_time_scale_shift",
        ("default", "scale_shift"),
        "default",
        "idmzoo adds or FiLM-applies the embedding",
    )
    widths = [int(w) for w in config["block_out_channels"]]
    mc = widths[0]
    emb_dim = _config_value(config, "time_embedding_dim")
    if emb_dim not in (None, 4 * mc):
        raise _refuse(
            "time_embedding_dim", f"{emb_dim}: idmzoo's timestep embedding is 4 * model_channels wide"
        )
    groups = _config_value(config, "norm_num_groups", 32)
    if groups is None:
        raise _refuse(
            "norm_num_groups", "None (a per-layer group count) cannot be expressed: idmzoo has one norm"
        )
    attn_groups = _config_value(config, "attn_norm_num_groups")
    if attn_groups is None and shift != "default":
        raise _refuse(
            "attn_norm_num_groups",
            "None with resnet_time_scale_shift='scale_shift' leaves the mid block's attention without a norm; "
            "idmzoo's attention always normalizes",
        )
    if attn_groups not in (None, groups):
        raise _refuse(
            "attn_norm_num_groups",
            f"{attn_groups} differs from norm_num_groups={groups}: idmzoo has one norm",
        )
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    for name, types, known in (
        ("down_block_types", down_types, _DOWN_BLOCKS),
        ("up_block_types", up_types, _UP_BLOCKS),
    ):
        for t in types:
            if t not in known:
                raise _refuse(name, f"{t!r} has no idmzoo counterpart; supported: {', '.join(known)}")
    attn = [t == "AttnDownBlock2D" for t in down_types]
    if [t == "AttnUpBlock2D" for t in reversed(up_types)] != attn:
        raise _refuse(
            "up_block_types",
            "idmzoo puts attention at the same levels of the encoder and the decoder (attention_resolutions); "
            f"down {down_types} and up {up_types} differ",
        )

    def resampling(name: str, types: list[str], blocks: dict[str, str | None], option: str) -> str:
        kinds = {blocks[t] or _config_value(config, option) or "conv" for t in types}
        if not kinds <= {"conv", "resnet"}:
            raise _refuse(
                option, f"{_config_value(config, option)!r}: idmzoo resamples with a conv or a resnet"
            )
        if len(kinds) > 1:
            raise _refuse(name, f"{types} resample in different ways; idmzoo resamples alike at every level")
        return kinds.pop() if kinds else "conv"

    down = resampling("down_block_types", down_types[:-1], _DOWN_BLOCKS, "downsample_type")
    up = resampling("up_block_types", up_types[:-1], _UP_BLOCKS, "upsample_type")
    mult: list[int | float] = []
    for w in widths:
        m: int | float = w // mc if w % mc == 0 else w / mc
        if int(m * mc) != w:
            raise _refuse("block_out_channels", f"{w} is not int(mult * {mc}) for any multiplier")
        mult.append(m)
    head_dim = _config_value(config, "attention_head_dim", 8)
    attention_params: dict[str, Any] = {"type": attention}
    if head_dim is not None:
        if not isinstance(head_dim, int):
            raise _refuse("attention_head_dim", f"{head_dim!r}: UNet2DModel takes one int head width")
        channels = [w for w, a in zip(widths, attn, strict=True) if a] + [widths[-1]]
        bad = [c for c in channels if c % head_dim]
        if bad:
            raise _refuse(
                "attention_head_dim",
                f"{head_dim} does not divide the {bad[0]} channels of an attention layer",
            )
        attention_params["num_head_channels"] = head_dim
    size = _config_value(config, "sample_size")
    if isinstance(size, (tuple, list)):
        size = size[0] if len(set(size)) == 1 else None
    if not isinstance(size, int) or size % 2 ** (len(widths) - 1):
        size = None
    spec = {
        "family": {"type": "unet"},
        "in_channels": config["in_channels"],
        "model_channels": mc,
        "out_channels": config["out_channels"],
        "num_res_blocks": config["layers_per_block"],
        "attention_resolutions": tuple(2**level for level, a in enumerate(attn) if a),
        "dropout": _config_value(config, "dropout", 0.0),
        "channel_mult": tuple(mult),
        "dims": 2,
        "num_classes": _config_value(config, "num_class_embeds"),
        "image_size": size,
        "norm": {
            "type": "group_norm32",
            "num_groups": groups,
            "eps": _config_value(config, "norm_eps", 1e-5),
        },
        "resblock": {"type": "resblock", "use_scale_shift_norm": shift == "scale_shift"},
        "attention": attention_params,
        "upsample": {"type": "resblock_up" if up == "resnet" else "nearest_conv"},
        "downsample": {"type": "resblock_down" if down == "resnet" else "strided_conv"},
    }
    try:
        return Spec.model_validate(spec)
    except ValidationError as err:
        raise _refuse("config", f"the idmzoo spec of this config is invalid: {err}") from err


def from_diffusers(unet: nn.Module, *, attention: AttentionType = "new_order_attention") -> nn.Module:
    """The idmzoo model computing the same function as a ``diffusers.UNet2DModel``.

    ``model(x, t, y)`` equals ``unet(x, t, class_labels=y).sample``; the model lives on the
    unet's device and dtype.

    Args:
        unet: a ``UNet2DModel`` whose blocks idmzoo can express (see docs/diffusers.md).
        attention: the qkv layout of the attention blocks: ``"new_order_attention"``
            (guided-diffusion's new order, the default) or ``"legacy_attention"``
            (improved-diffusion's); both compute the same function.

    Raises:
        DiffusersConversionError: idmzoo cannot express the unet; ``field`` names the
            config field.
        IdmzooError: diffusers is not installed.
    """
    diffusers = _import_diffusers()
    if not isinstance(unet, diffusers.UNet2DModel):
        raise TypeError(f"from_diffusers needs a diffusers.UNet2DModel, got {type(unet).__name__}")

    config = dict(unet.config)
    spec = spec_from_diffusers_config(config, attention=attention)
    pairs, attention_blocks = _module_pairs(diffusers_config(spec))
    state, unused = _convert_state(
        unet.state_dict(), pairs, attention_blocks, attention == "legacy_attention", to_diffusers=False
    )
    if unused:
        raise _refuse("config", f"weights with no idmzoo counterpart: {', '.join(sorted(unused)[:5])}")
    model = _allocate(lambda device: build(spec, device=device), next(unet.parameters()))
    _load(model, state, "idmzoo model built from the config", "config")
    return model.train(unet.training)
