"""Self-describing saved models: idmzoo.save / load / from_pretrained, and what they refuse to load."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import idmzoo
from idmzoo import ArtifactError, RequirementError, SpecVersionError
from tests.cli_runner import pip_install, run_python, throwaway_site
from tests.fixtures import TINY

ROOT = Path(__file__).resolve().parent.parent
RMSNORM = "idmzoo-rmsnorm"

#: One small spec per family; each test puts the plugin's rms_norm in it.
FAMILIES = {
    "unet": {**TINY, "num_classes": 3},
    "superres_unet": {**TINY, "family": "superres_unet"},
    "encoder_unet": {**TINY, "family": "encoder_unet", "out_channels": 5, "pool": "adaptive"},
}


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, so zero-initialised layers cannot hide a wrong load."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def run(model: torch.nn.Module) -> torch.Tensor:
    spec = model.spec
    generator = torch.Generator().manual_seed(1)
    side = (2,) * (spec.dims == 3) + (8,) * min(spec.dims, 2)
    x = torch.randn(2, spec.in_channels, *side, generator=generator)
    kwargs = {}
    if spec.family.type == "superres_unet":
        kwargs["low_res"] = torch.randn(2, spec.in_channels, *(s // 2 for s in side), generator=generator)
    if spec.num_classes:
        kwargs["y"] = torch.tensor([0, 2])
    with torch.no_grad():
        return model.eval()(x, torch.tensor([3.0, 517.0]), **kwargs)


def rms_model(family: str = "unet", **fields) -> torch.nn.Module:
    return randomized(idmzoo.build({**FAMILIES[family], "norm": {"type": "rms_norm"}, **fields}))


def rewritten(path: Path, target: Path, **changes: str) -> Path:
    """A copy of a saved file with some metadata entries replaced (as another version would write)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = {**handle.metadata(), **changes}
    save_file(load_file(str(path)), str(target), metadata=metadata)
    return target


@pytest.fixture
def saved(tmp_path) -> Path:
    return idmzoo.save(rms_model(), tmp_path / "model.safetensors")


# -- acceptance: save → load is bit-identical, and the file describes itself -----------------------


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_then_load_gives_bit_identical_outputs_for_every_family_and_dims(tmp_path, family, dims):
    model = rms_model(family, dims=dims)
    path = idmzoo.save(model, tmp_path / "m.safetensors")
    loaded = idmzoo.load(path)
    assert type(loaded) is type(model) and loaded.spec == model.spec
    assert torch.equal(run(loaded), run(model))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_the_file_opens_with_safe_open_and_its_metadata_holds_spec_versions_and_the_plugin(saved):
    with safe_open(str(saved), framework="pt") as handle:
        metadata = handle.metadata()
        assert set(handle.keys()) == set(rms_model().state_dict())
    spec = json.loads(metadata["idmzoo.spec"])
    assert spec["spec_version"] == idmzoo.SPEC_VERSION == 2
    assert idmzoo.load_spec(spec) == rms_model().spec
    requirements = json.loads(metadata["idmzoo.requirements"])
    assert requirements == {"idmzoo": idmzoo.__version__, RMSNORM: importlib.metadata.version(RMSNORM)}
    blocks = {b["path"]: b for b in json.loads(metadata["idmzoo.blocks"])}
    assert blocks["norm"] == {"path": "norm", "kind": "norm", "name": "rms_norm", "package": RMSNORM}
    assert metadata["idmzoo.version"] == idmzoo.__version__ and metadata["format"] == "pt"
    assert metadata["idmzoo.spec_version"] == "2" and metadata["idmzoo.format_version"] == "1"


def test_an_fp16_torso_keeps_its_dtypes_and_its_bits(tmp_path):
    model = rms_model(use_fp16=True)
    model.convert_to_fp16()  # randomized() wrote float32 values into fp16 convs already; keep them
    loaded = idmzoo.load(idmzoo.save(model, tmp_path / "m.safetensors"))
    assert loaded.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert loaded.time_embed[0].weight.dtype == torch.float32
    assert torch.equal(run(loaded), run(model))


def test_tied_and_non_contiguous_tensors_are_saved_and_tied_again(tmp_path):
    model = rms_model()
    block = model.input_blocks[1][0]
    block.out_layers[0].weight = block.in_layers[0].weight  # two names, one tensor (safetensors refuses)
    conv = block.in_layers[2]
    conv.weight = torch.nn.Parameter(conv.weight.detach().transpose(0, 1).contiguous().transpose(0, 1))
    assert not conv.weight.is_contiguous()
    path = idmzoo.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        shared = json.loads(handle.metadata()["idmzoo.shared"])
    assert shared == {"input_blocks.1.0.out_layers.0.weight": "input_blocks.1.0.in_layers.0.weight"}
    loaded = idmzoo.load(path)
    tied = loaded.input_blocks[1][0]
    assert tied.out_layers[0].weight.data_ptr() == tied.in_layers[0].weight.data_ptr()
    assert torch.equal(run(loaded), run(model))


def test_load_builds_on_meta_and_takes_the_files_tensors(saved, monkeypatch):
    import idmzoo.pretrained

    devices = []
    real = idmzoo.pretrained.build
    monkeypatch.setattr(
        idmzoo.pretrained, "build", lambda spec, **kw: devices.append(kw["device"]) or real(spec, **kw)
    )
    loaded = idmzoo.load(saved)
    assert devices == ["meta"]
    assert not any(t.is_meta for t in loaded.state_dict().values())


def test_a_meta_model_or_a_plain_module_is_not_saved(tmp_path):
    with pytest.raises(ArtifactError, match="meta device"):
        idmzoo.save(idmzoo.build(TINY, device="meta"), tmp_path / "m.safetensors")
    with pytest.raises(ArtifactError, match="only save an idmzoo model"):
        idmzoo.save(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_your_own_metadata_is_kept_and_idmzoo_keys_are_refused(tmp_path):
    path = idmzoo.save(rms_model(), tmp_path / "m.safetensors", metadata={"licence": "MIT"})
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["licence"] == "MIT"
    with pytest.raises(ValueError, match="idmzoo's own"):
        idmzoo.save(rms_model(), tmp_path / "n.safetensors", metadata={"idmzoo.spec": "{}"})


# -- refusing what this environment would not build as saved ----------------------------------------


def test_a_block_from_a_distribution_that_is_not_installed_fails_in_one_line_with_pip_install(
    saved, tmp_path
):
    blocks = saved_metadata(saved, "idmzoo.blocks").replace('"rms_norm"', '"rms_norm_gone"')
    gone = rewritten(
        saved,
        tmp_path / "gone.safetensors",
        **{
            "idmzoo.blocks": blocks.replace(RMSNORM, "idmzoo-fake-gone"),
            "idmzoo.requirements": json.dumps({"idmzoo": idmzoo.__version__, "idmzoo-fake-gone": "1.2.0"}),
        },
    )
    with pytest.raises(RequirementError) as caught:
        idmzoo.load(gone)
    message = str(caught.value)
    assert "\n" not in message
    assert "norm block 'rms_norm_gone' (spec field norm)" in message
    assert 'pip install "idmzoo-fake-gone>=1.2.0"' in message


def saved_metadata(path: Path, key: str) -> str:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()[key]


@pytest.mark.slow
def test_loading_with_the_plugin_uninstalled_says_pip_install_the_plugin(tmp_path):
    """A renamed copy of idmzoo-rmsnorm is installed in a throwaway folder, saves a model, and is removed."""
    source = tmp_path / "idmzoo-rmsnorm-copy"
    shutil.copytree(ROOT / "plugins" / RMSNORM, source, ignore=shutil.ignore_patterns("tests", "*.egg-info"))
    (source / "src" / "idmzoo_rmsnorm").rename(source / "src" / "idmzoo_rmsnorm_copy")
    pyproject = source / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        .replace('name = "idmzoo-rmsnorm"', 'name = "idmzoo-rmsnorm-copy"')
        .replace('"idmzoo_rmsnorm:register"', '"idmzoo_rmsnorm_copy:register"')
    )
    module = source / "src" / "idmzoo_rmsnorm_copy" / "__init__.py"
    module.write_text(module.read_text().replace('"rms_norm",', '"rms_norm_copy",'))
    path = tmp_path / "m.safetensors"
    script = (
        "import sys, idmzoo; from tests.fixtures import TINY; "
        "idmzoo.save(idmzoo.build({**TINY, 'norm': 'rms_norm_copy'}), sys.argv[1])"
    )
    with throwaway_site(tmp_path) as site:
        pip_install(site, source)
        result = run_python("-c", script, path, PYTHONPATH=f"{site}:{ROOT}")
        assert result.returncode == 0, result.stderr
    with pytest.raises(RequirementError) as caught:  # the site is gone: so is the plugin
        idmzoo.load(path)
    message = str(caught.value)
    assert "\n" not in message and "norm block 'rms_norm_copy' (spec field norm)" in message
    assert 'pip install "idmzoo-rmsnorm-copy>=0.1.0"' in message


def test_the_same_block_name_from_another_distribution_is_refused(saved, tmp_path):
    other = rewritten(
        saved,
        tmp_path / "other.safetensors",
        **{"idmzoo.blocks": saved_metadata(saved, "idmzoo.blocks").replace(RMSNORM, "idmzoo-fake-other")},
    )
    with pytest.raises(
        RequirementError, match="saved from idmzoo-fake-other, but here idmzoo-rmsnorm provides it"
    ):
        idmzoo.load(other)


@pytest.mark.parametrize(
    ("distribution", "version", "expected"),
    [
        (
            RMSNORM,
            "9.0.0",
            f'written with {RMSNORM} 9.0.0, and 0.1.0 is installed: pip install "{RMSNORM}>=9.0.0"',
        ),
        (
            RMSNORM,
            "0.0.3",
            f'newer release series that may build its blocks differently: pip install "{RMSNORM}>=0.0.3,<0.1"',
        ),
        ("idmzoo", "99.0", 'pip install "idmzoo>=99.0"'),
    ],
)
def test_an_older_or_a_newer_series_is_refused_clearly(saved, tmp_path, distribution, version, expected):
    requirements = {"idmzoo": idmzoo.__version__, RMSNORM: "0.1.0", distribution: version}
    other = rewritten(saved, tmp_path / "v.safetensors", **{"idmzoo.requirements": json.dumps(requirements)})
    with pytest.raises(RequirementError) as caught:
        idmzoo.load(other)
    assert expected in str(caught.value)


def test_check_versions_false_turns_version_differences_into_warnings(saved, tmp_path):
    requirements = {"idmzoo": idmzoo.__version__, RMSNORM: "9.0.0"}
    other = rewritten(saved, tmp_path / "v.safetensors", **{"idmzoo.requirements": json.dumps(requirements)})
    with pytest.warns(idmzoo.IdmzooPluginWarning, match="9.0.0"):
        model = idmzoo.load(other, check_versions=False)
    assert torch.equal(run(model), run(idmzoo.load(saved)))


def test_a_newer_file_format_or_spec_version_is_refused(saved, tmp_path):
    newer = rewritten(saved, tmp_path / "f.safetensors", **{"idmzoo.format_version": "2"})
    with pytest.raises(
        ArtifactError, match="file format 2; this idmzoo reads format 1: pip install --upgrade"
    ):
        idmzoo.load(newer)
    spec = json.loads(saved_metadata(saved, "idmzoo.spec"))
    newer = rewritten(
        saved, tmp_path / "s.safetensors", **{"idmzoo.spec": json.dumps({**spec, "spec_version": 3})}
    )
    with pytest.raises(SpecVersionError, match="spec_version 3.*up to 2: pip install --upgrade idmzoo"):
        idmzoo.load(newer)


def test_a_safetensors_file_without_idmzoo_metadata_is_named_as_such(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ArtifactError, match="without idmzoo metadata"):
        idmzoo.load(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ArtifactError, match="not a readable .safetensors file"):
        idmzoo.load(tmp_path / "junk.safetensors")


# -- pretrained folders -------------------------------------------------------------------------------


def test_save_pretrained_writes_weights_spec_and_a_model_card_and_from_pretrained_loads_both_forms(tmp_path):
    model = rms_model()
    folder = model.save_pretrained(tmp_path / "tiny-rms")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.safetensors", "spec.json"]
    assert idmzoo.load_spec(folder / "spec.json") == model.spec
    assert json.loads((folder / "spec.json").read_text())["spec_version"] == 2
    card = (folder / "README.md").read_text()
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in card
    assert str(idmzoo.summarize(model)) in card  # blocks per stage
    assert f"| `{RMSNORM}` | 0.1.0 | `norm: rms_norm` |" in card
    assert 'idmzoo.from_pretrained("path/to/this/folder")' in card
    for source in (folder, folder / "model.safetensors"):
        assert torch.equal(run(idmzoo.from_pretrained(source)), run(model))


def test_from_pretrained_refuses_a_folder_whose_spec_copy_differs_or_that_has_no_weights(tmp_path):
    folder = rms_model().save_pretrained(tmp_path / "m")
    edited = json.loads((folder / "spec.json").read_text())
    (folder / "spec.json").write_text(json.dumps({**edited, "dropout": 0.3}))
    with pytest.raises(
        ArtifactError, match=r"differs from the spec stored in model.safetensors \(at dropout\)"
    ):
        idmzoo.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="has no model.safetensors"):
        idmzoo.from_pretrained(folder)


def test_save_unwraps_data_parallel(tmp_path):
    model = rms_model()
    loaded = idmzoo.load(idmzoo.save(torch.nn.DataParallel(model), tmp_path / "m.safetensors"))
    assert torch.equal(run(loaded), run(model))


def test_from_pretrained_says_what_to_install_before_reading_the_spec_copy(saved, tmp_path):
    folder = rms_model().save_pretrained(tmp_path / "m")
    gone = rewritten(
        saved,
        tmp_path / "gone.safetensors",
        **{"idmzoo.blocks": saved_metadata(saved, "idmzoo.blocks").replace(RMSNORM, "idmzoo-fake-gone")},
    )
    gone.replace(folder / "model.safetensors")
    with pytest.raises(RequirementError, match='pip install "idmzoo-fake-gone"'):
        idmzoo.from_pretrained(folder)
