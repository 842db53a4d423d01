"""The package's structure: built-ins without metadata, one discovery owner, the public API, no cycles."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import idmzoo
import idmzoo.errors
from idmzoo import BlockContext, BlockParams, IdmzooError, IdmzooPluginWarning, PluginLoadError
from idmzoo.registry import BlockRegistry, core
from idmzoo.registry.discovery import BUILTIN_MODULES
from tests.fixtures import TINY

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "idmzoo"


def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd="/",
    )


# -- built-ins need no installed metadata ----------------------------------------------------


def test_a_copy_used_from_its_folder_builds_and_lists_every_builtin(tmp_path):
    """A vendored copy, with importlib.metadata seeing no distribution at all."""
    shutil.copytree(PACKAGE, tmp_path / "idmzoo", ignore=shutil.ignore_patterns("__pycache__"))
    script = """
        import importlib.metadata as md, json, sys
        md.entry_points = lambda **_: md.EntryPoints([])
        md.packages_distributions = lambda: {}
        md.distributions = lambda **_: iter(())
        import idmzoo
        assert idmzoo.__file__.startswith(sys.argv[1]), idmzoo.__file__
        model = idmzoo.build(sys.argv[2])
        print(json.dumps([[b.kind, b.name, b.package] for b in idmzoo.list_blocks()]))
    """
    site = ":".join(p for p in sys.path if "site-packages" in p)  # torch and pydantic, not idmzoo's metadata
    result = run(
        script, str(tmp_path), str(ROOT / "specs" / "idm_uncond_ssn.json"), PYTHONPATH=f"{tmp_path}:{site}"
    )
    assert result.returncode == 0, result.stderr
    listed = {(kind, name) for kind, name, package in json.loads(result.stdout) if package == "idmzoo"}
    expected = {(b.kind, b.name) for b in idmzoo.list_blocks() if b.package == "idmzoo"}
    assert listed == expected and len(expected) >= 17


def test_every_builtin_block_is_declared_beside_its_definition_not_in_a_central_list():
    assert not (PACKAGE / "builtins.py").exists()
    for info in idmzoo.list_blocks():
        if info.package == "idmzoo":
            module = info.params.__module__ if info.kind == "family" else info.factory.__module__
            assert module in BUILTIN_MODULES, (info.name, module)


def test_idmzoo_declares_no_entry_point_for_its_own_blocks():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'entry-points."idmzoo.blocks"' not in pyproject


# -- discovery: one owner, strict mode that keeps failing ---------------------------------------


def plugin_failing(registry: BlockRegistry) -> None:
    """What the loader records when a plugin raises: used to fake a broken distribution."""
    registry.failed_plugins.append(
        idmzoo.registry.discovery.PluginFailure("idmzoo-fake-broken", "x = y:z", "ImportError: nope")
    )
    registry.register("norm", "loaded_after", nn.Identity, BlockParams, "d", package="idmzoo-fake-later")


def test_strict_mode_fails_at_every_lookup_until_fixed_after_loading_what_it_could(monkeypatch):
    monkeypatch.setattr(BlockRegistry, "_load_plugins", plugin_failing)
    monkeypatch.setenv("IDMZOO_STRICT_PLUGINS", "1")
    registry = BlockRegistry()
    for _ in range(2):  # not once and then silently missing plugins
        with pytest.raises(PluginLoadError, match="idmzoo-fake-broken.*ImportError: nope"):
            registry.get("norm", "group_norm32")
    monkeypatch.delenv("IDMZOO_STRICT_PLUGINS")
    assert registry.get("norm", "loaded_after").package == "idmzoo-fake-later"


def test_unregister_before_first_use_discovers_first():
    registry = BlockRegistry()
    assert registry.unregister("norm", "group_norm32").package == "idmzoo"
    assert "group_norm32" not in registry.names("norm")


def test_plain_registration_after_an_override_warns_naming_both():
    registry = BlockRegistry(discover=False)
    registry.register("norm", "n", nn.Identity, BlockParams, "d", package="overrider", override=True)
    with pytest.warns(
        IdmzooPluginWarning, match="'n' of 'latecomer' is not used: 'overrider' replaced it"
    ) as caught:
        info = registry.register("norm", "n", nn.Identity, BlockParams, "d", package="latecomer")
    assert info.package == "overrider"
    assert caught[0].filename == __file__  # the warning points at the registration, not at idmzoo


def test_registering_scans_installed_distributions_at_most_once(monkeypatch):
    calls = []
    real = importlib.metadata.packages_distributions
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: calls.append(1) or real())
    core._distributions_by_package.cache_clear()
    registry = BlockRegistry(discover=False)
    for name in ("a", "b", "c"):
        registry.register("norm", name, nn.GroupNorm, BlockParams, "d")  # torch's class: found by scan
    assert len(calls) == 1
    assert registry.get("norm", "a").package == "torch"


# -- errors ----------------------------------------------------------------------------------


def test_every_error_is_an_idmzoo_error_exported_from_the_package():
    for name in idmzoo.errors.__all__:
        cls = getattr(idmzoo.errors, name)
        assert getattr(idmzoo, name) is cls
        assert issubclass(cls, Warning if name.endswith("Warning") else IdmzooError), name


def test_a_wrong_output_shape_is_a_build_error_not_an_invalid_registration():
    assert not issubclass(idmzoo.BlockBuildError, idmzoo.InvalidBlockError)
    assert issubclass(idmzoo.SiteCheckError, IdmzooError)


# -- build options and spec overrides ---------------------------------------------------------


def test_create_takes_seed_and_check_shapes_apart_from_spec_overrides():
    small = {"model_channels": 32, "num_res_blocks": 1}
    first = idmzoo.create("idm_cifar10_uncond", seed=0, check_shapes=True, **small)
    second = idmzoo.create("idm_cifar10_uncond", seed=0, **small)
    assert first.spec.model_channels == 32
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_pool_heads_refuse_a_misspelt_parameter():
    info = idmzoo.get_block("pool", "attention")
    ctx = BlockContext(2, 64, 0.0, "head", nn.Identity, nn.Identity, out_channels=4, spatial_size=2)
    with pytest.raises(TypeError, match="head_channels"):
        info.factory(16, ctx, num_head_channels=8, head_channels=8)


# -- validation hooks see the place ------------------------------------------------------------


class TwoDimensionalOnly(BlockParams):
    def check(self, place: idmzoo.Place) -> None:
        if place.dims != 2:
            raise idmzoo.SiteCheckError(None, f"works on images only, not dims={place.dims}")


class OldStyleHook(BlockParams):
    def check(self, channels: int, stage: str) -> None:
        if channels > 32:
            raise idmzoo.SiteCheckError(None, f"at most 32 channels, got {channels} in {stage}")


@pytest.fixture
def registered():
    names = []

    def register(kind: str, name: str, params: type[BlockParams]) -> None:
        idmzoo.register_block(kind, name, nn.Identity, params=params, description="test", package="test-dist")
        names.append((kind, name))

    yield register
    for kind, name in names:
        idmzoo.registry.REGISTRY.unregister(kind, name)


def test_a_plugin_can_reject_dims_at_validation_through_the_place(registered):
    registered("upsample", "images_only_up", TwoDimensionalOnly)
    spec = {**TINY, "upsample": "images_only_up"}
    idmzoo.load_spec(spec)
    with pytest.raises(
        ValueError, match=r"upsample\n.*works on images only, not dims=3 \(at output_blocks\.1\.2\)"
    ):
        idmzoo.load_spec({**spec, "dims": 3})


def test_hooks_with_the_older_channels_stage_signature_still_work(registered):
    registered("upsample", "narrow_up", OldStyleHook)
    with pytest.raises(ValueError, match=r"at most 32 channels, got 64 in output"):
        idmzoo.load_spec({**TINY, "upsample": "narrow_up"})


def test_place_gives_level_resolution_and_stage(registered):
    seen = []

    class Recording(BlockParams):
        def check(self, place: idmzoo.Place) -> None:
            seen.append((place.path, place.stage, place.level, place.resolution, place.channels))

    registered("attention", "recording_attention", Recording)
    idmzoo.load_spec({**TINY, "image_size": 8, "attention": "recording_attention"})
    assert seen == [
        ("input_blocks.3.1", "input", 1, 4, 64),
        ("middle_block.1", "middle", 1, 4, 64),
        ("output_blocks.0.1", "output", 1, 4, 64),
        ("output_blocks.1.1", "output", 1, 4, 64),
    ]


# -- start-up ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["list-models"], ["list-models", "--json"]])
def test_commands_that_need_no_model_never_import_torch(argv):
    script = """
        import sys
        from idmzoo.cli import main
        try:
            status = main(sys.argv[1:])
        except SystemExit as exit:
            status = exit.code
        assert status == 0, status
        print("torch" in sys.modules, file=sys.stderr)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *argv], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "False"


def test_import_idmzoo_imports_neither_torch_nor_pydantic_models():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, idmzoo; print(sorted(m for m in sys.modules if m.startswith(('torch', 'idmzoo.'))))",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- the module graph ----------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every idmzoo module ``path`` imports, at module level, in functions or for type checking."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
    return {m for m in found if m in modules and m != name}


def test_no_module_imports_one_that_imports_it_back():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imported_modules(f, modules) for f in files}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in trail:
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start != "idmzoo":  # the root re-exports everything (lazily); nothing imports it back
            visit(start, [start])
    assert [" -> ".join(c) for c in cycles] == []


def test_no_public_name_is_also_a_submodule_of_the_root():
    """Importing ``idmzoo.<name>`` sets that attribute of the package, hiding an export of the same name."""
    submodules = {module_name(f).split(".")[1] for f in PACKAGE.rglob("*.py") if module_name(f) != "idmzoo"}
    assert sorted(set(idmzoo.__all__) & submodules) == []
