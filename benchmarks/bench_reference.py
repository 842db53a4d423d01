"""idmzoo against the original improved-diffusion code, same configuration and weights.

The original code is not part of idmzoo: give the path of a git clone (or bare mirror) of
openai/improved-diffusion and the script imports ``improved_diffusion/{unet,nn,fp16_util}.py``
from it into a temporary folder at run time.  Both models get the same weights (the
reference checkpoint layout is idmzoo's), the outputs are compared, then training steps
are timed interleaved and the best round is kept.

Usage::

    python benchmarks/bench_reference.py --reference-repo /path/to/improved-diffusion [--config cifar10]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from memory import peak_allocated_bytes

import idmzoo
from idmzoo.reference import spec_from_reference

#: improved-diffusion ``UNetModel`` arguments of the CIFAR-10 configuration of bench_blocks.py.
_CIFAR10 = dict(
    in_channels=3,
    model_channels=128,
    out_channels=6,
    num_res_blocks=3,
    attention_resolutions=(2, 4),
    dropout=0.3,
    channel_mult=(1, 2, 2, 2),
    num_heads=4,
    use_scale_shift_norm=True,
)
#: (arguments, batch, resolution) of bench_blocks.py's configurations.
REFERENCE_KWARGS = {
    "cifar10": (_CIFAR10, 4, 32),
    "attention": ({**_CIFAR10, "model_channels": 64, "num_res_blocks": 2}, 2, 64),
}
_FILES = ("unet.py", "nn.py", "fp16_util.py")


def import_reference_unet(repo: Path, folder: Path) -> type[torch.nn.Module]:
    """``improved_diffusion.unet.UNetModel`` read from ``repo``'s HEAD into ``folder``."""
    package = folder / "improved_diffusion"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in _FILES:
        source = subprocess.run(
            ["git", f"--git-dir={_git_dir(repo)}", "show", f"HEAD:improved_diffusion/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (package / name).write_text(source)
    sys.path.insert(0, str(folder))
    return importlib.import_module("improved_diffusion.unet").UNetModel


def _git_dir(repo: Path) -> Path:
    return repo / ".git" if (repo / ".git").exists() else repo


def _seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference-repo", type=Path, required=True, help="a clone of openai/improved-diffusion"
    )
    parser.add_argument("--config", choices=sorted(REFERENCE_KWARGS), default="cifar10")
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="also compare the original use_checkpoint=True with idmzoo's checkpointing='all'",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kwargs, batch, resolution = REFERENCE_KWARGS[args.config]

    with tempfile.TemporaryDirectory() as folder:
        reference_cls = import_reference_unet(args.reference_repo, Path(folder))
        torch.manual_seed(0)
        ours = idmzoo.build(spec_from_reference("improved-diffusion", "UNetModel", kwargs))
        for p in ours.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)
        models = {"original code": reference_cls(**kwargs)}
        models["original code"].load_state_dict(ours.state_dict())
        models["idmzoo default"] = ours
        if args.checkpointing:
            models["original code, use_checkpoint"] = reference_cls(**kwargs, use_checkpoint=True)
            models["original code, use_checkpoint"].load_state_dict(ours.state_dict())
            models["idmzoo, checkpointing all"] = copy.deepcopy(ours)
            models["idmzoo, checkpointing all"].set_checkpointing("all")
        x, t = torch.randn(batch, 3, resolution, resolution), torch.randint(0, 1000, (batch,)).float()
        with torch.no_grad():
            models["original code"].eval(), ours.eval()
            difference = (models["original code"](x, t) - ours(x, t)).abs().max().item()
            models["original code"].train(), ours.train()

        def step(model: torch.nn.Module) -> Callable[[], None]:
            def run() -> None:
                model(x, t).square().mean().backward()
                model.zero_grad(set_to_none=True)

            return run

        times: dict[str, list[float]] = {name: [] for name in models}
        for model in models.values():
            step(model)()
        for _ in range(args.repeats):
            for name, model in models.items():
                times[name].append(_seconds(step(model)))
        peaks = {name: peak_allocated_bytes(step(model)) for name, model in models.items()}

    print(f"{args.config}: batch {batch}, {resolution}px; max |output difference| {difference:.2e}")
    print("| model | fwd+bwd s | ×original | peak MiB | ×original |")
    print("|---|---|---|---|---|")
    base_time, base_peak = min(times["original code"]), peaks["original code"]
    for name in models:
        print(
            f"| {name} | {min(times[name]):.3f} | {min(times[name]) / base_time:.2f} | "
            f"{peaks[name] / 2**20:.0f} | {peaks[name] / base_peak:.2f} |"
        )


if __name__ == "__main__":
    main()
