#!/usr/bin/env bash
# Runs idmzoo-timm's tests in a virtual environment of their own, kept outside the clone
# so later runs reuse it: timm pulls torchvision and a newer torch from PyPI (about 2.6 GB,
# about a minute, once), which must not replace the torch the core is tested on.
#
#   IDMZOO_TIMM_VENV   where the environment lives
#                      (default: ${XDG_CACHE_HOME:-$HOME/.cache}/idmzoo/timm-venv)
#   PYTHON             the interpreter that creates it (default: python3)
#
# Extra arguments are passed to pytest.
set -euo pipefail

plugin_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$plugin_dir/../.." && pwd)"
venv="${IDMZOO_TIMM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/idmzoo/timm-venv}"
python="$venv/bin/python"

if [ ! -x "$python" ]; then
    echo "idmzoo-timm: creating the virtual environment $venv"
    mkdir -p "$(dirname "$venv")"
    "${PYTHON:-python3}" -m venv "$venv"
fi

# Reuse the environment when timm is there and idmzoo and idmzoo-timm are editable
# installs of *this* clone (run from / so the clone's own directory is not on sys.path).
if (cd / && "$python" - "$repo_dir" <<'PY'
import sys
from pathlib import Path

try:
    import idmzoo, idmzoo_timm, pytest, timm  # noqa: F401
except ImportError:
    sys.exit(1)
repo = Path(sys.argv[1]).resolve()
installed = [Path(module.__file__).resolve() for module in (idmzoo, idmzoo_timm)]
sys.exit(0 if all(path.is_relative_to(repo) for path in installed) else 1)
PY
); then
    echo "idmzoo-timm: reusing $venv"
else
    echo "idmzoo-timm: installing idmzoo, idmzoo-timm and timm into $venv"
    "$python" -m pip install --quiet --disable-pip-version-check \
        -e "$repo_dir" -e "$plugin_dir[test]"
fi

cd "$repo_dir"
exec "$python" -m pytest plugins/idmzoo-timm/tests -q "$@"
