"""The flags each reference script accepts, with their defaults, transcribed from its ``script_util.py``.

The training and sampling scripts of openai/improved-diffusion ("IDM", commit ``1bc7bbb``),
openai/guided-diffusion ("ADM", commit ``22e0df8``) and openai/consistency_models ("CM",
commit ``e32b69e``) build their argparse parsers from a defaults dict
(``add_dict_to_argparser``); these are those dicts, in the same order, one per library and
model kind.  Flags that only configure the diffusion (IDM's ``sigma_small``, CM's
``sigma_min``, ``sigma_max`` and ``weight_schedule``, which only reach its ``KarrasDenoiser``,
...) are part of them: they are accepted and type-checked, and change no model argument.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "LIBRARIES",
    "KINDS",
    "NUM_CLASSES",
    "DEFAULTS",
    "SCRIPT_ONLY_FLAGS",
    "COMMA_LIST_FLAGS",
    "CLASSIFIER_POOLS",
    "NEGATIVE_NUMBER",
    "TRUE_STRINGS",
    "FALSE_STRINGS",
]

LIBRARIES: tuple[str, ...] = ("improved-diffusion", "guided-diffusion", "consistency-models")
"""Library names accepted by :func:`reference_kwargs_from_flags`."""

KINDS: tuple[str, ...] = ("model", "sr", "classifier")
"""Model kinds: ``create_model``, ``sr_create_model``, ``create_classifier``."""

NUM_CLASSES = 1000
"""``script_util.NUM_CLASSES`` in every library (ImageNet)."""

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

#: guided-diffusion's model flags (consistency-models' script_util starts from the same ones).
_ADM_MODEL: dict[str, object] = {
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
}
_ADM_MODEL_AND_DIFFUSION: dict[str, object] = {**_ADM_MODEL, **_ADM_DIFFUSION}

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


#: consistency-models: its sigma bounds first, guided-diffusion's model flags (its own
#: attention resolutions), then learn_sigma and the loss weighting, in that order.
_CM_MODEL_AND_DIFFUSION: dict[str, object] = {
    "sigma_min": 0.002,
    "sigma_max": 80.0,
    **_ADM_MODEL,
    "attention_resolutions": "32,16,8",
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


DEFAULTS: dict[tuple[str, str], dict[str, object]] = {
    ("improved-diffusion", "model"): _IDM_MODEL_AND_DIFFUSION,
    ("improved-diffusion", "sr"): _sr_defaults(_IDM_MODEL_AND_DIFFUSION, {"image_size", "sigma_small"}),
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
#: Flags every library's training and sampling scripts share.
_SCRIPT_FLAGS = frozenset(
    {
        "batch_size",
        "clip_denoised",
        "data_dir",
        "ema_rate",
        "fp16_scale_growth",
        "log_interval",
        "lr",
        "lr_anneal_steps",
        "microbatch",
        "model_path",
        "num_samples",
        "resume_checkpoint",
        "save_interval",
        "schedule_sampler",
        "weight_decay",
    }
)
SCRIPT_ONLY_FLAGS: dict[str, frozenset[str]] = {
    "improved-diffusion": _SCRIPT_FLAGS | {"base_samples", "use_ddim", "use_fp16"},
    "guided-diffusion": _SCRIPT_FLAGS
    | {
        "anneal_lr",
        "base_samples",
        "classifier_path",
        "classifier_scale",
        "eval_interval",
        "iterations",
        "noised",
        "use_ddim",
        "val_data_dir",
    },
    # cm_train.py / edm_train.py and cm_train_defaults(); image_sample.py / ternary_search.py
    "consistency-models": _SCRIPT_FLAGS
    | {
        "begin",
        "distill_steps_per_iter",
        "end",
        "end_scales",
        "generator",
        "global_batch_size",
        "loss_norm",
        "ref_batch",
        "s_churn",
        "s_noise",
        "s_tmax",
        "s_tmin",
        "sampler",
        "scale_mode",
        "seed",
        "start_ema",
        "start_scales",
        "steps",
        "target_ema_mode",
        "teacher_dropout",
        "teacher_model_path",
        "total_training_steps",
        "training_mode",
        "ts",
    },
}

# Comma-separated string flags: a mapping may also give them as an int or a
# sequence of ints, which is joined with commas before the reference parsing.
COMMA_LIST_FLAGS = frozenset(
    {"attention_resolutions", "classifier_attention_resolutions", "channel_mult", "timestep_respacing"}
)

CLASSIFIER_POOLS = ("adaptive", "attention", "spatial", "spatial_v2")

# argparse's _negative_number_matcher: such tokens are values, not options.
NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")

TRUE_STRINGS = ("yes", "true", "t", "y", "1")
FALSE_STRINGS = ("no", "false", "f", "n", "0")
