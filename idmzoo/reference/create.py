"""The reference's ``create_model`` / ``sr_create_model`` / ``create_classifier``, as arithmetic.

Each function takes the parsed flags and returns ``(class name, constructor kwargs)``
exactly as the reference passes them to its U-Net class, without importing the reference
(or torch): image-size tables, attention resolutions turned into downsampling rates,
``learn_sigma`` doubling the output channels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..errors import FlagError
from .flag_defaults import CLASSIFIER_POOLS, NUM_CLASSES

__all__ = ["CREATE_FUNCTIONS"]


def _attention_ds(flag: str, resolutions: object, size: int) -> list[int]:
    """``[size // int(res) for res in resolutions.split(",")]`` with clear errors."""
    assert isinstance(resolutions, str)
    out: list[int] = []
    for res in resolutions.split(","):
        try:
            value = int(res)
        except ValueError:
            raise FlagError(
                f"invalid value for flag --{flag}: expected comma-separated integer "
                f"resolutions such as '32,16,8', got {resolutions!r}"
            ) from None
        if value <= 0:
            raise FlagError(
                f"invalid value for flag --{flag}: resolutions must be positive integers, got {resolutions!r}"
            )
        out.append(size // value)
    return out


def _unsupported(what: str, size: object, supported: Sequence[int], where: str, hint: str = "") -> FlagError:
    sizes = ", ".join(str(s) for s in supported)
    return FlagError(f"unsupported {what} {size} for {where}; supported: {sizes}{hint}")


def _unet_kwargs(a: Mapping[str, object], size: int, channel_mult: Sequence[float]) -> dict:
    """The U-Net kwargs every create_model / sr_create_model of both libraries passes."""
    return {
        "in_channels": 3,
        "model_channels": a["num_channels"],
        "out_channels": 6 if a["learn_sigma"] else 3,
        "num_res_blocks": a["num_res_blocks"],
        "attention_resolutions": _attention_ds("attention_resolutions", a["attention_resolutions"], size),
        "dropout": a["dropout"],
        "channel_mult": list(channel_mult),
        "num_classes": NUM_CLASSES if a["class_cond"] else None,
        "use_checkpoint": a["use_checkpoint"],
        "num_heads": a["num_heads"],
        "num_heads_upsample": a["num_heads_upsample"],
        "use_scale_shift_norm": a["use_scale_shift_norm"],
    }


def _idm_create_model(a: Mapping[str, object]) -> tuple[str, dict]:
    size = a["image_size"]
    table = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}
    if size not in table:
        raise _unsupported("image_size", size, sorted(table), "improved-diffusion create_model")
    return "UNetModel", _unet_kwargs(a, size, table[size])


def _idm_sr_create_model(a: Mapping[str, object]) -> tuple[str, dict]:
    size = a["large_size"]  # small_size is ignored by the reference
    table = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
    if size not in table:
        raise _unsupported("large_size", size, sorted(table), "improved-diffusion sr_create_model")
    return "SuperResModel", _unet_kwargs(a, size, table[size])


def _adm_only_kwargs(a: Mapping[str, object]) -> dict:
    """The U-Net kwargs guided-diffusion's create_model and sr_create_model add to those."""
    return {
        "use_fp16": a["use_fp16"],
        "num_head_channels": a["num_head_channels"],
        "resblock_updown": a["resblock_updown"],
    }


_ADM_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def _adm_create_model(
    a: Mapping[str, object], where: str = "guided-diffusion create_model"
) -> tuple[str, dict]:
    size = a["image_size"]
    channel_mult_flag = a["channel_mult"]
    assert isinstance(channel_mult_flag, str)
    if channel_mult_flag == "":
        if size not in _ADM_CHANNEL_MULT:
            raise _unsupported(
                "image_size",
                size,
                sorted(_ADM_CHANNEL_MULT),
                where,
                " (or pass --channel_mult explicitly)",
            )
        channel_mult = list(_ADM_CHANNEL_MULT[size])
    else:
        try:
            channel_mult = [int(m) for m in channel_mult_flag.split(",")]
        except ValueError:
            raise FlagError(
                "invalid value for flag --channel_mult: expected comma-separated integers "
                f"such as '1,2,3,4' (the reference parses each with int()), "
                f"got {channel_mult_flag!r}"
            ) from None
    return "UNetModel", {
        "image_size": size,
        **_unet_kwargs(a, size, channel_mult),
        **_adm_only_kwargs(a),
        "use_new_attention_order": a["use_new_attention_order"],
    }


def _cm_create_model(a: Mapping[str, object]) -> tuple[str, dict]:
    # cm/script_util.py's create_model is guided-diffusion's, line for line
    return _adm_create_model(a, "consistency-models create_model")


def _adm_sr_create_model(a: Mapping[str, object]) -> tuple[str, dict]:
    size = a["large_size"]  # small_size is ignored by the reference
    # 512 deliberately reuses the 256 multipliers in the reference (no 0.5 level).
    table = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
    if size not in table:
        raise _unsupported("large_size", size, sorted(table), "guided-diffusion sr_create_model")
    return "SuperResModel", {
        "image_size": size,
        **_unet_kwargs(a, size, table[size]),
        **_adm_only_kwargs(a),
    }


def _adm_create_classifier(a: Mapping[str, object]) -> tuple[str, dict]:
    size = a["image_size"]
    if size not in _ADM_CHANNEL_MULT:
        raise _unsupported(
            "image_size", size, sorted(_ADM_CHANNEL_MULT), "guided-diffusion create_classifier"
        )
    pool = a["classifier_pool"]
    if pool not in CLASSIFIER_POOLS:
        # The reference accepts the flag but EncoderUNetModel raises NotImplementedError.
        raise FlagError(
            f"invalid value for flag --classifier_pool: {pool!r} is not a pooling that "
            f"EncoderUNetModel implements; supported: {', '.join(CLASSIFIER_POOLS)}"
        )
    return "EncoderUNetModel", {
        "image_size": size,
        "in_channels": 3,
        "model_channels": a["classifier_width"],
        "out_channels": 1000,
        "num_res_blocks": a["classifier_depth"],
        "attention_resolutions": _attention_ds(
            "classifier_attention_resolutions", a["classifier_attention_resolutions"], size
        ),
        "channel_mult": list(_ADM_CHANNEL_MULT[size]),
        "use_fp16": a["classifier_use_fp16"],
        "num_head_channels": 64,
        "use_scale_shift_norm": a["classifier_use_scale_shift_norm"],
        "resblock_updown": a["classifier_resblock_updown"],
        "pool": pool,
    }


CREATE_FUNCTIONS: dict[tuple[str, str], Callable[[Mapping[str, object]], tuple[str, dict]]] = {
    ("improved-diffusion", "model"): _idm_create_model,
    ("improved-diffusion", "sr"): _idm_sr_create_model,
    ("guided-diffusion", "model"): _adm_create_model,
    ("guided-diffusion", "sr"): _adm_sr_create_model,
    ("guided-diffusion", "classifier"): _adm_create_classifier,
    ("consistency-models", "model"): _cm_create_model,
}
