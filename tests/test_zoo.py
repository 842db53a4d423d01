"""The zoo: catalogue vs. the reference presets and the sourced rows, provenance, spec files, create()."""

from __future__ import annotations

import importlib.util
import json
import re
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
#: The rows researched from each source's own factory (tools/zoo_sources.md).
SOURCES = json.loads((ROOT / "tools" / "zoo_sources.json").read_text())["models"]
SOURCE_IDS = [s["name"] for s in SOURCES]
#: Direct links of the OpenAI READMEs (improved-diffusion, guided-diffusion, consistency_models).
OPENAI_BLOB = {
    "improved-diffusion": "https://openaipublic.blob.core.windows.net/diffusion/march-2021/",
    "guided-diffusion": "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/",
    "consistency-models": "https://openaipublic.blob.core.windows.net/consistency/",
}


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


def test_zoo_lists_exactly_the_presets_and_the_sourced_rows_with_a_spec_file_each():
    names = [entry.name for entry in idmzoo.list_models()]
    assert sorted(names) == sorted(PRESET_IDS + SOURCE_IDS)
    assert all((ROOT / "specs" / f"{name}.json").is_file() for name in names)


# -- acceptance: every sourced row, from its spec file, zoo_spec and the source's flags ----------


def with_channels(spec: idmzoo.Spec, channels: dict | None) -> idmzoo.Spec:
    """The source's channel counts (BlindDPS) on a flag-built spec, as its own create_model sets them."""
    if not channels:
        return spec
    update = {"in_channels": channels["in_channels"], "out_channels": channels["out_channels"]}
    return idmzoo.Spec.model_validate({**spec.model_dump(), **update})


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
def test_sourced_row_builds_to_the_source_factory_count_every_way(source):
    entry = get_entry(source["name"])
    assert (entry.library, entry.kind, entry.family, entry.param_count) == (
        source["library"],
        source["kind"],
        source["family"],
        source["param_count"],
    )
    from_flags = with_channels(
        idmzoo.spec_from_flags(source["library"], source["flags"], source["kind"]),
        source["channel_overrides"],
    )
    from_file = idmzoo.load_spec(ROOT / "specs" / f"{source['name']}.json")
    assert from_file == zoo_spec(source["name"]) == from_flags
    for spec in (from_flags, from_file):
        assert parameter_count(idmzoo.build(spec, device="meta")) == source["param_count"]
    assert parameter_count(idmzoo.create(source["name"], device="meta")) == source["param_count"]


@pytest.mark.parametrize("name", ["blinddps_kernel64", "blinddps_tilt256"])
def test_channel_overrides_are_what_makes_blinddps_exact(name):
    source = next(s for s in SOURCES if s["name"] == name)
    flags_only = idmzoo.spec_from_flags("guided-diffusion", source["flags"])
    assert (flags_only.in_channels, flags_only.out_channels) == (3, 6)
    without = idmzoo.build(flags_only, device="meta")
    assert parameter_count(without) == source["channel_overrides"]["param_count_without_override"]
    spec = get_entry(name).spec()
    assert get_entry(name).spec_overrides == {
        "in_channels": source["channel_overrides"]["in_channels"],
        "out_channels": source["channel_overrides"]["out_channels"],
    }
    assert (spec.in_channels, spec.out_channels) == (
        source["channel_overrides"]["in_channels"],
        source["channel_overrides"]["out_channels"],
    )


@pytest.mark.parametrize("source", [s for s in SOURCES if s["library"] == "consistency-models"], ids=str)
def test_cm_rows_match_their_guided_diffusion_equivalent_flags(source):
    equivalent = idmzoo.spec_from_flags("guided-diffusion", source["guided_diffusion_equivalent_flags"])
    assert parameter_count(idmzoo.build(equivalent, device="meta")) == source["param_count"]


# -- consistency-models' checkpoint layout -------------------------------------------------------


def test_cm_imagenet64_state_dict_has_cm_conv2d_attention_shapes():
    """Keys and shapes as cm.unet builds them: guided-diffusion's, with 1x1 Conv2d qkv/proj_out."""
    state = idmzoo.create("cm_imagenet64", device="meta").state_dict()
    source = next(s for s in SOURCES if s["name"] == "cm_imagenet64")
    equivalent = idmzoo.build(
        idmzoo.spec_from_flags("guided-diffusion", source["guided_diffusion_equivalent_flags"]), device="meta"
    ).state_dict()
    attention = re.compile(r".*\.(qkv|proj_out)\.weight")  # proj_out of an attention block, not "out.2"
    expected = {
        k: (*v.shape, 1) if attention.fullmatch(k) and v.dim() == 3 else tuple(v.shape)
        for k, v in equivalent.items()
    }
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    qkv = {k: tuple(v.shape) for k, v in state.items() if k.endswith(".qkv.weight")}
    channels = sorted(shape[1] for shape in qkv.values())
    wanted = sorted(b["channels"] for b in source["attention_blocks"] for _ in range(b["count"]))
    assert channels == wanted  # 7 blocks of 384, 7 of 576, 8 of 768 in cm's own factory
    for key, (three_c, c, kh, kw) in qkv.items():
        assert (three_c, kh, kw) == (3 * c, 1, 1), key
        assert tuple(state[key.replace(".qkv.", ".proj_out.")].shape) == (c, c, 1, 1)


def test_cm_layout_state_dict_loads_strictly(tmp_path):
    """A checkpoint in cm's layout (4-D attention weights) loads into a small cm_imagenet64 variant."""
    small = {"model_channels": 64, "num_res_blocks": 1}
    flags = next(s for s in SOURCES if s["name"] == "cm_imagenet64")["guided_diffusion_equivalent_flags"]
    flags = flags.replace("--num_channels 192", "--num_channels 64").replace(
        "--num_res_blocks 3", "--num_res_blocks 1"
    )
    reference = idmzoo.build(idmzoo.spec_from_flags("guided-diffusion", flags), seed=0)  # Conv1d attention
    state = {
        k: v.unsqueeze(-1) if re.fullmatch(r".*\.(qkv|proj_out)\.weight", k) and v.dim() == 3 else v
        for k, v in reference.state_dict().items()
    }
    assert any(v.dim() == 4 and k.endswith(".qkv.weight") for k, v in state.items())
    torch.save(state, tmp_path / "cm_small.pt")
    model = idmzoo.load_checkpoint(
        idmzoo.create("cm_imagenet64", device="meta", **small), tmp_path / "cm_small.pt"
    )
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k].float(), v.float()) for k, v in state.items())


# -- provenance ------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", idmzoo.list_models(), ids=lambda e: e.name)
def test_every_entry_records_its_provenance(entry):
    assert re.fullmatch(r"[\w.-]+/[\w.-]+", entry.source.repo)
    assert re.fullmatch(r"[0-9a-f]{40}", entry.source.commit)
    assert entry.source.files and entry.source.flags_from
    assert entry.paper.title and re.fullmatch(r"\d{4}\.\d{5}", entry.paper.arxiv)
    assert entry.license.note and (entry.license.spdx is None) == (entry.license.file is None)
    assert entry.checkpoint_files and entry.checkpoints == tuple(c.file for c in entry.checkpoint_files)
    for record in entry.checkpoint_files:
        assert record.file.endswith(".pt")
        assert record.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", record.sha256)
        assert record.size is None or record.size > 0
        if record.url is None:
            assert record.page, f"{record.file}: no URL and no page to get it from"
        else:  # a direct download: Drive and OneDrive pages are not
            assert record.url.startswith("https://") and record.url.endswith("/" + record.file)
            assert not re.search(r"drive\.google\.com|1drv\.ms|onedrive", record.url)


def test_openai_checkpoint_urls_are_the_readme_links():
    for entry in idmzoo.list_models():
        if entry.source.repo.startswith("openai/"):
            assert [c.url for c in entry.checkpoint_files] == [
                OPENAI_BLOB[entry.library] + c.file for c in entry.checkpoint_files
            ], entry.name
    assert get_entry("adm_imagenet64_cond").checkpoint().url == (
        "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_diffusion.pt"
    )
    assert get_entry("idm_cifar10_uncond").checkpoint("cifar10_uncond_vlb_50M_500K.pt").url == (
        "https://openaipublic.blob.core.windows.net/diffusion/march-2021/cifar10_uncond_vlb_50M_500K.pt"
    )


@pytest.mark.parametrize("source", SOURCES, ids=SOURCE_IDS)
def test_sourced_row_provenance_is_the_research(source):
    entry = get_entry(source["name"])
    assert entry.checkpoints == tuple(source["checkpoints"])
    assert (entry.source.repo, entry.source.commit) == (source["source"]["repo"], source["source"]["commit"])
    assert (entry.paper.title, entry.paper.arxiv) == (source["paper"]["title"], source["paper"]["arxiv"])
    assert entry.license.spdx == source["license"]["spdx"]
    for record in entry.checkpoint_files:
        given = source["checkpoint_urls"].get(record.file)
        if given is not None and "drive.google.com" not in given:
            assert record.url == given
        else:
            assert record.url is None


def test_licences_that_restrict_use_are_recorded():
    assert {get_entry(n).license.spdx for n in ("repaint_celebahq256", "repaint_places256")} == {
        "CC-BY-NC-SA-4.0"
    }
    for name in ("blinddps_kernel64", "blinddps_tilt256"):
        assert get_entry(name).license.spdx is None and "no licence" in get_entry(name).license.note.lower()


def test_reported_metrics_are_the_readmes():
    fid = {m.name: m.value for m in get_entry("adm_imagenet256_cond").checkpoint().metrics}
    assert fid == {"FID": "4.59"}
    bedroom = get_entry("adm_lsun_256").checkpoint("lsun_bedroom.pt").metrics
    assert [(m.name, m.value) for m in bedroom] == [("FID", "1.90")]
    assert [m.value for m in get_entry("ddpmseg_ffhq256").checkpoint().metrics] == [
        "59.1 ± 1.4",
        "59.9 ± 1.0",
    ]
    assert get_entry("cm_imagenet64").checkpoint().metrics == ()


def test_checkpoint_file_names_are_unique_across_the_zoo():
    """They share one cache folder, so two entries must never name the same file."""
    files = [c for entry in idmzoo.list_models() for c in entry.checkpoints]
    assert len(files) == len(set(files))


def test_entries_sharing_a_network_say_so_and_only_they_do():
    networks: dict[tuple, list[str]] = {}
    for entry in idmzoo.list_models():
        state = idmzoo.create(entry.name, device="meta").state_dict()
        networks.setdefault(tuple((k, tuple(v.shape)) for k, v in state.items()), []).append(entry.name)
    for names in networks.values():
        for name in names:
            assert sorted(get_entry(name).shares_network_with) == sorted(set(names) - {name})
    assert "adm_lsun_256" in get_entry("repaint_celebahq256").shares_network_with


def test_unknown_checkpoint_suggests_the_entry_s_checkpoints():
    with pytest.raises(
        UnknownModelError, match=r"no checkpoint 'ct_imagenet.pt'\. Did you mean 'ct_imagenet64\.pt'"
    ):
        get_entry("cm_imagenet64").checkpoint("ct_imagenet.pt")
    assert get_entry("cm_imagenet64").checkpoint().file == "cd_imagenet64_l2.pt"


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


def test_docs_give_every_entry_s_paper_and_the_restrictive_licences():
    text = (ROOT / "docs/zoo.md").read_text()
    assert all(f"arXiv {entry.paper.arxiv}" in text for entry in idmzoo.list_models())
    assert "CC BY-NC-SA 4.0: non-commercial" in text and "has no licence file" in text
    assert "The zoo downloads nothing" not in text and "create(pretrained=True)" in text


# -- list_models --------------------------------------------------------------------------


def test_list_models_filters_with_fnmatch_and_sorts_naturally():
    classifiers = [entry.name for entry in idmzoo.list_models("adm_classifier*")]
    assert classifiers == ["adm_classifier64", "adm_classifier128", "adm_classifier256", "adm_classifier512"]
    unconditional = idmzoo.list_models("*_uncond", exclude=["idm_*", "*_256_*"])
    assert [entry.name for entry in unconditional] == ["adm_imagenet256_uncond"]
    assert idmzoo.list_models("nothing*") == []
    assert len(set(idmzoo.list_models())) == len(idmzoo.list_models())  # entries are hashable


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
    for preset in PRESETS + SOURCES:
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
    assert records[0]["checkpoint_files"][0]["url"].startswith(OPENAI_BLOB["improved-diffusion"])
    assert records[0]["source"]["repo"] == "openai/improved-diffusion"
    assert records[0]["paper"]["arxiv"] == "2102.09672"


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
