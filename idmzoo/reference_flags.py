"""Turn reference command-line flags into reference model-constructor kwargs.

The training and sampling scripts of openai/improved-diffusion ("IDM",
commit ``1bc7bbb``), openai/guided-diffusion ("ADM", commit ``22e0df8``) and
openai/consistency_models ("CM", commit ``e32b69e``) build their argparse
parsers from a *defaults dict* in ``script_util.py`` (``add_dict_to_argparser``)
and then hand the parsed values to a ``create_*`` function that computes the
constructor kwargs of a U-Net class. This module
emulates that pipeline without importing any of them (or torch), so a
published command line such as the README's ``MODEL_FLAGS`` can be turned into
the exact keyword arguments the reference passed to its model class.

Flag sets (one per library and kind; anything outside the set is an error):

* ``("improved-diffusion", "model")`` - ``model_and_diffusion_defaults()``
  -> ``create_model`` -> ``UNetModel``.
* ``("improved-diffusion", "sr")`` - ``sr_model_and_diffusion_defaults()``
  -> ``sr_create_model`` -> ``SuperResModel``.
* ``("guided-diffusion", "model")`` - ``model_and_diffusion_defaults()``
  (which includes ``diffusion_defaults()``) -> ``create_model`` -> ``UNetModel``.
* ``("guided-diffusion", "sr")`` - ``sr_model_and_diffusion_defaults()``
  -> ``sr_create_model`` -> ``SuperResModel``.
* ``("guided-diffusion", "classifier")`` - ``classifier_and_diffusion_defaults()``
  -> ``create_classifier`` -> ``EncoderUNetModel``.
* ``("consistency-models", "model")`` - ``model_and_diffusion_defaults()``
  -> ``create_model`` -> ``UNetModel`` (guided-diffusion's ``create_model``: the
  same channel_mult tables and kwargs; only the defaults differ).

Flags that only configure the Gaussian diffusion (``diffusion_steps``,
``noise_schedule``, ``timestep_respacing``, ``use_kl``, ``predict_xstart``,
``rescale_timesteps``, ``rescale_learned_sigmas``, IDM's ``sigma_small`` and
CM's ``sigma_min``, ``sigma_max`` and ``weight_schedule``, which only reach its
``KarrasDenoiser``) are accepted and type-checked exactly like argparse would,
but they do not change the returned kwargs. ``learn_sigma`` is listed among the diffusion
defaults in ADM, yet it doubles ``out_channels`` of the U-Nets (it is ignored
by the classifier). CM passes ``use_new_attention_order`` on to ``UNetModel``,
whose attention ignores it. ``small_size`` is accepted by the super-resolution flag
sets but ignored by ``sr_create_model`` in both libraries.

Values are parsed the way ``add_dict_to_argparser`` sets them up: the argparse
``type`` is the type of the default (``int``, ``float``, ``str``) and booleans
go through :func:`str2bool`.

Example:
    >>> reference_kwargs_from_flags(
    ...     "improved-diffusion", "--image_size 32 --learn_sigma True --dropout 0.3"
    ... )[1]["channel_mult"]
    [1, 2, 2, 2]
"""

from __future__ import annotations

import difflib
import numbers
import re
import shlex
from collections.abc import Callable, Mapping, Sequence

from .errors import IdmzooError

__all__ = [
    "KINDS",
    "LIBRARIES",
    "FlagError",
    "reference_flag_defaults",
    "reference_kwargs_from_flags",
    "str2bool",
]

LIBRARIES: tuple[str, ...] = ("improved-diffusion", "guided-diffusion", "consistency-models")
"""Library names accepted by :func:`reference_kwargs_from_flags`."""

KINDS: tuple[str, ...] = ("model", "sr", "classifier")
"""Model kinds: ``create_model``, ``sr_create_model``, ``create_classifier``."""

NUM_CLASSES = 1000
"""``script_util.NUM_CLASSES`` in every library (ImageNet)."""


class FlagError(IdmzooError, ValueError):
    """A flag set that the reference scripts would reject (or could not build)."""


# --------------------------------------------------------------------------
# Defaults dicts, transcribed from each library's script_util.py (same order).
# --------------------------------------------------------------------------

_IDM_MODEL_AND_DIFFUSION: dict[str, object] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "attention_resolutions": "16,8",
    "dropout": 0.0,
    "learn_sigma": False,
    "sigma_small": False,
    "class_cond": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": True,
    "rescale_learned_sigmas": True,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
}

_ADM_DIFFUSION: dict[str, object] = {
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
}

_ADM_MODEL_AND_DIFFUSION: dict[str, object] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    **_ADM_DIFFUSION,
}

_ADM_CLASSIFIER_AND_DIFFUSION: dict[str, object] = {
    "image_size": 64,
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
    **_ADM_DIFFUSION,
}


_CM_MODEL_AND_DIFFUSION: dict[str, object] = {
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "32,16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
    "learn_sigma": False,
    "weight_schedule": "karras",
}


def _sr_defaults(model_defaults: Mapping[str, object], dropped: set[str]) -> dict[str, object]:
    """Emulate ``sr_model_and_diffusion_defaults``.

    The reference adds ``large_size``/``small_size`` to the model defaults and
    then deletes every key that is not a parameter of
    ``sr_create_model_and_diffusion``; ``dropped`` lists those keys.
    """
    res = {k: v for k, v in model_defaults.items() if k not in dropped}
    res["large_size"] = 256
    res["small_size"] = 64
    return res


_DEFAULTS: dict[tuple[str, str], dict[str, object]] = {
    ("improved-diffusion", "model"): _IDM_MODEL_AND_DIFFUSION,
    ("improved-diffusion", "sr"): _sr_defaults(
        _IDM_MODEL_AND_DIFFUSION, {"image_size", "sigma_small"}
    ),
    ("guided-diffusion", "model"): _ADM_MODEL_AND_DIFFUSION,
    ("guided-diffusion", "sr"): _sr_defaults(
        _ADM_MODEL_AND_DIFFUSION, {"image_size", "channel_mult", "use_new_attention_order"}
    ),
    ("guided-diffusion", "classifier"): _ADM_CLASSIFIER_AND_DIFFUSION,
    ("consistency-models", "model"): _CM_MODEL_AND_DIFFUSION,
}

# Flags the reference *scripts* add on top of the script_util defaults (data,
# optimisation, sampling, checkpoint paths). They never reach a create_*
# function, so they are rejected here, but with a message saying what they are.
_SCRIPT_ONLY_FLAGS: dict[str, frozenset[str]] = {
    "improved-diffusion": frozenset(
        {
            "data_dir", "schedule_sampler", "lr", "weight_decay", "lr_anneal_steps",
            "batch_size", "microbatch", "ema_rate", "log_interval", "save_interval",
            "resume_checkpoint", "use_fp16", "fp16_scale_growth", "clip_denoised",
            "num_samples", "use_ddim", "model_path", "base_samples",
        }
    ),
    "guided-diffusion": frozenset(
        {
            "data_dir", "schedule_sampler", "lr", "weight_decay", "lr_anneal_steps",
            "batch_size", "microbatch", "ema_rate", "log_interval", "save_interval",
            "resume_checkpoint", "fp16_scale_growth", "clip_denoised", "num_samples",
            "use_ddim", "model_path", "base_samples", "classifier_path",
            "classifier_scale", "val_data_dir", "noised", "iterations", "anneal_lr",
            "eval_interval",
        }
    ),
    "consistency-models": frozenset(
        {
            # cm_train.py / edm_train.py, and cm_train_defaults()
            "data_dir", "schedule_sampler", "lr", "weight_decay", "lr_anneal_steps",
            "global_batch_size", "batch_size", "microbatch", "ema_rate", "log_interval",
            "save_interval", "resume_checkpoint", "fp16_scale_growth", "teacher_model_path",
            "teacher_dropout", "training_mode", "target_ema_mode", "scale_mode",
            "total_training_steps", "start_ema", "start_scales", "end_scales",
            "distill_steps_per_iter", "loss_norm",
            # image_sample.py / ternary_search.py
            "generator", "clip_denoised", "num_samples", "sampler", "s_churn", "s_tmin",
            "s_tmax", "s_noise", "steps", "model_path", "seed", "ts", "begin", "end",
            "ref_batch",
        }
    ),
}

# Comma-separated string flags: a mapping may also give them as an int or a
# sequence of ints, which is joined with commas before the reference parsing.
_COMMA_LIST_FLAGS = frozenset(
    {"attention_resolutions", "classifier_attention_resolutions", "channel_mult",
     "timestep_respacing"}
)

_CLASSIFIER_POOLS = ("adaptive", "attention", "spatial", "spatial_v2")

# argparse's _negative_number_matcher: such tokens are values, not options.
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")

_TRUE_STRINGS = ("yes", "true", "t", "y", "1")
_FALSE_STRINGS = ("no", "false", "f", "n", "0")


# --------------------------------------------------------------------------
# Value parsing (argparse type= emulation)
# --------------------------------------------------------------------------


def str2bool(value: str | bool) -> bool:
    """Parse a boolean exactly like the reference ``script_util.str2bool``.

    Args:
        value: A bool (returned unchanged) or a string. Case-insensitive
            ``yes/true/t/y/1`` is True and ``no/false/f/n/0`` is False;
            surrounding whitespace is *not* stripped (the reference does not).

    Returns:
        The parsed boolean.

    Raises:
        FlagError: If ``value`` is neither a bool nor one of those strings.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.lower() in _TRUE_STRINGS:
            return True
        if value.lower() in _FALSE_STRINGS:
            return False
    raise FlagError(
        f"boolean value expected, got {value!r} "
        f"(accepted: {'/'.join(_TRUE_STRINGS)} or {'/'.join(_FALSE_STRINGS)}, "
        "case-insensitive)"
    )


def _type_name(default: object) -> str:
    if isinstance(default, bool):
        return "bool"
    return type(default).__name__


def _parse_value(name: str, default: object, value: object) -> object:
    """Convert one flag value to the type argparse would produce.

    Strings go through the argparse ``type`` of the flag (``type(default)`` or
    ``str2bool``). Non-string values (mapping input only) must already have a
    matching Python type.
    """
    kind = _type_name(default)
    expected = {
        "bool": "a boolean (yes/true/t/y/1 or no/false/f/n/0)",
        "int": "an integer",
        "float": "a float",
        "str": "a string",
    }[kind]
    if kind == "str" and name in _COMMA_LIST_FLAGS:
        expected = "a comma-separated string of integers"
        if name == "timestep_respacing":
            expected = "a string such as '250', 'ddim25' or '10,15,20'"

    def fail(extra: str = "") -> FlagError:
        return FlagError(
            f"invalid value for flag --{name}: expected {expected}, got {value!r}{extra}"
        )

    if isinstance(value, str):
        if kind == "bool":
            try:
                return str2bool(value)
            except FlagError:
                raise fail() from None
        if kind == "int":
            try:
                return int(value)
            except ValueError:
                raise fail() from None
        if kind == "float":
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        return value

    # Non-string values can only come from mapping input.
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise fail()
    if kind == "int":
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise fail()
    if kind == "float":
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if name in _COMMA_LIST_FLAGS:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return str(int(value))
        if isinstance(value, Sequence) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
        ):
            return ",".join(str(int(v)) for v in value)
    raise fail()


# --------------------------------------------------------------------------
# Flag collection
# --------------------------------------------------------------------------


def _unknown_flag_error(library: str, kind: str, name: str) -> FlagError:
    valid = list(_DEFAULTS[(library, kind)])
    msg = f"unknown flag --{name} for {library} kind {kind!r}"
    other_kinds = [
        k for (lib, k), d in _DEFAULTS.items() if lib == library and k != kind and name in d
    ]
    if other_kinds:
        msg += f" (it is a flag of kind {' / '.join(repr(k) for k in other_kinds)}"
        if kind == "sr" and name == "image_size":
            msg += "; super-resolution scripts take --large_size and --small_size"
        msg += ")"
    elif name in _SCRIPT_ONLY_FLAGS[library]:
        msg += (
            f" (it is a flag of {library}'s training/sampling scripts that never "
            "reaches the model constructor; drop it)"
        )
    # Unique-prefix matches first (argparse would have accepted an abbreviation).
    suggestions = [v for v in valid if v.startswith(name)] if name else []
    for s in difflib.get_close_matches(name, valid, n=3):
        if s not in suggestions:
            suggestions.append(s)
    msg += "."
    if suggestions:
        msg += " Did you mean " + " or ".join(f"--{s}" for s in suggestions[:3]) + "?"
    msg += " Valid flags: " + ", ".join(f"--{v}" for v in valid)
    return FlagError(msg)


def _argv_to_raw(library: str, kind: str, argv: Sequence[str]) -> dict[str, str]:
    """Split argv tokens into ``{name: raw string}`` like argparse (last one wins)."""
    valid = _DEFAULTS[(library, kind)]
    raw: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not isinstance(token, str):
            raise TypeError(f"flag tokens must be strings, got {token!r}")
        if not token.startswith("--") or token == "--":
            if token.startswith("-") and token != "--" and not _NEGATIVE_NUMBER.match(token):
                raise _unknown_flag_error(library, kind, token.lstrip("-"))
            raise FlagError(
                f"unexpected argument {token!r}: the reference scripts take no positional "
                "arguments; flags look like '--name value' or '--name=value'"
            )
        body = token[2:]
        if "=" in body:
            name, value = body.split("=", 1)
            i += 1
        else:
            name = body
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or (
                isinstance(nxt, str) and nxt.startswith("-") and not _NEGATIVE_NUMBER.match(nxt)
            ):
                if name not in valid:
                    raise _unknown_flag_error(library, kind, name)
                raise FlagError(f"flag --{name} expected one argument (a value), got none")
            value = nxt
            i += 2
        if name not in valid:
            raise _unknown_flag_error(library, kind, name)
        raw[name] = value
    return raw


def _mapping_to_raw(library: str, kind: str, flags: Mapping[str, object]) -> dict[str, object]:
    valid = _DEFAULTS[(library, kind)]
    raw: dict[str, object] = {}
    for key, value in flags.items():
        if not isinstance(key, str):
            raise TypeError(f"flag names must be strings, got {key!r}")
        name = key[2:] if key.startswith("--") else key
        if name not in valid:
            raise _unknown_flag_error(library, kind, name)
        if name in raw:
            raise FlagError(f"flag --{name} given twice (as {name!r} and '--{name}')")
        raw[name] = value
    return raw


def _parse_flags(
    library: str, kind: str, flags: str | Sequence[str] | Mapping[str, object]
) -> dict[str, object]:
    """Return the full argparse namespace (defaults overridden by ``flags``)."""
    if isinstance(flags, str):
        try:
            argv = shlex.split(flags)
        except ValueError as exc:
            raise FlagError(f"cannot split flag string {flags!r}: {exc}") from None
        raw: Mapping[str, object] = _argv_to_raw(library, kind, argv)
    elif isinstance(flags, Mapping):
        raw = _mapping_to_raw(library, kind, flags)
    elif isinstance(flags, Sequence):
        raw = _argv_to_raw(library, kind, flags)
    else:
        raise TypeError(
            "flags must be a string, a sequence of argv tokens or a mapping, "
            f"got {type(flags).__name__}"
        )
    args = dict(_DEFAULTS[(library, kind)])
    for name, value in raw.items():
        args[name] = _parse_value(name, args[name], value)
    return args


# --------------------------------------------------------------------------
# create_* emulation
# --------------------------------------------------------------------------


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
                f"invalid value for flag --{flag}: resolutions must be positive "
                f"integers, got {resolutions!r}"
            )
        out.append(size // value)
    return out


def _unsupported(
    what: str, size: object, supported: Sequence[int], where: str, hint: str = ""
) -> FlagError:
    sizes = ", ".join(str(s) for s in supported)
    return FlagError(f"unsupported {what} {size} for {where}; supported: {sizes}{hint}")


def _unet_kwargs(a: Mapping[str, object], size: int, channel_mult: Sequence[float]) -> dict:
    """The U-Net kwargs every create_model / sr_create_model of both libraries passes."""
    return {
        "in_channels": 3,
        "model_channels": a["num_channels"],
        "out_channels": 6 if a["learn_sigma"] else 3,
        "num_res_blocks": a["num_res_blocks"],
        "attention_resolutions": _attention_ds(
            "attention_resolutions", a["attention_resolutions"], size
        ),
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
                "image_size", size, sorted(_ADM_CHANNEL_MULT), where,
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
    if pool not in _CLASSIFIER_POOLS:
        # The reference accepts the flag but EncoderUNetModel raises NotImplementedError.
        raise FlagError(
            f"invalid value for flag --classifier_pool: {pool!r} is not a pooling that "
            f"EncoderUNetModel implements; supported: {', '.join(_CLASSIFIER_POOLS)}"
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


_BUILDERS: dict[tuple[str, str], Callable[[Mapping[str, object]], tuple[str, dict]]] = {
    ("improved-diffusion", "model"): _idm_create_model,
    ("improved-diffusion", "sr"): _idm_sr_create_model,
    ("guided-diffusion", "model"): _adm_create_model,
    ("guided-diffusion", "sr"): _adm_sr_create_model,
    ("guided-diffusion", "classifier"): _adm_create_classifier,
    ("consistency-models", "model"): _cm_create_model,
}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def _check_library_kind(library: object, kind: object) -> tuple[str, str]:
    if library not in LIBRARIES:
        close = difflib.get_close_matches(str(library), LIBRARIES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FlagError(
            f"unknown library {library!r}.{hint} Valid libraries: "
            + ", ".join(repr(lib) for lib in LIBRARIES)
        )
    if kind not in KINDS:
        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FlagError(
            f"unknown kind {kind!r}.{hint} Valid kinds: "
            "'model' (create_model -> UNetModel), 'sr' (sr_create_model -> SuperResModel), "
            "'classifier' (create_classifier -> EncoderUNetModel, guided-diffusion only)"
        )
    if (library, kind) not in _DEFAULTS:
        valid = ", ".join(repr(k) for lib, k in _DEFAULTS if lib == library)
        raise FlagError(
            f"{library} has no {kind} (create_classifier exists only in guided-diffusion, "
            f"sr_create_model not in consistency-models); valid kinds for {library}: {valid}"
        )
    return library, kind  # type: ignore[return-value]


def reference_flag_defaults(library: str, kind: str = "model") -> dict[str, object]:
    """Return the reference defaults dict that defines the legal flags.

    This is the dict the reference scripts pass to ``add_dict_to_argparser``
    (minus the script-only training/sampling flags), in the reference order.

    Args:
        library: ``"improved-diffusion"``, ``"guided-diffusion"`` or ``"consistency-models"``.
        kind: ``"model"``, ``"sr"`` or ``"classifier"`` (guided-diffusion only).

    Returns:
        A fresh ``{flag name: default value}`` dict.

    Raises:
        FlagError: If ``library`` or ``kind`` is unknown, or the combination
            does not exist.
    """
    library, kind = _check_library_kind(library, kind)
    return dict(_DEFAULTS[(library, kind)])


def reference_kwargs_from_flags(
    library: str,
    flags: str | Sequence[str] | Mapping[str, object],
    kind: str = "model",
) -> tuple[str, dict]:
    """Return (class_name, constructor_kwargs).

    Emulates the reference pipeline ``add_dict_to_argparser`` -> argparse ->
    ``create_model`` / ``sr_create_model`` / ``create_classifier`` and returns
    exactly the keyword arguments that function passes to the model class.
    Flags not given take the reference defaults. ``channel_mult`` and
    ``attention_resolutions`` are returned as lists (the reference builds
    tuples); ``attention_resolutions`` holds downsample rates
    ``image_size // resolution`` in the order the flag lists the resolutions.

    Args:
        library: ``"improved-diffusion"``, ``"guided-diffusion"`` or ``"consistency-models"``.
        flags: The flags, as one string (``shlex``-split, e.g.
            ``"--image_size 64 --learn_sigma True"``), a sequence of argv
            tokens, or a mapping ``{flag name: value}`` (names with or without
            the leading ``--``; values either strings parsed like the command
            line or Python values of the flag's type). Both ``--flag value``
            and ``--flag=value`` are accepted; a repeated flag keeps its last
            value, as with argparse.
        kind: ``"model"`` (``UNetModel``), ``"sr"`` (``SuperResModel``, not
            consistency-models) or ``"classifier"`` (``EncoderUNetModel``,
            guided-diffusion only).

    Returns:
        ``(class_name, kwargs)`` where ``class_name`` is ``"UNetModel"``,
        ``"SuperResModel"`` or ``"EncoderUNetModel"``.

    Raises:
        FlagError: For an unknown library/kind, a kind the library lacks (a
            classifier from improved-diffusion), an unknown flag (with suggestions and the list
            of valid flags), a value that does not parse as the flag's type,
            or an image size the reference ``create_*`` function rejects.
        TypeError: If ``flags`` is not a string, sequence or mapping.
    """
    library, kind = _check_library_kind(library, kind)
    args = _parse_flags(library, kind, flags)
    return _BUILDERS[(library, kind)](args)
