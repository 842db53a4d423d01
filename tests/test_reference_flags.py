"""Reference command-line flags -> reference constructor kwargs (IDM / ADM script_util)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from idmzoo.errors import FlagError
from idmzoo.reference import (
    KINDS,
    LIBRARIES,
    reference_flag_defaults,
    reference_kwargs_from_flags,
    str2bool,
)

PRESETS_PATH = Path(__file__).parent / "fixtures" / "reference" / "presets.json"
PRESETS = json.loads(PRESETS_PATH.read_text())["presets"]
CM_INDEX_PATH = Path(__file__).parent / "fixtures" / "consistency" / "index.json"
CM_CASES = json.loads(CM_INDEX_PATH.read_text())["create_model_cases"]

KIND_OF = {
    "script_util.create_model": "model",
    "script_util.sr_create_model": "sr",
    "script_util.create_classifier": "classifier",
}

IDM = "improved-diffusion"
ADM = "guided-diffusion"
CM = "consistency-models"


def _normalise(kwargs: dict) -> dict:
    out = dict(kwargs)
    for key in ("attention_resolutions", "channel_mult"):
        if isinstance(out.get(key), (tuple, list)):
            out[key] = list(out[key])
    return out


# ---------------------------------------------------------------- presets


def test_presets_fixture_has_all_published_configurations():
    assert len(PRESETS) == 17
    assert {p["library"] for p in PRESETS} == set(LIBRARIES) - {CM}  # CM_CASES cover it
    assert {KIND_OF[p["built_via"]] for p in PRESETS} == set(KINDS)


@pytest.mark.parametrize("preset", PRESETS, ids=[p["name"] for p in PRESETS])
def test_preset_readme_flags_reproduce_reference_kwargs(preset):
    cls, kwargs = reference_kwargs_from_flags(
        preset["library"], preset["readme_flags"], KIND_OF[preset["built_via"]]
    )
    assert cls == preset["class"]
    assert _normalise(kwargs) == _normalise(preset["kwargs"])
    # Same keys, nothing extra or missing (dict equality already implies it; be explicit).
    assert set(kwargs) == set(preset["kwargs"])
    assert isinstance(kwargs["attention_resolutions"], list)
    assert isinstance(kwargs["channel_mult"], list)


@pytest.mark.parametrize("preset", PRESETS, ids=[p["name"] for p in PRESETS])
def test_preset_argv_list_input_matches_string_input(preset):
    kind = KIND_OF[preset["built_via"]]
    from_string = reference_kwargs_from_flags(preset["library"], preset["readme_flags"], kind)
    from_argv = reference_kwargs_from_flags(preset["library"], preset["readme_flags"].split(), kind)
    assert from_argv == from_string


# ---------------------------------------------------------------- defaults


def test_idm_defaults_without_flags():
    cls, kw = reference_kwargs_from_flags(IDM, "")
    assert cls == "UNetModel"
    assert kw == {
        "in_channels": 3,
        "model_channels": 128,
        "out_channels": 3,
        "num_res_blocks": 2,
        "attention_resolutions": [4, 8],  # "16,8" at image_size 64
        "dropout": 0.0,
        "channel_mult": [1, 2, 3, 4],
        "num_classes": None,
        "use_checkpoint": False,
        "num_heads": 4,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
    }


def test_adm_defaults_without_flags():
    cls, kw = reference_kwargs_from_flags(ADM, [])
    assert cls == "UNetModel"
    assert kw["image_size"] == 64
    assert kw["channel_mult"] == [1, 2, 3, 4]
    assert kw["attention_resolutions"] == [4, 8]
    assert kw["out_channels"] == 3
    assert kw["num_head_channels"] == -1
    assert kw["resblock_updown"] is False
    assert kw["use_fp16"] is False
    assert kw["use_new_attention_order"] is False
    assert "dims" not in kw and "conv_resample" not in kw


def test_sr_defaults_use_large_size_256():
    for lib in (IDM, ADM):
        cls, kw = reference_kwargs_from_flags(lib, "", "sr")
        assert cls == "SuperResModel"
        assert kw["channel_mult"] == [1, 1, 2, 2, 4, 4]
        assert kw["attention_resolutions"] == [16, 32]


def test_adm_sr_512_reuses_256_channel_mult():
    _, kw = reference_kwargs_from_flags(ADM, "--large_size 512 --small_size 128", "sr")
    assert kw["channel_mult"] == [1, 1, 2, 2, 4, 4]
    assert kw["image_size"] == 512


def test_classifier_defaults():
    cls, kw = reference_kwargs_from_flags(ADM, {}, "classifier")
    assert cls == "EncoderUNetModel"
    assert kw["attention_resolutions"] == [2, 4, 8]  # "32,16,8" at 64
    assert kw["num_head_channels"] == 64
    assert kw["pool"] == "attention"
    assert kw["out_channels"] == 1000


def test_reference_flag_defaults_sets():
    idm = reference_flag_defaults(IDM)
    assert "sigma_small" in idm and "use_fp16" not in idm and "channel_mult" not in idm
    assert idm["rescale_timesteps"] is True
    adm = reference_flag_defaults(ADM)
    assert "sigma_small" not in adm and adm["rescale_timesteps"] is False
    idm_sr = reference_flag_defaults(IDM, "sr")
    assert "image_size" not in idm_sr and "sigma_small" not in idm_sr
    assert (idm_sr["large_size"], idm_sr["small_size"]) == (256, 64)
    adm_sr = reference_flag_defaults(ADM, "sr")
    assert not {"image_size", "channel_mult", "use_new_attention_order"} & set(adm_sr)
    assert {"use_fp16", "resblock_updown", "num_head_channels"} <= set(adm_sr)
    clf = reference_flag_defaults(ADM, "classifier")
    assert clf["classifier_attention_resolutions"] == "32,16,8"
    # Returned dict is a copy.
    clf["image_size"] = 1
    assert reference_flag_defaults(ADM, "classifier")["image_size"] == 64


# ---------------------------------------------------------------- flag semantics


def test_learn_sigma_doubles_out_channels_and_class_cond_sets_1000():
    _, off = reference_kwargs_from_flags(IDM, "--learn_sigma False --class_cond False")
    _, on = reference_kwargs_from_flags(IDM, "--learn_sigma True --class_cond True")
    assert (off["out_channels"], off["num_classes"]) == (3, None)
    assert (on["out_channels"], on["num_classes"]) == (6, 1000)


def test_attention_resolutions_converted_in_flag_order():
    _, kw = reference_kwargs_from_flags(IDM, "--image_size 256 --attention_resolutions 8,32,16")
    assert kw["attention_resolutions"] == [32, 8, 16]


def test_diffusion_only_flags_are_accepted_but_do_not_change_kwargs():
    base = reference_kwargs_from_flags(IDM, "--image_size 32")
    with_diffusion = reference_kwargs_from_flags(
        IDM,
        "--image_size 32 --diffusion_steps 4000 --noise_schedule cosine --use_kl True "
        "--predict_xstart True --rescale_timesteps False --rescale_learned_sigmas False "
        "--sigma_small True --timestep_respacing ddim25",
    )
    assert with_diffusion == base
    adm_base = reference_kwargs_from_flags(ADM, "", "classifier")
    adm_diff = reference_kwargs_from_flags(
        ADM, "--learn_sigma True --diffusion_steps 250 --timestep_respacing 250", "classifier"
    )
    assert adm_diff == adm_base  # learn_sigma does not reach create_classifier


def test_small_size_is_ignored_by_sr_create_model():
    a = reference_kwargs_from_flags(IDM, "--small_size 64", "sr")
    b = reference_kwargs_from_flags(IDM, "--small_size 32", "sr")
    assert a == b


def test_adm_explicit_channel_mult_overrides_image_size_table():
    _, kw = reference_kwargs_from_flags(ADM, "--image_size 32 --channel_mult 1,2,2,2")
    assert kw["channel_mult"] == [1, 2, 2, 2]
    assert kw["attention_resolutions"] == [2, 4]


def test_channel_mult_half_stays_float_at_512():
    _, kw = reference_kwargs_from_flags(ADM, "--image_size 512")
    assert kw["channel_mult"][0] == 0.5 and isinstance(kw["channel_mult"][0], float)
    assert kw["channel_mult"][1:] == [1, 1, 2, 2, 4, 4]


def test_equals_syntax_and_mixed_forms():
    spaced = reference_kwargs_from_flags(ADM, "--image_size 128 --num_channels 256 --dropout 0.1")
    equals = reference_kwargs_from_flags(ADM, "--image_size=128 --num_channels=256 --dropout=0.1")
    mixed = reference_kwargs_from_flags(ADM, ["--image_size=128", "--num_channels", "256", "--dropout=0.1"])
    assert spaced == equals == mixed
    assert equals[1]["model_channels"] == 256
    assert equals[1]["dropout"] == pytest.approx(0.1)


def test_last_repeated_flag_wins_like_argparse():
    _, kw = reference_kwargs_from_flags(IDM, "--num_channels 64 --num_channels 96")
    assert kw["model_channels"] == 96


def test_negative_number_is_a_value():
    _, kw = reference_kwargs_from_flags(IDM, "--num_heads_upsample -1 --num_heads 2")
    assert kw["num_heads_upsample"] == -1 and kw["num_heads"] == 2


def test_quoted_string_is_shlex_split():
    _, kw = reference_kwargs_from_flags(ADM, "--attention_resolutions '32,16' --image_size 256")
    assert kw["attention_resolutions"] == [8, 16]


def test_mapping_input_native_and_string_values():
    native = reference_kwargs_from_flags(
        ADM,
        {
            "image_size": 256,
            "num_channels": 256,
            "learn_sigma": True,
            "class_cond": True,
            "attention_resolutions": [32, 16, 8],
            "dropout": 0,
            "num_head_channels": 64,
            "resblock_updown": True,
            "use_fp16": True,
        },
    )
    strings = reference_kwargs_from_flags(
        ADM,
        {
            "--image_size": "256",
            "--num_channels": "256",
            "--learn_sigma": "True",
            "--class_cond": "yes",
            "--attention_resolutions": "32,16,8",
            "--dropout": "0.0",
            "--num_head_channels": "64",
            "--resblock_updown": "1",
            "--use_fp16": "t",
        },
    )
    assert native == strings
    preset = next(p for p in PRESETS if p["name"] == "adm_imagenet256_cond")
    assert native == (preset["class"], preset["kwargs"])
    assert isinstance(native[1]["dropout"], float)


def test_mapping_rejects_wrong_python_types():
    with pytest.raises(FlagError, match=r"--num_channels: expected an integer, got 12\.5"):
        reference_kwargs_from_flags(IDM, {"num_channels": 12.5})
    with pytest.raises(FlagError, match=r"--learn_sigma: expected a boolean"):
        reference_kwargs_from_flags(IDM, {"learn_sigma": 1})
    with pytest.raises(FlagError, match=r"--num_res_blocks: expected an integer, got True"):
        reference_kwargs_from_flags(IDM, {"num_res_blocks": True})


def test_mapping_same_flag_twice_is_an_error():
    with pytest.raises(FlagError, match="given twice"):
        reference_kwargs_from_flags(IDM, {"dropout": 0.1, "--dropout": 0.2})


@pytest.mark.parametrize("text", ["yes", "True", "TRUE", "t", "Y", "1"])
def test_str2bool_true(text):
    assert str2bool(text) is True
    _, kw = reference_kwargs_from_flags(IDM, ["--learn_sigma", text])
    assert kw["out_channels"] == 6


@pytest.mark.parametrize("text", ["no", "False", "f", "N", "0"])
def test_str2bool_false(text):
    assert str2bool(text) is False
    _, kw = reference_kwargs_from_flags(IDM, ["--use_scale_shift_norm", text])
    assert kw["use_scale_shift_norm"] is False


@pytest.mark.parametrize("text", ["maybe", "2", "", " true", "on"])
def test_str2bool_rejects(text):
    with pytest.raises(FlagError, match="boolean value expected"):
        str2bool(text)
    with pytest.raises(FlagError, match=r"--class_cond: expected a boolean"):
        reference_kwargs_from_flags(IDM, ["--class_cond", text])


def test_str2bool_passes_bools_through():
    assert str2bool(True) is True and str2bool(False) is False


# ---------------------------------------------------------------- errors


def test_unknown_flag_names_it_suggests_and_lists_valid():
    with pytest.raises(FlagError, match=r"unknown flag --num_chanels") as info:
        reference_kwargs_from_flags(IDM, "--num_chanels 128")
    msg = str(info.value)
    assert "Did you mean --num_channels" in msg
    assert "Valid flags: --image_size, --num_channels" in msg
    assert "--use_scale_shift_norm" in msg


def test_unknown_flag_equals_form():
    with pytest.raises(
        FlagError,
        match=r"unknown flag --atention_resolutions.*"
        r"Did you mean --attention_resolutions",
    ):
        reference_kwargs_from_flags(ADM, "--atention_resolutions=16")


def test_script_only_flag_is_rejected_with_explanation():
    # IDM's use_fp16 lives in image_train.py's own defaults, not in script_util.
    with pytest.raises(FlagError, match=r"unknown flag --use_fp16 .*training/sampling scripts"):
        reference_kwargs_from_flags(IDM, "--use_fp16 True")
    with pytest.raises(FlagError, match=r"unknown flag --classifier_scale"):
        reference_kwargs_from_flags(ADM, "--classifier_scale 1.0", "classifier")


def test_flag_of_another_kind_is_rejected():
    with pytest.raises(FlagError, match=r"--image_size .*kind 'model'.*--large_size"):
        reference_kwargs_from_flags(ADM, "--image_size 256", "sr")
    with pytest.raises(FlagError, match=r"--classifier_depth .*kind 'classifier'"):
        reference_kwargs_from_flags(ADM, "--classifier_depth 4", "model")
    with pytest.raises(FlagError, match=r"unknown flag --channel_mult for improved-diffusion"):
        reference_kwargs_from_flags(IDM, "--channel_mult 1,2,2,2")
    with pytest.raises(FlagError, match=r"unknown flag --use_new_attention_order"):
        reference_kwargs_from_flags(ADM, "--use_new_attention_order True", "sr")


def test_abbreviated_flag_is_rejected_with_full_name_suggested():
    with pytest.raises(FlagError, match=r"unknown flag --num_res\b.*Did you mean --num_res_blocks"):
        reference_kwargs_from_flags(IDM, "--num_res 3")


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        ("--num_channels 12x", r"--num_channels: expected an integer, got '12x'"),
        ("--image_size 64.0", r"--image_size: expected an integer, got '64\.0'"),
        ("--dropout abc", r"--dropout: expected a float, got 'abc'"),
        ("--learn_sigma yes_please", r"--learn_sigma: expected a boolean"),
        ("--attention_resolutions 16,x", r"--attention_resolutions: expected comma-separated"),
        ("--attention_resolutions 16,", r"--attention_resolutions: expected comma-separated"),
        ("--attention_resolutions 0", r"--attention_resolutions: resolutions must be positive"),
        ("--channel_mult 0.5,1,1", r"--channel_mult: expected comma-separated integers"),
    ],
)
def test_unparseable_value_names_flag_and_type(flags, pattern):
    with pytest.raises(FlagError, match=pattern):
        reference_kwargs_from_flags(ADM, flags)


def test_classifier_pool_must_exist():
    with pytest.raises(FlagError, match=r"--classifier_pool: 'max'.*adaptive, attention"):
        reference_kwargs_from_flags(ADM, "--classifier_pool max", "classifier")


def test_missing_value_and_positional_argument():
    with pytest.raises(FlagError, match=r"--num_channels expected one argument"):
        reference_kwargs_from_flags(IDM, "--num_channels")
    with pytest.raises(FlagError, match=r"--num_channels expected one argument"):
        reference_kwargs_from_flags(IDM, "--num_channels --dropout 0.1")
    with pytest.raises(FlagError, match=r"unexpected argument '64'"):
        reference_kwargs_from_flags(IDM, "64 --num_channels 128")


def test_unbalanced_quote_is_a_flag_error():
    with pytest.raises(FlagError, match="cannot split flag string"):
        reference_kwargs_from_flags(IDM, "--dropout '0.1")


@pytest.mark.parametrize(
    ("library", "flags", "kind", "pattern"),
    [
        (IDM, "--image_size 128", "model", r"unsupported image_size 128 .*supported: 32, 64, 256"),
        (
            ADM,
            "--image_size 32",
            "model",
            r"unsupported image_size 32 .*supported: 64, 128, 256, 512 \(or pass --channel_mult",
        ),
        (IDM, "--large_size 512", "sr", r"unsupported large_size 512 .*supported: 64, 256$"),
        (ADM, "--large_size 128", "sr", r"unsupported large_size 128 .*supported: 64, 256, 512"),
        (
            ADM,
            "--image_size 32",
            "classifier",
            r"unsupported image_size 32 for guided-diffusion create_classifier; "
            r"supported: 64, 128, 256, 512",
        ),
    ],
)
def test_unsupported_image_size(library, flags, kind, pattern):
    with pytest.raises(FlagError, match=pattern):
        reference_kwargs_from_flags(library, flags, kind)


def test_unknown_library_lists_valid_ones():
    with pytest.raises(
        FlagError,
        match=r"unknown library 'improved_diffusion'\. Did you mean "
        r"'improved-diffusion'\?.*'guided-diffusion'",
    ):
        reference_kwargs_from_flags("improved_diffusion", "")


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(FlagError, match=r"unknown kind 'upsampler'.*'model'.*'sr'.*'classifier'"):
        reference_kwargs_from_flags(ADM, "", "upsampler")


def test_classifier_for_improved_diffusion_is_an_error():
    with pytest.raises(FlagError, match=r"improved-diffusion has no classifier"):
        reference_kwargs_from_flags(IDM, "--image_size 64", "classifier")
    with pytest.raises(FlagError, match=r"improved-diffusion has no classifier"):
        reference_flag_defaults(IDM, "classifier")


def test_flag_error_is_a_value_error():
    assert issubclass(FlagError, ValueError)
    with pytest.raises(ValueError):
        reference_kwargs_from_flags(IDM, "--bogus 1")


def test_wrong_flags_container_type_is_a_type_error():
    with pytest.raises(TypeError, match="flags must be a string"):
        reference_kwargs_from_flags(IDM, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("module", ["argv", "create", "flag_defaults"])
def test_flag_emulation_is_stdlib_only(module):
    import ast

    path = Path(__file__).parent.parent / "idmzoo" / "reference" / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])  # relative imports stay inside idmzoo
    assert imported <= {"__future__", "collections", "numbers", "re", "shlex"}


# ---------------------------------------------------------------- consistency-models


@pytest.mark.parametrize("case", CM_CASES, ids=[c["name"] for c in CM_CASES])
def test_cm_flags_reproduce_reference_create_model_kwargs(case):
    if "error" in case:  # the reference create_model raised
        with pytest.raises(FlagError, match=r"unsupported image_size .*consistency-models create_model"):
            reference_kwargs_from_flags(CM, case["flags"])
        return
    cls, kwargs = reference_kwargs_from_flags(CM, case["flags"])
    assert cls == case["class"]
    assert _normalise(kwargs) == _normalise(case["kwargs"])


def test_cm_defaults_differ_from_adm_only_where_the_reference_does():
    cm, adm = reference_flag_defaults(CM), reference_flag_defaults(ADM)
    assert cm["attention_resolutions"] == "32,16,8" and adm["attention_resolutions"] == "16,8"
    assert {"sigma_min", "sigma_max", "weight_schedule"} <= set(cm) - set(adm)
    assert "diffusion_steps" not in cm and "noise_schedule" not in cm
    with pytest.raises(FlagError, match=r"consistency-models has no sr .*consistency-models: 'model'$"):
        reference_kwargs_from_flags(CM, "", "sr")


def test_cm_diffusion_only_flags_are_accepted_but_do_not_change_kwargs():
    base = reference_kwargs_from_flags(CM, "--image_size 64")
    tuned = reference_kwargs_from_flags(
        CM, "--image_size 64 --sigma_min 0.01 --sigma_max 40 --weight_schedule uniform"
    )
    assert tuned == base


def test_cm_script_only_flags_are_rejected_with_explanation():
    with pytest.raises(FlagError, match=r"--teacher_model_path .*training/sampling scripts"):
        reference_kwargs_from_flags(CM, "--teacher_model_path edm.pt")
    with pytest.raises(FlagError, match=r"--sampler .*training/sampling scripts"):
        reference_kwargs_from_flags(CM, "--sampler onestep")
