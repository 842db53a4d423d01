"""Entry-point plugins: discovered lazily and once, broken ones skipped and named, clashes reported.

Most tests install throwaway distributions the cheap way, as a ``*.dist-info`` folder on
``sys.path`` (which is all :mod:`importlib.metadata` looks at), and load them into a fresh
:class:`BlockRegistry`.  The ``slow`` ones build real distributions from a
``pyproject.toml``, ``pip install --target`` them into a throwaway folder (never into
this interpreter's environment) and look at them through the ``idmzoo`` console script,
with that folder on ``PYTHONPATH``, as a user would.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest
import torch

import idmzoo
from idmzoo import IdmzooPluginWarning, PluginLoadError, UnknownBlockError
from idmzoo.registry import REGISTRY, BlockRegistry
from idmzoo.registry.discovery import ENTRY_POINT_GROUP
from tests.cli_runner import pip_install, run_idmzoo, run_python, throwaway_site

#: Registers a norm block ``{name}``; ``{extra}`` runs after it (to fail half-way).
NORM_PLUGIN = """
import torch.nn as nn
import idmzoo

calls = 0

def register():
    global calls
    calls += 1
    idmzoo.register_block("norm", {name!r}, nn.GroupNorm, params=idmzoo.BlockParams,
                          description="a test norm", override={override})
    {extra}
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(dist, source, target="register")``: a distribution whose entry point runs ``source``.

    Returns the (unique) module name of the plugin.  The global registry is discovered
    first, so these distributions never leak into it.
    """
    REGISTRY.ensure_discovered()
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, source: str, target: str | None = "register") -> str:
        module = f"idmzoo_test_plugin_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        value = f"{module}:{target}" if target else module
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nplugin = {value}\n")
        return module

    return install


def norm_plugin(name: str, *, override: bool = False, extra: str = "") -> str:
    return NORM_PLUGIN.format(name=name, override=override, extra=extra)


#: Every distribution these tests fake has this in its name.
FAKE = "-fake-"


def discover() -> tuple[BlockRegistry, list[str]]:
    """A fresh registry after discovery, and the warnings it raised about the faked plugins.

    Warnings about whatever else is installed in the environment are not these tests' business.
    """
    registry = BlockRegistry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.list()
    messages = [str(w.message) for w in caught if issubclass(w.category, IdmzooPluginWarning)]
    return registry, [m for m in messages if re.search(rf"skipped plugin '[^']*{FAKE}", m)]


# -- discovery ------------------------------------------------------------------------------


def test_function_entry_point_registers_into_the_registry_being_loaded(install):
    install("idmzoo-fake-good", norm_plugin("fake_norm"))
    registry, warned = discover()
    assert warned == []
    info = registry.get("norm", "fake_norm")
    assert info.package == "idmzoo-fake-good"
    assert registry.get("norm", "idmzoo-fake-good:fake_norm") is info
    assert registry.get("norm", "group_norm32").package == "idmzoo"  # built-ins load the same way
    assert "fake_norm" not in REGISTRY.names("norm")


def test_module_entry_point_registers_with_the_decorator(install):
    source = """
    import torch.nn as nn
    import idmzoo

    @idmzoo.register_block("norm", "decorated_norm", params=idmzoo.BlockParams, description="d")
    class DecoratedNorm(nn.GroupNorm):
        pass
    """
    install("idmzoo-fake-decorated", source, target=None)
    registry, warned = discover()
    assert warned == []
    info = registry.get("norm", "decorated_norm")
    assert (info.package, info.factory.__name__) == ("idmzoo-fake-decorated", "DecoratedNorm")


def test_plugins_load_on_first_use_and_only_once(install):
    module = install("idmzoo-fake-counted", norm_plugin("counted_norm"))
    registry = BlockRegistry()
    assert module not in sys.modules  # creating the registry loads nothing
    registry.get("norm", "counted_norm")
    registry.list()
    registry.names("norm")
    with pytest.raises(UnknownBlockError):
        registry.get("norm", "nothing_of_that_name")
    assert importlib.import_module(module).calls == 1


# -- failures --------------------------------------------------------------------------------


def test_plugin_failing_at_import_is_skipped_with_a_warning_naming_it(install):
    install("idmzoo-fake-broken", "raise ImportError('needs missing_dependency')\n")
    install("idmzoo-fake-fine", norm_plugin("fine_norm"))
    registry, warned = discover()
    assert len(warned) == 1
    assert re.search(
        r"skipped plugin 'idmzoo-fake-broken' .*ImportError: needs missing_dependency", warned[0]
    )
    assert registry.get("norm", "fine_norm").package == "idmzoo-fake-fine"
    failures = [(f.distribution, f.cause) for f in registry.failed_plugins]
    assert ("idmzoo-fake-broken", "ImportError: needs missing_dependency") in failures
    with pytest.raises(UnknownBlockError, match="plugin 'idmzoo-fake-broken' failed to load"):
        registry.get("norm", "broken_norm")


def test_a_failing_plugins_warning_points_at_the_plugins_own_line(install, tmp_path):
    module = install("idmzoo-fake-pointing", "x = 1\nraise ImportError('broken on line two')\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        BlockRegistry().list()
    (warning,) = [w for w in caught if "idmzoo-fake-pointing" in str(w.message)]
    assert (warning.filename, warning.lineno) == (str(tmp_path / f"{module}.py"), 2)


def test_a_plugin_that_exits_or_prints_while_loading_cannot_take_discovery_down(install, capsys):
    install("idmzoo-fake-exits", "import sys\nsys.exit(3)\n")
    install("idmzoo-fake-chatty", norm_plugin("chatty_norm", extra="print('hello from a plugin')"))
    registry, warned = discover()
    assert len(warned) == 1 and "SystemExit: 3" in warned[0]
    assert registry.get("norm", "chatty_norm").package == "idmzoo-fake-chatty"
    captured = capsys.readouterr()
    assert "hello from a plugin" in captured.err and "hello" not in captured.out


def test_a_distribution_found_twice_on_the_path_loads_once(install, tmp_path, monkeypatch):
    module = install("idmzoo-fake-twice", norm_plugin("twice_norm"))
    copy = tmp_path / "stray-src"  # e.g. a stray src/*.egg-info left in a copied source folder
    copy.mkdir()
    (copy / "idmzoo_fake_twice-0.1.dist-info").mkdir()
    for name in ("METADATA", "entry_points.txt"):
        source = (tmp_path / "idmzoo_fake_twice-0.1.dist-info" / name).read_text()
        (copy / "idmzoo_fake_twice-0.1.dist-info" / name).write_text(source)
    monkeypatch.syspath_prepend(str(copy))
    registry, warned = discover()
    assert warned == []
    assert registry.get("norm", "twice_norm").package == "idmzoo-fake-twice"
    assert importlib.import_module(module).calls == 1


def test_invalid_block_rolls_back_everything_the_plugin_registered(install):
    extra = 'idmzoo.register_block("norm", "bad_norm", nn.GroupNorm, params=dict, description="x")'
    install("idmzoo-fake-invalid", norm_plugin("first_norm", extra=extra))
    registry, warned = discover()
    assert len(warned) == 1
    assert re.search(
        r"'idmzoo-fake-invalid'.*InvalidBlockError: norm block 'bad_norm': params must be", warned[0]
    )
    assert "first_norm" not in registry.names("norm")


def test_entry_point_naming_a_class_is_reported(install):
    install("idmzoo-fake-class", "class NotARegistrar:\n    pass\n", target="NotARegistrar")
    registry, warned = discover()
    assert len(warned) == 1
    assert re.search(r"'idmzoo-fake-class'.*must name a module or a registration function", warned[0])
    assert registry.get("norm", "group_norm32").package == "idmzoo"


def test_block_name_with_a_colon_is_rejected(install):
    install("idmzoo-fake-colon", norm_plugin("pkg:norm"))
    _, warned = discover()
    assert len(warned) == 1
    assert re.search(r"'idmzoo-fake-colon'.*name must be a non-empty string without ':'", warned[0])


def test_strict_mode_raises_instead_of_warning(install, monkeypatch):
    install("idmzoo-fake-broken", "raise RuntimeError('boom')\n")
    monkeypatch.setenv("IDMZOO_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"skipped plugin 'idmzoo-fake-broken' .*RuntimeError: boom"):
        BlockRegistry().list()


# -- names from two distributions --------------------------------------------------------------


def test_same_name_from_two_distributions_is_an_error_naming_both(install):
    install("idmzoo-fake-a", norm_plugin("shared_norm"))
    install("idmzoo-fake-b", norm_plugin("b_only_norm", extra=norm_plugin_call("shared_norm")))
    registry, warned = discover()
    assert len(warned) == 1
    assert re.search(
        r"skipped plugin 'idmzoo-fake-b'.*DuplicateBlockError: norm block 'shared_norm' is registered "
        r"twice: by 'idmzoo-fake-a' and by 'idmzoo-fake-b'.*override=True",
        warned[0],
    )
    assert registry.get("norm", "shared_norm").package == "idmzoo-fake-a"
    assert "b_only_norm" not in registry.names("norm")  # the clashing plugin is skipped whole


def test_plugin_reusing_a_builtin_name_is_the_one_reported(install):
    install("aaa-fake-sorts-before-idmzoo", norm_plugin("group_norm32"))
    registry, warned = discover()
    assert len(warned) == 1
    assert re.search(
        r"skipped plugin 'aaa-fake-sorts-before-idmzoo'.*by 'idmzoo' and by 'aaa-fake-sorts-before-idmzoo'",
        warned[0],
    )
    assert registry.get("norm", "group_norm32").package == "idmzoo"


def test_override_replaces_a_builtin(install):
    install("idmzoo-fake-override", norm_plugin("group_norm32", override=True))
    registry, warned = discover()
    assert warned == []
    assert registry.get("norm", "group_norm32").package == "idmzoo-fake-override"
    assert registry.get("norm", "idmzoo-fake-override:group_norm32").package == "idmzoo-fake-override"
    with pytest.raises(UnknownBlockError):
        registry.get("norm", "idmzoo:group_norm32")


@pytest.mark.parametrize("overrider", ["idmzoo-fake-a", "idmzoo-fake-z"])
def test_override_wins_whichever_distribution_loads_first(install, overrider):
    plain = "idmzoo-fake-z" if overrider == "idmzoo-fake-a" else "idmzoo-fake-a"
    install(overrider, norm_plugin("contested_norm", override=True))
    install(plain, norm_plugin("plain_only_norm", extra=norm_plugin_call("contested_norm")))
    registry, warned = discover()
    assert warned == []
    assert registry.get("norm", "contested_norm").package == overrider
    assert registry.get("norm", "plain_only_norm").package == plain


def test_failed_plugin_puts_back_the_block_it_overrode(install):
    install(
        "idmzoo-fake-override-then-fail",
        norm_plugin("group_norm32", override=True, extra="raise OSError('late')"),
    )
    registry, warned = discover()
    assert len(warned) == 1 and "OSError: late" in warned[0]
    assert registry.get("norm", "group_norm32").package == "idmzoo"


# -- namespaced names in specs (the real plugins under plugins/ are installed) ---------------------

SMALL_SPEC = {
    "in_channels": 3,
    "model_channels": 16,
    "out_channels": 3,
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "norm": {"type": "group_norm32", "num_groups": 8},
}


def test_spec_may_name_a_block_with_its_distribution():
    spec = idmzoo.load_spec({**SMALL_SPEC, "upsample": {"type": "idmzoo-convtranspose:conv_transpose"}})
    model = idmzoo.build(spec)
    assert model(torch.randn(1, 3, 8, 8), torch.tensor([1.0])).shape == (1, 3, 8, 8)


def test_spec_naming_the_wrong_distribution_fails_by_field():
    with pytest.raises(ValueError, match=r"upsample\.type\s+unknown upsample block 'idmzoo:conv_transpose'"):
        idmzoo.load_spec({**SMALL_SPEC, "upsample": {"type": "idmzoo:conv_transpose"}})


# -- real distributions, installed with pip and seen through the console script ------------------

PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"

[project.entry-points."idmzoo.blocks"]
{module} = "{module}:register"
"""

THROWAWAY_UPSAMPLER = """
import torch.nn as nn
import idmzoo

def register():
    idmzoo.register_block(
        "upsample", "throwaway_up",
        lambda channels, ctx: nn.Upsample(scale_factor=(1, 2, 2) if ctx.dims == 3 else 2),
        params=idmzoo.BlockParams, description="A throwaway upsampler from a test.",
    )
"""


def write_distribution(root: Path, dist: str, source: str) -> Path:
    """A source tree with a ``pyproject.toml`` declaring an ``idmzoo.blocks`` entry point."""
    module = dist.replace("-", "_")
    folder = root / dist
    (folder / module).mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, module=module))
    (folder / module / "__init__.py").write_text(textwrap.dedent(source))
    return folder


def listed(result) -> dict[str, dict[str, str]]:
    assert result.returncode == 0, result.stderr
    return {f"{r['kind']}:{r['name']}": r for r in json.loads(result.stdout)}


@pytest.mark.slow
def test_pip_installed_plugin_is_listed_builds_and_leaves_when_uninstalled(tmp_path):
    dist = f"idmzoo-throwaway-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SMALL_SPEC, "upsample": {"type": "throwaway_up"}}))
    forward = tmp_path / "forward.py"
    forward.write_text(
        "import sys, torch, idmzoo\n"
        "model = idmzoo.build(sys.argv[1])\n"
        "print(list(model(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0])).shape))\n"
    )
    with throwaway_site(tmp_path) as site:
        pip_install(site, write_distribution(tmp_path, dist, THROWAWAY_UPSAMPLER))
        record = listed(run_idmzoo("list-blocks", "--json", PYTHONPATH=str(site)))["upsample:throwaway_up"]
        assert (record["package"], record["description"]) == (dist, "A throwaway upsampler from a test.")
        ran = run_python(forward, spec, PYTHONPATH=str(site))
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == ["[2,", "3,", "8,", "8]"]
        built = run_idmzoo("build", spec, "--device", "meta", PYTHONPATH=str(site))
        assert built.returncode == 0 and "throwaway_up x1" in built.stdout, built.stderr
    assert not site.exists()
    assert "upsample:throwaway_up" not in listed(run_idmzoo("list-blocks", "--json"))
    invalid = run_idmzoo("validate", spec)
    assert invalid.returncode == 2
    assert invalid.stdout.startswith("upsample.type: unknown upsample block 'throwaway_up'.")


@pytest.mark.slow
def test_pip_installed_broken_and_clashing_plugins_are_named_and_listing_still_works(tmp_path):
    tag = uuid.uuid4().hex[:8]
    broken, first, second = (f"idmzoo-throwaway-{tag}-{suffix}" for suffix in ("broken", "a", "b"))
    clash = norm_plugin(f"clash_{tag}")
    folders = [
        write_distribution(tmp_path, broken, "raise ImportError('no module named missing_dependency')\n"),
        write_distribution(tmp_path, first, clash),
        write_distribution(tmp_path, second, clash),
    ]
    with throwaway_site(tmp_path) as site:
        pip_install(site, *folders)
        result = run_idmzoo("list-blocks", PYTHONPATH=str(site))
    assert result.returncode == 0
    rows = [line.split()[:3] for line in result.stdout.splitlines()]
    assert ["norm", "group_norm32", "idmzoo"] in rows
    assert ["norm", f"clash_{tag}", first] in rows
    warned = sorted(result.stderr.splitlines(), key=lambda line: "ImportError" not in line)
    assert len(warned) == 2, result.stderr
    assert re.search(
        rf"^warning: idmzoo skipped plugin '{broken}' .*ImportError: no module named missing_dep", warned[0]
    )
    assert re.search(
        rf"^warning: idmzoo skipped plugin '{second}' .*by '{first}' and by '{second}'", warned[1]
    )
    assert "Traceback" not in result.stderr


def installed_distributions() -> list[dict[str, str]]:
    """``pip list`` of the environment running the tests."""
    listing = run_python("-m", "pip", "list", "--format=json")
    assert listing.returncode == 0, listing.stderr
    return sorted(json.loads(listing.stdout), key=lambda record: record["name"])


@pytest.mark.slow
def test_an_install_that_fails_half_way_leaves_the_running_environment_unchanged(tmp_path):
    before = installed_distributions()
    good = write_distribution(tmp_path, f"idmzoo-throwaway-{uuid.uuid4().hex[:8]}", THROWAWAY_UPSAMPLER)
    unbuildable = write_distribution(tmp_path, f"idmzoo-throwaway-{uuid.uuid4().hex[:8]}-bad", "")
    (unbuildable / "pyproject.toml").write_text("[project\nname = broken")  # not TOML: the build fails
    with pytest.raises(RuntimeError, match="failed"), throwaway_site(tmp_path) as site:
        pip_install(site, good, unbuildable)
    assert not site.exists()
    with pytest.raises(RuntimeError, match="half-way"), throwaway_site(tmp_path) as site:
        pip_install(site, good)
        assert installed_distributions() == before  # installed beside, not into, this environment
        raise RuntimeError("the test failed half-way")
    assert not site.exists()
    assert installed_distributions() == before


def norm_plugin_call(name: str) -> str:
    """A second ``register_block`` line for :data:`NORM_PLUGIN`'s ``{extra}``."""
    return (
        f'idmzoo.register_block("norm", {name!r}, nn.GroupNorm, params=idmzoo.BlockParams, description="x")'
    )


# -- plugins that print, exit or take long (issue 15) ----------------------------------------

PRINTING_PLUGIN = norm_plugin("printing_norm", extra="print('hello from a plugin')")
EXITING_PLUGIN = norm_plugin("exiting_norm", extra="import sys; sys.exit(3)")


def test_plugin_calling_sys_exit_is_skipped_not_ending_the_process(install):
    install("idmzoo-fake-exit", EXITING_PLUGIN)
    registry, warned = discover()
    assert len(warned) == 1 and "SystemExit: 3" in warned[0], warned
    assert "exiting_norm" not in registry.names("norm")  # rolled back


def test_what_a_plugin_prints_while_loading_goes_to_stderr(install, capsys):
    install("idmzoo-fake-print", PRINTING_PLUGIN)
    registry, warned = discover()
    assert warned == [] and registry.get("norm", "printing_norm").package == "idmzoo-fake-print"
    out, err = capsys.readouterr()
    assert "hello from a plugin" not in out and "hello from a plugin" in err


def test_a_plugin_slower_than_the_limit_is_warned_about_by_name(install, monkeypatch):
    """A fake clock that advances 3 s per reading: no wall-clock time is measured or waited for."""
    from types import SimpleNamespace

    from idmzoo.registry import discovery

    ticks = iter(range(0, 10**6, 3))
    monkeypatch.setattr(discovery, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    install("idmzoo-fake-slow", norm_plugin("slow_norm"))
    registry = BlockRegistry()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry.list()
    slow = [str(w.message) for w in caught if "idmzoo-fake-slow" in str(w.message)]
    assert len(slow) == 1 and re.search(r"plugin 'idmzoo-fake-slow' took 3\.0 s to load", slow[0]), slow
    assert discovery.SLOW_PLUGIN_SECONDS == 2.0


def test_console_script_lists_json_despite_a_printing_and_an_exiting_plugin(tmp_path):
    """The real ``idmzoo`` script, with two throwaway distributions on PYTHONPATH (nothing installed)."""
    for dist, source in (("idmzoo-fake-print", PRINTING_PLUGIN), ("idmzoo-fake-exit", EXITING_PLUGIN)):
        module = f"idmzoo_test_plugin_{dist.rpartition('-')[2]}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nplugin = {module}:register\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    result = run_idmzoo("list-blocks", "--json", "--kind", "norm", PYTHONPATH=path)
    assert result.returncode == 0, result.stderr
    names = {record["name"]: record["package"] for record in json.loads(result.stdout)}  # stdout is pure JSON
    assert names["printing_norm"] == "idmzoo-fake-print" and "exiting_norm" not in names
    assert "hello from a plugin" in result.stderr
    assert re.search(r"warning: idmzoo skipped plugin 'idmzoo-fake-exit'.*SystemExit: 3", result.stderr), (
        result.stderr
    )
