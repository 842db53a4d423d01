"""Runs the installed ``idmzoo`` console script, and pip, in subprocesses, as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

#: The console script pip installed next to this interpreter.
IDMZOO_SCRIPT = shutil.which("idmzoo", path=sysconfig.get_path("scripts")) or "idmzoo"


def _environment(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "IDMZOO_STRICT_PLUGINS"}
    env.update(PIP_ROOT_USER_ACTION="ignore", PIP_DISABLE_PIP_VERSION_CHECK="1", **overrides)
    return env


def run_idmzoo(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``idmzoo ARGS...`` with its exit status, stdout and stderr (never raises on failure)."""
    return subprocess.run(
        [IDMZOO_SCRIPT, *map(str, args)], capture_output=True, text=True, env=_environment(**env), timeout=300
    )


def run_python(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` with this test run's interpreter."""
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, env=_environment(), timeout=300
    )


def pip(*args: str | Path) -> None:
    """``python -m pip ARGS...`` into this interpreter's environment; raises with pip's output on failure."""
    result = run_python("-m", "pip", "-q", *args)
    if result.returncode:
        raise RuntimeError(f"pip {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
