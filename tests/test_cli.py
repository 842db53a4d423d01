"""The ``idmzoo`` console script, run in a subprocess exactly as a user runs it.

Expected output is derived from the library in this process (the registry, the pydantic
errors of the same spec, the reference's parameter counts), never typed in by hand.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

import idmzoo
from idmzoo.cli import COMMANDS, validation_lines
from idmzoo.schema import block_parameters
from tests.cli_runner import run_idmzoo, run_python
from tests.fixtures import FIXTURES

SPECS = Path(__file__).parent.parent / "specs"
PRESETS = {p["name"]: p for p in json.loads((FIXTURES / "reference" / "presets.json").read_text())["presets"]}


def broken_spec(tmp_path: Path) -> tuple[Path, dict]:
    """A spec with three mistakes: a bad level, a typo in a block name, groups that do not divide."""
    data = json.loads((SPECS / "idm_uncond_ssn.json").read_text())
    data["channel_mult"] = [1, 2, 0]
    data["attention"] = {"type": "legacy_atention"}
    data["norm"] = {"type": "group_norm32", "num_groups": 7, "epsilon": 1e-5}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    return path, data


def assert_one_error_line(result, pattern: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert re.fullmatch(rf"error: {pattern}.*\(--debug shows the traceback\)\n", result.stderr), result.stderr


def test_help_lists_every_command_and_python_m_is_the_same_program():
    script, module = run_idmzoo("--help"), run_python("-m", "idmzoo", "--help")
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    for command in COMMANDS:
        assert re.search(rf"^\s+{command.name}\s", script.stdout, re.MULTILINE), command.name


def test_list_blocks_table_shows_every_registered_block_with_its_package():
    result = run_idmzoo("list-blocks")
    assert result.returncode == 0 and result.stderr == ""
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["kind", "name", "package", "description"]
    rows = [re.split(r"\s{2,}", line) for line in lines]
    expected = [[b.kind, b.name, b.package, b.description] for b in idmzoo.list_blocks()]
    assert rows == expected
    assert ["upsample", "conv_transpose", "idmzoo-convtranspose"] in [row[:3] for row in rows]
    assert ["norm", "rms_norm", "idmzoo-rmsnorm"] in [row[:3] for row in rows]


def test_list_blocks_json_of_one_kind():
    result = run_idmzoo("list-blocks", "--kind", "norm", "--json")
    assert result.returncode == 0
    records = json.loads(result.stdout)
    assert [(r["kind"], r["name"], r["package"], r["description"]) for r in records] == [
        (b.kind, b.name, b.package, b.description) for b in idmzoo.list_blocks("norm")
    ]


def test_list_blocks_rejects_an_unknown_kind_with_usage_not_a_traceback():
    result = run_idmzoo("list-blocks", "--kind", "normalisation")
    assert result.returncode == 2
    assert "invalid choice: 'normalisation'" in result.stderr and "Traceback" not in result.stderr


def test_describe_shows_each_parameter_type_default_and_doc():
    result = run_idmzoo("describe", "attention", "idmzoo:legacy_attention")
    assert result.returncode == 0, result.stderr
    info = idmzoo.get_block("attention", "legacy_attention")
    assert info.package in result.stdout.splitlines()[0] and info.description in result.stdout
    rows = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line) for line in result.stdout.splitlines()}
    for parameter in block_parameters(info):
        assert rows[parameter.name] == [
            parameter.name,
            parameter.type,
            parameter.default,
            parameter.description,
        ]


def test_describe_json_of_a_plugin_block():
    result = run_idmzoo("describe", "norm", "rms_norm", "--json")
    record = json.loads(result.stdout)
    assert (record["package"], record["factory"]) == ("idmzoo-rmsnorm", "idmzoo_rmsnorm.ChannelRMSNorm")
    assert [p["name"] for p in record["parameters"]] == ["num_groups", "eps", "affine"]


def test_unknown_block_is_one_error_line_and_debug_shows_the_traceback():
    assert_one_error_line(
        run_idmzoo("describe", "norm", "group_norm"),
        r"unknown norm block 'group_norm'\. Did you mean 'group_norm32'",
    )
    debug = run_idmzoo("describe", "norm", "group_norm", "--debug")
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "UnknownBlockError" in debug.stderr


def test_validate_ok():
    result = run_idmzoo("validate", SPECS / "adm_3d_rud.json")
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")


def test_validate_prints_one_line_per_error_with_its_json_path(tmp_path):
    path, data = broken_spec(tmp_path)
    with pytest.raises(ValidationError) as info:
        idmzoo.load_spec(data)
    result = run_idmzoo("validate", path)
    assert result.returncode == 2
    assert result.stdout.splitlines() == validation_lines(info.value)
    assert any(
        line.startswith("attention.type: unknown attention block 'legacy_atention'")
        for line in result.stdout.splitlines()
    )
    assert "norm.epsilon: Extra inputs are not permitted" in result.stdout.splitlines()


def test_validate_unreadable_and_non_json_files_are_one_line(tmp_path):
    assert_one_error_line(
        run_idmzoo("validate", tmp_path / "missing.json"), r"cannot read spec file '.*missing\.json'"
    )
    (tmp_path / "notes.json").write_text("{not json")
    assert_one_error_line(
        run_idmzoo("validate", tmp_path / "notes.json"), r"spec file '.*notes\.json' is not valid JSON"
    )


def test_build_on_meta_counts_the_reference_parameters():
    result = run_idmzoo("build", SPECS / "adm_imagenet256_cond.json", "--device", "meta")
    assert result.returncode == 0, result.stderr
    assert re.search(r"on meta in [\d.]+ s", result.stdout)
    total = re.search(r"^total\s+([\d,]+)$", result.stdout, re.MULTILINE).group(1)
    assert int(total.replace(",", "")) == PRESETS["adm_imagenet256_cond"]["param_count"]
    for stage in ("time_embed", "label_emb", "input_blocks", "middle_block", "output_blocks", "out"):
        assert re.search(rf"^{stage}\s+\[N, ", result.stdout, re.MULTILINE), stage


def test_build_json_summary_matches_the_python_api():
    result = run_idmzoo("build", SPECS / "adm_encoder_attention.json", "--json")
    assert result.returncode == 0, result.stderr
    summary = idmzoo.summarize(idmzoo.build(SPECS / "adm_encoder_attention.json"))
    assert json.loads(result.stdout) == {
        "spec": str(SPECS / "adm_encoder_attention.json"),
        "device": "cpu",
        **summary.to_dict(),
    }


def test_build_of_an_invalid_spec_prints_its_errors_and_exits_2(tmp_path):
    path, data = broken_spec(tmp_path)
    with pytest.raises(ValidationError) as info:
        idmzoo.load_spec(data)
    result = run_idmzoo("build", path, "--device", "meta")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {line}" for line in validation_lines(info.value)]


def test_schema_prints_the_spec_schema_with_plugin_blocks():
    result = run_idmzoo("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema == idmzoo.spec_schema()
    assert (
        "idmzoo-convtranspose:conv_transpose"
        in schema["properties"]["upsample"]["anyOf"][0]["discriminator"]["mapping"]
    )


# -- hostile and mistaken arguments and files (issue 15) ---------------------------------------


def assert_usage_error(result, pattern: str) -> None:
    assert result.returncode == 2 and result.stdout == "", result
    assert re.search(rf"^idmzoo build: error: argument {pattern}", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.stderr


def test_build_refuses_non_positive_image_sizes_and_devices_this_machine_lacks():
    spec = SPECS / "idm_uncond_ssn.json"
    assert_usage_error(run_idmzoo("build", spec, "--image-size", "-8"), r"--image-size: .*positive.* -8$")
    assert_usage_error(run_idmzoo("build", spec, "--image-size", "0"), r"--image-size: .*positive.* 0$")
    assert_usage_error(
        run_idmzoo("build", spec, "--device", "banana"), r"--device: 'banana' is not a torch device"
    )
    import torch

    if torch.cuda.device_count() <= 7:
        assert_usage_error(run_idmzoo("build", spec, "--device", "cuda:7"), r"--device: device 'cuda:7': ")


def test_validate_names_the_file_of_a_fifo_and_an_oversized_echo_is_cut(tmp_path):
    fifo = tmp_path / "spec.json"
    os.mkfifo(fifo)  # nobody writes: reading it would hang
    assert_one_error_line(run_idmzoo("validate", fifo), r"cannot read spec file '.*spec\.json': it is a FIFO")
    data = json.loads((SPECS / "idm_uncond_ssn.json").read_text())
    data["norm"] = {"type": "n" * 1_000_000}
    (tmp_path / "long.json").write_text(json.dumps(data))
    result = run_idmzoo("validate", tmp_path / "long.json")
    assert result.returncode == 2 and result.stdout.startswith("norm.type: unknown norm block 'nnn")
    assert len(result.stdout) < 2000
