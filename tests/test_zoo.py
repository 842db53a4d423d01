"""The zoo: catalogue vs. the reference presets, spec files, create() with overrides, meta builds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import idmzoo
from idmzoo.cli import main
from idmzoo.errors import UnknownModelError
from idmzoo.zoo import get_entry, zoo_spec
from tests.fixtures import presets

ROOT = Path(__file__).resolve().parent.parent
PRESETS = presets()
PRESET_IDS = [p["name"] for p in PRESETS]
KIND_OF = {
    "script_util.create_model": "model",
    "script_util.sr_create_model": "sr",
    "script_util.create_classifier": "classifier",
}
CONSOLE_SCRIPT = Path(sys.executable).parent / "idmzoo"


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- acceptance: every preset, from its flags and from its spec file ------------------------


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_preset_flags_and_spec_file_build_to_the_reference_parameter_count(preset):
    from_flags = idmzoo.spec_from_flags(
        preset["library"], preset["readme_flags"], KIND_OF[preset["built_via"]]
    )
    from_file = idmzoo.load_spec(ROOT / "specs" / f"{preset['name']}.json")
    assert from_file == from_flags
    for spec in (from_flags, from_file):
        model = idmzoo.build(spec, device="meta")
        assert all(p.is_meta for p in model.parameters())
        assert parameter_count(model) == preset["param_count"]


@pytest.mark.parametrize("preset", PRESETS, ids=PRESET_IDS)
def test_catalogue_entry_is_the_preset(preset):
    entry = get_entry(preset["name"])
    assert (entry.library, entry.kind, entry.readme_flags, entry.param_count) == (
        preset["library"],
        KIND_OF[preset["built_via"]],
        preset["readme_flags"],
        preset["param_count"],
    )
    assert entry.spec().family.type == entry.family
    assert entry.checkpoints and all(name.endswith(".pt") for name in entry.checkpoints)


def test_zoo_lists_exactly_the_presets_with_a_spec_file_each():
    names = [entry.name for entry in idmzoo.list_models()]
    assert sorted(names) == sorted(PRESET_IDS)
    assert all((ROOT / "specs" / f"{name}.json").is_file() for name in names)


def test_spec_files_are_what_the_generator_writes(capsys):
    loader = importlib.util.spec_from_file_location("make_zoo_specs", ROOT / "tools/make_zoo_specs.py")
    generator = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(generator)
    assert generator.main(["--check"]) == 0, capsys.readouterr().out
    assert "0 zoo spec file(s) stale" in capsys.readouterr().out


def test_docs_catalogue_table_lists_every_entry_with_its_parameter_count():
    rows = {
        line.split("|")[1].strip(" `"): line
        for line in (ROOT / "docs/zoo.md").read_text().splitlines()
        if line.startswith("| `")
    }
    for entry in idmzoo.list_models():
        assert f"| {entry.param_count:,} |" in rows[entry.name]
        assert all(checkpoint in rows[entry.name] for checkpoint in entry.checkpoints)


# -- list_models --------------------------------------------------------------------------


def test_list_models_filters_with_fnmatch_and_sorts_naturally():
    classifiers = [entry.name for entry in idmzoo.list_models("adm_classifier*")]
    assert classifiers == ["adm_classifier64", "adm_classifier128", "adm_classifier256", "adm_classifier512"]
    unconditional = idmzoo.list_models("*_uncond", exclude="idm_*")
    assert [entry.name for entry in unconditional] == ["adm_imagenet256_uncond"]
    assert idmzoo.list_models("nothing*") == []


# -- create and overrides -----------------------------------------------------------------


def test_create_builds_the_entry_and_applies_validated_overrides():
    model = idmzoo.create("idm_cifar10_uncond", device="meta", dropout=0.1)
    assert model.spec == zoo_spec("idm_cifar10_uncond").model_copy(update={"dropout": 0.1})
    assert parameter_count(model) == get_entry("idm_cifar10_uncond").param_count

    narrower = idmzoo.create("idm_cifar10_uncond", device="meta", model_channels=64)
    flags = get_entry("idm_cifar10_uncond").readme_flags.replace("--num_channels 128", "--num_channels 64")
    expected = idmzoo.build(idmzoo.spec_from_flags("improved-diffusion", flags), device="meta")
    assert parameter_count(narrower) == parameter_count(expected)


def test_create_runs_a_small_override_on_cpu():
    model = idmzoo.create("idm_cifar10_uncond", model_channels=32, num_res_blocks=1)
    out = model(torch.randn(1, 3, 32, 32), torch.tensor([10.0]))
    assert out.shape == (1, 6, 32, 32)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dropuot": 0.1}, "dropuot"),
        ({"dropout": 1.5}, "dropout"),
        ({"norm": {"type": "group_norm32", "num_groups": 7}}, "norm.num_groups"),
        ({"attention": {"type": "no_such_attention"}}, "attention.type"),
    ],
)
def test_bad_override_fails_naming_the_field(overrides, field):
    with pytest.raises(ValidationError) as info:
        idmzoo.create("idm_cifar10_uncond", device="meta", **overrides)
    locations = {".".join(str(part) for part in error["loc"]) for error in info.value.errors()}
    assert field in locations


def test_unknown_model_suggests_the_closest_names():
    with pytest.raises(
        UnknownModelError, match=r"unknown zoo model 'adm_imagenet256'\. Did you mean 'adm_imagenet256_cond'"
    ):
        idmzoo.create("adm_imagenet256")
    with pytest.raises(TypeError, match="model name must be a str, but got int"):
        idmzoo.create(256)


# -- meta device --------------------------------------------------------------------------


def test_largest_zoo_models_build_on_meta_without_allocating_weights():
    # How fast that is, is measured by benchmarks/bench_build.py, not asserted here.
    for name in ("adm_imagenet256_cond", "adm_imagenet512_cond"):
        model = idmzoo.create(name, device="meta")
        assert parameter_count(model) == get_entry(name).param_count
        assert all(t.is_meta for t in model.state_dict().values())


def test_torch_device_context_builds_on_meta():
    with torch.device("meta"):
        model = idmzoo.create("adm_imagenet128_cond")
    assert all(t.is_meta for t in model.state_dict().values())
    model.to_empty(device="cpu")
    assert not any(t.is_meta for t in model.state_dict().values())


# -- the command line ---------------------------------------------------------------------


def test_cli_list_models_prints_every_entry_with_its_parameter_count():
    result = subprocess.run([str(CONSOLE_SCRIPT), "list-models"], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "library", "family", "parameters", "description"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == [entry.name for entry in idmzoo.list_models()]
    for preset in PRESETS:
        assert rows[preset["name"]][1:4] == [
            preset["library"],
            get_entry(preset["name"]).family,
            f"{preset['param_count']:,}",
        ]


def test_cli_list_models_json_filters_by_pattern(capsys):
    assert main(["list-models", "idm_*", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in records] == [e.name for e in idmzoo.list_models("idm_*")]
    assert {r["name"]: r["param_count"] for r in records} == {
        p["name"]: p["param_count"] for p in PRESETS if p["name"].startswith("idm_")
    }
    assert records[0].keys() >= {"library", "kind", "family", "readme_flags", "checkpoints", "description"}


# -- packaging ----------------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_the_catalogue(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_text((ROOT / name).read_text())
    (source / "idmzoo").symlink_to(ROOT / "idmzoo", target_is_directory=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("idmzoo-*.whl")
    assert "idmzoo/zoo_catalog.json" in zipfile.ZipFile(wheel).namelist()
