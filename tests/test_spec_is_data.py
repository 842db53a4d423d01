"""A spec is data: validating or building one imports, evaluates and runs nothing it names.

A block name is only ever looked up among registered blocks.  These tests watch the
interpreter's audit events (imports, ``exec``/``compile``, file opens, processes) while
hostile specs are validated, and check that a module named in a spec is never imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import idmzoo
from idmzoo import BLOCK_KINDS, Spec
from idmzoo.registry import REGISTRY
from idmzoo.registry.core import _code_fields

ROOT = Path(__file__).parents[1]
BASE: dict[str, Any] = {
    "in_channels": 3,
    "model_channels": 8,
    "out_channels": 3,
    "num_res_blocks": 1,
    "channel_mult": [1, 2],
    "norm": {"type": "group_norm32", "num_groups": 4},
}
CANARY = "idmzoo_canary_module"
#: Audit events that would mean a spec made idmzoo run code or touch the system.
FORBIDDEN_EVENTS = (
    "import",
    "exec",
    "compile",
    "open",
    "builtins.input",
    "pickle.find_class",
    "marshal.loads",
)
FORBIDDEN_PREFIXES = ("os.", "subprocess.", "socket.", "shutil.", "ctypes.", "urllib.", "importlib.")

_recording: list[tuple[str, str]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording is not None and (event in FORBIDDEN_EVENTS or event.startswith(FORBIDDEN_PREFIXES)):
        _recording.append((event, repr(args)[:200]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only inside ``watching``


@contextmanager
def watching() -> Iterator[list[tuple[str, str]]]:
    """Collect forbidden audit events raised in the body."""
    global _recording
    _recording = events = []
    try:
        yield events
    finally:
        _recording = None


@pytest.fixture
def canary(tmp_path, monkeypatch) -> Path:
    """An importable module ``idmzoo_canary_module`` whose import writes ``imported.txt``."""
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{CANARY}.py").write_text(
        "from pathlib import Path\n"
        f"MARKER = Path({str(marker)!r})\n"
        "MARKER.write_text('imported')\n"
        "def system(*args):\n"
        "    MARKER.write_text('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    REGISTRY.ensure_discovered()  # entry-point plugins load once, on first use: do it now
    return marker


def test_the_watch_sees_an_import_and_the_canary_fires(canary):
    """The control: without this, the tests below could pass with a blind watcher."""
    with watching() as events:
        __import__(CANARY)
    try:
        assert any(event == "import" and CANARY in args for event, args in events)
        assert canary.read_text() == "imported"
    finally:
        del sys.modules[CANARY]


HOSTILE_NAMES = [
    "os.system",
    "os:system",
    "builtins.eval",
    "builtins:eval",
    "subprocess.Popen",
    "importlib:import_module",
    f"{CANARY}.system",
    f"{CANARY}:system",
    "__import__('os').system('touch pwned')",
    "idmzoo.builder:build",
]


@pytest.mark.parametrize("kind", BLOCK_KINDS)
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_dotted_path_as_block_name_is_an_unknown_block_and_nothing_runs(kind, name, canary):
    modules = set(sys.modules)
    with watching() as events, pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**BASE, kind: {"type": name}})
    [error] = caught.value.errors()
    assert error["loc"] == (kind, "type")
    assert error["type"] == "unknown_block"
    assert error["msg"].startswith(f"unknown {kind} block {name!r}.")
    assert events == []
    assert set(sys.modules) == modules
    assert not canary.exists()


def test_shorthand_and_spec_files_are_looked_up_the_same_way(canary, tmp_path):
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps({**BASE, "attention": f"{CANARY}:system", "upsample": "os.system"}))
    with pytest.raises(ValidationError) as caught:
        idmzoo.load_spec(path)
    assert [e["loc"] for e in caught.value.errors()] == [("attention", "type"), ("upsample", "type")]
    assert CANARY not in sys.modules
    assert not canary.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_channels", "__import__('os').cpu_count()"),
        ("channel_mult", ["1 + 1"]),
        ("norm", {"type": "group_norm32", "num_groups": "len('abcd')"}),
        ("attention", {"type": "legacy_attention", "num_heads": "eval('4')"}),
        ("dims", "2"),
    ],
)
def test_expressions_in_values_are_never_evaluated(field, value, canary):
    with watching() as events, pytest.raises(ValidationError) as caught:
        idmzoo.load_spec({**BASE, field: value})
    assert all(e["loc"][0] == field for e in caught.value.errors())
    assert events == []


def test_no_spec_or_registered_params_field_imports_or_calls_its_input():
    assert _code_fields(Spec) == []
    assert {info.qualified_name: _code_fields(info.params) for info in idmzoo.list_blocks()} == {
        info.qualified_name: [] for info in idmzoo.list_blocks()
    }


def test_validation_of_a_valid_spec_runs_nothing(canary):
    with watching() as events:
        idmzoo.load_spec({**BASE, "attention_resolutions": [2], "attention": "idmzoo:new_order_attention"})
    assert events == []


def test_building_from_json_in_a_fresh_process_only_reads_the_file():
    """After plugin discovery, building a JSON spec opens the file and imports nothing new."""
    script = textwrap.dedent(
        """
        import json, sys
        import idmzoo
        from idmzoo.registry import REGISTRY
        REGISTRY.ensure_discovered()
        build = idmzoo.build  # the package root loads its names on first use
        events = []
        sys.addaudithook(lambda event, args: events.append([event, str(args[0])])
                         if event in ("import", "exec", "compile", "open") or event.startswith(("os.", "subprocess."))
                         else None)
        modules = set(sys.modules)
        build(sys.argv[1])
        print(json.dumps({"events": events, "new_modules": sorted(set(sys.modules) - modules)}))
        """
    )
    spec = ROOT / "specs" / "adm_encoder_attention.json"
    result = subprocess.run(
        [sys.executable, "-c", script, str(spec)], capture_output=True, text=True, check=True, timeout=300
    )
    report = json.loads(result.stdout)
    assert report == {"events": [["open", str(spec)]], "new_modules": []}
