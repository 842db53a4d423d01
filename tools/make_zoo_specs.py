#!/usr/bin/env python
"""Write ``specs/<name>.json`` for every entry of the zoo catalogue (``idmzoo/zoo_catalog.json``).

Each file is the validated spec of the entry's flags and ``spec_overrides``
(``ZooEntry.spec()``), so the files are a readable copy of the catalogue;
``tests/test_zoo.py`` checks they still are.
Run it after changing the catalogue:

    python tools/make_zoo_specs.py            # rewrite the files
    python tools/make_zoo_specs.py --check    # exit 1 if any file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from idmzoo.zoo import ZooEntry, list_models

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


def spec_text(entry: ZooEntry) -> str:
    """The file content for ``entry``: its spec as indented JSON, every field written out."""
    return json.dumps(entry.spec().model_dump(mode="json"), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) every zoo spec file; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for entry in list_models():
        path = SPECS_DIR / f"{entry.name}.json"
        text = spec_text(entry)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text)
    verb = "stale" if args.check else "written"
    print(f"{len(stale)} zoo spec file(s) {verb}" + (f": {', '.join(stale)}" if stale else ""))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
