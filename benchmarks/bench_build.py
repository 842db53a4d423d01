"""How long building a spec takes on the meta device (no weights allocated), and start-up.

Times ``idmzoo.build(spec, device="meta")``, the build-time shape check and the per-stage
FLOP count of ``idmzoo.summarize`` (a meta-device forward under ``FlopCounterMode``) in this
process (best of ``--repeats``), then the whole ``idmzoo build SPEC --device meta`` command, whose
wall time is mostly Python start-up and ``import torch`` (timed alone for comparison), and
``idmzoo --help`` against ``python -c "import torch"`` (median of ``--repeats`` each, as a
ratio measured in the same run: the lazy package root keeps torch out of ``--help``).

Usage::

    python benchmarks/bench_build.py [--spec specs/adm_imagenet256_cond.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import idmzoo
from idmzoo.shape_check import check_block_shapes
from idmzoo.summary import count_flops

#: The command line of the idmzoo this benchmark imports: the console script beside this
#: Python (its venv need not be activated), else ``python -m idmzoo``.
_SCRIPT = Path(sys.executable).with_name("idmzoo")
IDMZOO = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "idmzoo"]


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/adm_imagenet256_cond.json", help="the spec file")
    parser.add_argument("--repeats", type=int, default=5, help="timed builds; the best is kept")
    args = parser.parse_args(argv)
    idmzoo.build(args.spec, device="meta")  # plugin discovery and imports happen once
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model = idmzoo.build(args.spec, device="meta")
        times.append(time.perf_counter() - start)
    parameters = sum(p.numel() for p in model.parameters())
    check_block_shapes(model)  # the meta kernels are imported on first use
    checks = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        check_block_shapes(model)
        checks.append(time.perf_counter() - start)
    size = model.spec.image_size or 64
    counts = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        per_stage, flops = count_flops(model, size)
        counts.append(time.perf_counter() - start)
    command = _wall([*IDMZOO, "build", args.spec, "--device", "meta"])
    torch_import = [_wall([sys.executable, "-c", "import torch"]) for _ in range(args.repeats)]
    help_ = [_wall([*IDMZOO, "--help"]) for _ in range(args.repeats)]
    print(f"{args.spec}: {parameters:,} parameters")
    print(f"idmzoo.build(device='meta'): {min(times):.3f} s (best of {args.repeats})")
    print(f"shape check on meta: {min(checks):.3f} s (best of {args.repeats})")
    print(
        f"forward FLOPs at {size}px counted on meta: {flops / 1e9:,.1f} GFLOPs per image in "
        f"{min(counts):.3f} s (best of {args.repeats}; load average {os.getloadavg()[0]:.2f})"
    )
    print(
        f"`idmzoo build --device meta` command: {command:.2f} s wall, of which `import torch` alone "
        f"takes {statistics.median(torch_import):.2f} s"
    )
    ratio = statistics.median(help_) / statistics.median(torch_import)
    print(
        f"`idmzoo --help`: {statistics.median(help_):.2f} s, {ratio:.2f}x `import torch` "
        f"(median of {args.repeats}; target <= 0.5x)"
    )


if __name__ == "__main__":
    main()
