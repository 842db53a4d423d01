"""The benchmarks that CI runs in a smoke mode, so they cannot rot (no figure is checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_benchmark_smoke_run_completes_and_prints_its_table():
    result = subprocess.run(  # a long timeout: a busy CI machine runs 32 tiny steps slowly
        [sys.executable, BENCHMARKS / "bench_gpu.py", "--smoke", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for model in ("adm_imagenet64_cond", "adm_imagenet256_cond"):
        assert f"{model} at " in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    header = (
        "| variant | fwd+bwd s | ×ref | train peak MiB | ×ref | images/s | ×ref | sampling peak MiB | ×ref |"
    )
    assert rows.count(header) == 2
    for name in ("reference-style", "fp32", "fp32 flash", "bf16 autocast", "fp16 torso", "bf16 compiled"):
        measured = [row for row in rows if row.startswith(f"| {name} |")]
        assert len(measured) == 2 and all("n/a" not in row for row in measured), name
