"""Specs from the reference model classes' constructor arguments.

``spec_from_reference`` reads the keyword arguments of improved-diffusion's,
guided-diffusion's and consistency-models' model classes exactly as their ``script_util``
passes them.  The resulting spec builds a model with the reference's state-dict keys, so
the published checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import ReferenceConversionError
from ..messages import did_you_mean
from ..spec import Spec

__all__ = ["spec_from_reference", "REFERENCE_CLASSES"]

_REQUIRED = ("in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions")
_IDM_DEFAULTS: dict[str, Any] = {
    "dropout": 0.0,
    "channel_mult": (1, 2, 4, 8),
    "conv_resample": True,
    "dims": 2,
    "num_classes": None,
    "use_checkpoint": False,
    "num_heads": 1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
}
_ADM_DEFAULTS: dict[str, Any] = {
    **_IDM_DEFAULTS,
    "use_fp16": False,
    "num_head_channels": -1,
    "resblock_updown": False,
    "use_new_attention_order": False,
}
_ADM_ENCODER_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in _ADM_DEFAULTS.items() if k != "num_classes"},
    "pool": "adaptive",
}

#: (library, class) → (required kwargs, defaults of the optional ones), from the constructors.
REFERENCE_CLASSES: dict[tuple[str, str], tuple[tuple[str, ...], dict[str, Any]]] = {
    ("improved-diffusion", "UNetModel"): (_REQUIRED, _IDM_DEFAULTS),
    ("improved-diffusion", "SuperResModel"): (_REQUIRED, _IDM_DEFAULTS),
    ("guided-diffusion", "UNetModel"): (("image_size", *_REQUIRED), _ADM_DEFAULTS),
    ("guided-diffusion", "SuperResModel"): (("image_size", *_REQUIRED), _ADM_DEFAULTS),
    ("guided-diffusion", "EncoderUNetModel"): (("image_size", *_REQUIRED), _ADM_ENCODER_DEFAULTS),
    # cm/unet.py's UNetModel has guided-diffusion's signature and defaults
    ("consistency-models", "UNetModel"): (("image_size", *_REQUIRED), _ADM_DEFAULTS),
}
_FAMILIES = {"UNetModel": "unet", "SuperResModel": "superres_unet", "EncoderUNetModel": "encoder_unet"}


def _unset(value: int) -> int | None:
    """The reference's ``-1`` ("not set") as ``None``."""
    return None if value == -1 else value


def _checked_arguments(library: str, model: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if (library, model) not in REFERENCE_CLASSES:
        valid = ", ".join(f"{lib} {cls}" for lib, cls in REFERENCE_CLASSES)
        raise ReferenceConversionError(f"unknown reference model {library!r} {model!r}; valid: {valid}")
    required, defaults = REFERENCE_CLASSES[library, model]
    valid_names = (*required, *defaults)
    for name in kwargs:
        if name not in valid_names:
            raise ReferenceConversionError(
                f"{library} {model} has no argument {name!r}.{did_you_mean(name, valid_names, n=1)} Valid: {', '.join(valid_names)}"
            )
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ReferenceConversionError(f"{library} {model} needs {', '.join(missing)}")
    return {**defaults, **kwargs}


def _attention_type(library: str, a: Mapping[str, Any]) -> str:
    if library == "consistency-models":
        # its flash kernel always splits q/k/v first; use_new_attention_order is ignored
        return "conv2d_attention"
    return "new_order_attention" if a.get("use_new_attention_order") else "legacy_attention"


def spec_from_reference(library: str, model: str, kwargs: Mapping[str, Any]) -> Spec:
    """The spec of a reference model, from its constructor's keyword arguments.

    Args:
        library: ``"improved-diffusion"``, ``"guided-diffusion"`` or ``"consistency-models"``.
        model: ``"UNetModel"``, ``"SuperResModel"`` or (guided-diffusion) ``"EncoderUNetModel"``;
            consistency-models has only ``"UNetModel"``.
        kwargs: the constructor's keyword arguments, as ``script_util`` passes them.
            ``use_checkpoint`` is accepted and ignored: it changes no weight; pass
            ``checkpointing=`` to :func:`idmzoo.build` instead.  consistency-models'
            ``use_new_attention_order`` is accepted and ignored, as the reference ignores it.

    Raises:
        ReferenceConversionError: unknown class or argument, or a missing one.
        pydantic.ValidationError: arguments the reference could not build either.

    Examples:
        >>> spec = spec_from_reference("improved-diffusion", "UNetModel", dict(
        ...     in_channels=3, model_channels=128, out_channels=6, num_res_blocks=3,
        ...     attention_resolutions=(2, 4), channel_mult=(1, 2, 2, 2)))
    """
    a = _checked_arguments(library, model, kwargs)
    if model == "EncoderUNetModel" and a["pool"] == "attention" and a["num_head_channels"] == -1:
        raise ReferenceConversionError("pool='attention' needs num_head_channels (the reference asserts it)")
    if library == "consistency-models" and a["dims"] != 2:
        raise ReferenceConversionError(
            f"consistency-models UNetModel with dims={a['dims']}: its attention projections are always "
            "Conv2d, so the reference only runs with dims=2"
        )
    if a.get("resblock_updown"):
        upsample, downsample = "resblock_up", "resblock_down"
    elif a["conv_resample"]:
        upsample, downsample = "nearest_conv", "strided_conv"
    else:
        upsample, downsample = "nearest", "avg_pool"
    spec: dict[str, Any] = {
        "family": {"type": _FAMILIES[model]},
        "in_channels": a["in_channels"],
        "model_channels": a["model_channels"],
        "out_channels": a["out_channels"],
        "num_res_blocks": a["num_res_blocks"],
        "attention_resolutions": tuple(a["attention_resolutions"]),
        "dropout": a["dropout"],
        "channel_mult": tuple(a["channel_mult"]),
        "dims": a["dims"],
        "num_classes": a.get("num_classes"),
        "image_size": a.get("image_size"),
        "use_fp16": a.get("use_fp16", False),
        "norm": {"type": "group_norm32"},
        "resblock": {"type": "resblock", "use_scale_shift_norm": a["use_scale_shift_norm"]},
        "attention": {
            "type": _attention_type(library, a),
            "num_heads": a["num_heads"],
            "num_head_channels": _unset(a.get("num_head_channels", -1)),
            "num_heads_upsample": _unset(a["num_heads_upsample"]),
        },
        "upsample": {"type": upsample},
        "downsample": {"type": downsample},
    }
    if model == "EncoderUNetModel":
        spec["pool"] = {"type": a["pool"]}
        if a["pool"] == "attention":
            spec["pool"]["num_head_channels"] = a["num_head_channels"]
    return Spec.model_validate(spec)
