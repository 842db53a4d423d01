"""Runs the installed ``idmzoo`` console script, and pip, in subprocesses, as a user would."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
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


def run_python(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS...`` with this test run's interpreter."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=_environment(**env),
        timeout=300,
    )


@contextlib.contextmanager
def throwaway_site(root: Path) -> Iterator[Path]:
    """A folder to ``pip install --target`` into, removed afterwards whatever happens.

    Put it on ``PYTHONPATH`` of a subprocess to see what was installed there: this
    interpreter's environment is never touched, so a test that fails half-way leaves
    nothing behind in it.
    """
    site = root / f"site-{uuid.uuid4().hex[:8]}"
    site.mkdir()
    try:
        yield site
    finally:
        shutil.rmtree(site, ignore_errors=True)


def pip_install(site: Path, *folders: Path) -> None:
    """``pip install --target SITE FOLDERS...``; raises with pip's output on failure.

    No dependencies (idmzoo and torch are already importable) and no build isolation (the
    test environment's setuptools builds them), so nothing is downloaded.
    """
    args = ("install", "--no-deps", "--no-build-isolation", "--target", site, *folders)
    result = run_python("-m", "pip", "-q", *args)
    if result.returncode:
        raise RuntimeError(f"pip {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
