#!/usr/bin/env python
"""Count a published U-Net's parameters with its source repository's own model factory.

The source checkout is NOT part of idmzoo and is never fetched or built by this script:
extract it yourself (e.g. ``git archive <commit> | tar -x -C /tmp/<name>``) and pass the
path. The script imports the checkout's own factory, builds the model on the meta device
(no weights, no memory), and prints JSON with the exact parameter count, the keyword
arguments the factory passed to ``UNetModel.__init__`` (and their bound values with the
constructor's defaults filled in), and a summary of the attention blocks.

Imports the factories pull in but do not need for construction (mpi4py, blobfile,
flash_attn, einops, piq, torchvision, PIL, tqdm, scipy) are replaced by dummy modules
when they are not installed; ``flash_attn.flash_attention.FlashAttention`` becomes a
parameter-free ``nn.Module`` (as the real one is).

Kinds (how each source builds its model):

* ``guided``   - a guided-diffusion fork (P2-weighting, ilvr_adm, plain guided-diffusion):
  ``script_util.create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults()))``
  with ``--flags`` parsed by the checkout's ``add_dict_to_argparser`` (non-model flags are ignored).
* ``cm``       - openai/consistency_models: same, from ``cm.script_util``; ``--distillation``
  mirrors image_sample.py's ``"consistency" in training_mode``.
* ``ddpmseg``  - yandex-research/ddpm-segmentation: its guided_diffusion submodule at
  ``<checkout>/guided_diffusion/guided_diffusion``; flags parsed as in train_interpreter.py,
  updated with ``--exp`` JSON, ``image_size = dim[0]``, args filtered by getfullargspec.
* ``repaint``  - andreas128/RePaint: ``conf_mgt.Default_Conf`` updated with the ``--config``
  YAML, then ``create_model_and_diffusion(**select_args(conf, defaults.keys()), conf=conf)``.
* ``blinddps`` - BlindDPS/blind-dps: ``guided_diffusion.unet.create_model(**yaml)`` for the
  ``--config`` YAML; its trailing ``load_state_dict(torch.load(model_path))`` is skipped.

Example::

    python tools/count_source_params.py cm /tmp/cm --flags "--attention_resolutions 32,16,8 ..."
    python tools/count_source_params.py blinddps /tmp/blinddps --config configs/kernel_model_config.yaml
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import inspect
import json
import shlex
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

_STUBBABLE = (
    "mpi4py",
    "blobfile",
    "flash_attn",
    "einops",
    "piq",
    "torchvision",
    "PIL",
    "tqdm",
    "scipy",
)


class _StubModule(types.ModuleType):
    """A module whose every attribute is a dummy callable (or sub-stub)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


class _ParamFreeAttention(nn.Module):
    """Stand-in for flash_attn's FlashAttention (which has no parameters)."""

    def __init__(self, *args, **kwargs):
        super().__init__()


def install_stubs() -> list[str]:
    """Put dummy modules in ``sys.modules`` for absent optional imports; return their names."""
    import torch._dynamo  # noqa: F401  (meta-device init imports it; let it see no stubs)

    stubbed = []
    for root in _STUBBABLE:
        try:
            present = importlib.util.find_spec(root) is not None
        except (ImportError, ValueError):
            present = False
        if present:
            continue
        stubbed.append(root)
        subs = {
            "mpi4py": ["mpi4py.MPI"],
            "flash_attn": ["flash_attn.flash_attention"],
            "torchvision": ["torchvision.transforms"],
            "PIL": ["PIL.Image", "PIL.ImageDraw", "PIL.ImageFont"],
            "tqdm": ["tqdm.auto"],
            "scipy": ["scipy.stats"],
        }.get(root, [])
        for name in [root, *subs]:
            mod = _StubModule(name)
            mod.__path__ = []  # mark as a package so submodule imports resolve
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            sys.modules[name] = mod
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, mod)
    if "flash_attn" in stubbed:
        sys.modules["flash_attn.flash_attention"].FlashAttention = _ParamFreeAttention
    return stubbed


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def capture_unet_kwargs(unet_cls) -> list[dict]:
    """Wrap ``unet_cls.__init__`` to record every call's passed and bound kwargs."""
    calls: list[dict] = []
    original = unet_cls.__init__
    signature = inspect.signature(original)

    def wrapped(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        passed = {k: v for k, v in bound.arguments.items() if k != "self"}
        bound.apply_defaults()
        full = {k: v for k, v in bound.arguments.items() if k != "self"}
        calls.append({"passed": _jsonable(passed), "bound_with_defaults": _jsonable(full)})
        return original(self, *args, **kwargs)

    unet_cls.__init__ = wrapped
    return calls


def attention_summary(model: nn.Module) -> dict:
    """Count attention blocks by (qkv layer type, attention op type, heads)."""
    summary: dict[str, int] = {}
    for module in model.modules():
        if type(module).__name__ != "AttentionBlock":
            continue
        qkv = getattr(module, "qkv", None)
        key = json.dumps(
            {
                "channels": getattr(module, "channels", None),
                "num_heads": getattr(module, "num_heads", None),
                "qkv": type(qkv).__name__ if qkv is not None else None,
                "proj_out": type(getattr(module, "proj_out", None)).__name__,
                "attention": type(getattr(module, "attention", None)).__name__,
                "attention_type": getattr(module, "attention_type", None),
            },
            sort_keys=True,
        )
        summary[key] = summary.get(key, 0) + 1
    return {k: v for k, v in sorted(summary.items())}


def _parse_flags(script_util, flags: str, extra: dict | None = None):
    defaults = script_util.model_and_diffusion_defaults()
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, {**(extra or {}), **defaults})
    args, unknown = parser.parse_known_args(shlex.split(flags))
    return defaults, args, unknown


def build(kind: str, checkout: Path, flags: str, config: str | None, exp: str | None, distillation: bool):
    sys.path.insert(0, str(checkout))
    info: dict = {}
    if kind in ("guided", "cm"):
        pkg = "cm" if kind == "cm" else "guided_diffusion"
        script_util = importlib.import_module(f"{pkg}.script_util")
        unet = importlib.import_module(f"{pkg}.unet")
        calls = capture_unet_kwargs(unet.UNetModel)
        defaults, args, unknown = _parse_flags(script_util, flags)
        info["ignored_flags"] = unknown
        kwargs = script_util.args_to_dict(args, defaults.keys())
        if kind == "cm":
            kwargs["distillation"] = distillation
        info["factory_args"] = _jsonable(kwargs)
        with torch.device("meta"):
            model, _ = script_util.create_model_and_diffusion(**kwargs)
    elif kind == "ddpmseg":
        script_util = importlib.import_module("guided_diffusion.guided_diffusion.script_util")
        unet = importlib.import_module("guided_diffusion.guided_diffusion.unet")
        calls = capture_unet_kwargs(unet.UNetModel)
        _, args, unknown = _parse_flags(script_util, flags, {"exp": "", "seed": 0})
        info["ignored_flags"] = unknown
        opts = json.loads(Path(exp).read_text()) if exp else {}
        opts.update(vars(args))
        if "dim" in opts:
            opts["image_size"] = opts["dim"][0]
        argnames = inspect.getfullargspec(script_util.create_model_and_diffusion)[0]
        kwargs = {name: opts[name] for name in argnames}
        info["factory_args"] = _jsonable(kwargs)
        with torch.device("meta"):
            model, _ = script_util.create_model_and_diffusion(**kwargs)
    elif kind == "repaint":
        import yaml

        script_util = importlib.import_module("guided_diffusion.script_util")
        unet = importlib.import_module("guided_diffusion.unet")
        conf_mgt = importlib.import_module("conf_mgt")
        calls = capture_unet_kwargs(unet.UNetModel)
        conf = conf_mgt.conf_base.Default_Conf()
        conf.update(yaml.safe_load(Path(config).read_text()))
        kwargs = script_util.select_args(conf, script_util.model_and_diffusion_defaults().keys())
        info["factory_args"] = _jsonable(kwargs)
        with torch.device("meta"):
            model, _ = script_util.create_model_and_diffusion(**kwargs, conf=conf)
    elif kind == "blinddps":
        import yaml

        unet = importlib.import_module("guided_diffusion.unet")
        calls = capture_unet_kwargs(unet.UNetModel)
        cfg = yaml.load(Path(config).read_text(), Loader=yaml.FullLoader)
        info["factory_args"] = _jsonable(cfg)
        real_load = torch.load
        torch.load = lambda *a, **k: {}
        unet.UNetModel.load_state_dict = lambda self, *a, **k: None
        try:
            with torch.device("meta"):
                model = unet.create_model(**cfg)
        finally:
            torch.load = real_load
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    info["unet_init_calls"] = calls
    return model, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["guided", "cm", "ddpmseg", "repaint", "blinddps"])
    parser.add_argument("checkout", type=Path, help="an already-extracted source checkout")
    parser.add_argument("--flags", default="", help="README-style command-line flags")
    parser.add_argument("--config", help="YAML config (repaint, blinddps), relative to checkout")
    parser.add_argument("--exp", help="experiment JSON (ddpmseg), relative to checkout")
    parser.add_argument("--distillation", action="store_true", help="cm: distillation=True")
    opts = parser.parse_args(argv)
    checkout = opts.checkout.resolve()
    config = str(checkout / opts.config) if opts.config else None
    exp = str(checkout / opts.exp) if opts.exp else None
    stubbed = install_stubs()
    model, info = build(opts.kind, checkout, opts.flags, config, exp, opts.distillation)
    out = {
        "kind": opts.kind,
        "checkout": str(checkout),
        "config": opts.config,
        "exp": opts.exp,
        "flags": opts.flags,
        "model_class": type(model).__name__,
        "param_count": sum(p.numel() for p in model.parameters()),
        "buffer_count": sum(b.numel() for b in model.buffers()),
        "attention_blocks": attention_summary(model),
        "stubbed_modules": stubbed,
        **info,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
