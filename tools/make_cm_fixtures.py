#!/usr/bin/env python
"""Generate reference tensors from openai/consistency_models for idmzoo's exactness tests.

What it does
------------
For every configuration in ``CONFIGS`` (all named ``cm_*``) this script

1. seeds torch (``torch.manual_seed(seed)``) and builds the *reference*
   ``UNetModel`` of ``cm/unet.py`` with the exact constructor kwargs listed here
   (fp32: ``use_fp16=False``, ``use_checkpoint=False``, ``dropout=0``);
2. re-randomises every parameter, because the reference zero-initialises the
   output convolutions (and ``proj_out``) which would hide most of the
   network: weights with >= 2 dims get ``randn / sqrt(fan_in)``, GroupNorm
   weights ``1 + 0.1 * randn``, GroupNorm biases ``0.1 * randn`` and all other
   1-d parameters (biases) ``0.01 + 0.1 * randn``.  The state_dict is taken
   after this step;
3. draws the inputs: ``x ~ randn`` with the configured shape, ``timesteps =
   tensor([3.0, 517.0])`` and distinct int64 labels ``y`` when ``num_classes``
   is set;
4. records the eval-mode output (``model.eval()`` under ``torch.no_grad()``),
   then in train mode (identical, dropout is 0) runs the forward pass again
   with ``x`` requiring grad, draws ``cotangent = randn_like(out)``,
   back-propagates ``(out * cotangent).sum()`` and stores ``x.grad``
   (``input_grad``) and every named parameter's ``.grad`` (``param_grads``);
5. writes ``<name>.pt`` (a plain dict, loadable with
   ``torch.load(path, weights_only=True)``; the layout of the guided-diffusion
   fixtures in ``tests/fixtures/guided``) and an ``index.json`` describing all
   fixtures;
6. verifies every written file: reloads it, rebuilds the reference model,
   ``load_state_dict(strict=True)``, re-runs forward/backward and checks the
   output (<= 1e-6) and the gradients against the stored tensors.

It also records, under ``create_model_cases`` in the index, the constructor
kwargs that the reference ``cm.script_util`` pipeline (``add_dict_to_argparser``
over ``model_and_diffusion_defaults()``, argparse, ``create_model``) hands to
``UNetModel`` for a few command lines, among them the launch.sh models.  These
models are only constructed on the meta device (for their parameter counts).

Everything runs on CPU with ``torch.set_num_threads(1)`` and is deterministic
for a given torch build (the index records the torch version used).

The flash attention substitute
------------------------------
Every ``AttentionBlock`` that ``UNetModel`` builds uses its default
``attention_type="flash"``: ``QKVFlashAttention``, a wrapper around the
``flash_attn`` 0.2.8 CUDA kernel (fp16/bf16 only).  That module has no
parameters; it reads the ``[B, 3C, T]`` qkv tensor as ``(three, heads,
head_dim)`` channel groups (q/k/v first, then heads) and computes
``softmax(q k^T / sqrt(head_dim)) v`` per head.  This script replaces the class,
before any model is built, by :class:`ExactSoftmaxAttention`: the same
grouping, the same assertions (``head_dim`` in 16, 32 or 64), computed exactly
in float32 on CPU.  The fixtures therefore hold what the flash kernel
approximates; the real kernel's fp16 rounding is not part of them.

The consistency_models code is *not* vendored: it is imported from the checkout
given on the command line.  The script checks that ``cm/unet.py``, ``cm/nn.py``
and ``cm/script_util.py`` there are byte-identical (git blob ids) to those of
the pinned commit ``CM_COMMIT``.  Modules that ``cm`` imports but the model does
not need (``blobfile``, ``mpi4py``, ``piq``, ``torchvision``, ``flash_attn``,
``einops``) are stubbed when they are not installed.

How to rerun
------------
::

    git --git-dir=/path/to/consistency_models.git archive \\
        e32b69ee436d518377db86fb2127a3972d0d8716 | tar -x -C /tmp/consistency_models
    python tools/make_cm_fixtures.py --consistency-models /tmp/consistency_models \\
        --out tests/fixtures/consistency

    # only re-check existing fixtures against the reference:
    python tools/make_cm_fixtures.py --consistency-models /tmp/consistency_models \\
        --out tests/fixtures/consistency --verify-only

Notes on the configurations
---------------------------
``normalization()`` is ``GroupNorm(32, C)``, so every channel count is a
multiple of 32; and the flash kernel only takes head widths 16, 32 and 64,
which decides where attention can go with a given ``num_heads``.

Reference behaviour found while building these:

* ``AttentionBlock`` builds its ``qkv`` and ``proj_out`` with ``conv_nd(dims,
  ...)`` but ``UNetModel`` never passes ``dims``, so they are always 1x1
  ``Conv2d`` (``[3C, C, 1, 1]`` and ``[C, C, 1, 1]`` weights), even for
  ``dims=1`` or ``3`` -- where the model then crashes, as the middle block always
  has attention.  Only ``dims=2`` works; no fixture covers the others.
* ``use_new_attention_order`` is accepted by ``UNetModel`` and
  ``AttentionBlock`` but ignored: the flash path always splits q/k/v first.
  (``cm_neworder_flag_ignored`` sets it to show that.)
* The non-flash branch (``QKVAttentionLegacy``, unreachable from
  ``UNetModel``) casts qkv to float16 and also splits q/k/v first, despite its
  name.
* ``script_util.create_model`` has no channel_mult for image sizes other than
  64, 128, 256 and 512 unless ``--channel_mult`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import types

import torch
from reference_fixtures import (
    UNET_KWARGS,
    checkout_on_path,
    explicit_kwargs,
    generate_one,
    index_header,
    parse_args,
    verify_one,
    write_and_verify,
)

CM_COMMIT = "e32b69ee436d518377db86fb2127a3972d0d8716"
# git blob ids of the files that define the model and its flags at CM_COMMIT
EXPECTED_BLOBS = {
    "cm/unet.py": "e0fbbabc05bf486f4fabf0a0d4dd542ae0c40f9c",
    "cm/nn.py": "6793a0bd9677f18dfba8fa92af740b691ddf8ccb",
    "cm/script_util.py": "a862637b3ca62c2d94fa50e25d1e87b7d3fd9bda",
}
LIBRARY = "consistency-models"
TIMESTEPS = [3.0, 517.0]
GENERATOR = "tools/make_cm_fixtures.py"


# --------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------


def unet_kwargs(**overrides):
    """Full, explicit constructor kwargs of consistency_models' UNetModel."""
    return explicit_kwargs({**UNET_KWARGS, "channel_mult": [1, 2]}, overrides)


CONFIGS = [
    dict(
        name="cm_classcond_ssn_rud",
        description="like the ImageNet-64 models: class-conditional, scale-shift norm, resblock up/down, "
        "num_head_channels=16, learned sigma (out_channels 6), attention at rates 1 and 2",
        seed=20261200,
        kwargs=unet_kwargs(
            out_channels=6,
            attention_resolutions=[1, 2],
            channel_mult=[1, 1],
            num_classes=10,
            num_head_channels=16,
            use_scale_shift_norm=True,
            resblock_updown=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="cm_uncond_additive_rud",
        description="like the LSUN-256 models: unconditional, additive timestep embedding, resblock "
        "up/down, num_head_channels=32, 32 then 64 channels (real channel grouping in GroupNorm), "
        "attention at rates 1 and 2",
        seed=20261300,
        kwargs=unet_kwargs(
            attention_resolutions=[1, 2],
            channel_mult=[1, 2],
            num_head_channels=32,
            use_scale_shift_norm=False,
            resblock_updown=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="cm_neworder_flag_ignored",
        description="class-conditional, num_heads=2 / num_heads_upsample=1, conv resampling, scale-shift "
        "norm, learned sigma, use_new_attention_order=True (ignored by the reference)",
        seed=20261400,
        kwargs=unet_kwargs(
            out_channels=6,
            attention_resolutions=[2],
            channel_mult=[1, 1],
            num_classes=10,
            num_heads=2,
            num_heads_upsample=1,
            use_scale_shift_norm=True,
            resblock_updown=False,
            use_new_attention_order=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="cm_noconv_resample",
        description="conv_resample=False (avg-pool down, nearest up), num_res_blocks=2, additive "
        "timestep embedding, num_heads=1 (head width 32)",
        seed=20261500,
        kwargs=unet_kwargs(
            num_res_blocks=2,
            channel_mult=[1, 1],
            attention_resolutions=[1],
            conv_resample=False,
            num_heads=1,
            use_scale_shift_norm=False,
            resblock_updown=False,
        ),
        x_shape=[2, 3, 16, 16],
    ),
]

#: Command lines for ``script_util.create_model``: launch.sh's models, the defaults and edge cases.
CREATE_MODEL_CASES = [
    dict(
        name="cm_defaults",
        flags="",
        note="model_and_diffusion_defaults() unchanged: image_size 64, attention_resolutions 32,16,8",
    ),
    dict(
        name="cm_imagenet64",
        flags="--attention_resolutions 32,16,8 --class_cond True --use_scale_shift_norm True "
        "--dropout 0.0 --image_size 64 --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
        "--resblock_updown True --use_fp16 True --weight_schedule uniform",
        note="launch.sh ImageNet-64 consistency distillation / training model flags",
    ),
    dict(
        name="cm_lsun256",
        flags="--sigma_max 80 --sigma_min 0.002 --attention_resolutions 32,16,8 --class_cond False "
        "--use_scale_shift_norm False --dropout 0.0 --image_size 256 --num_channels 256 "
        "--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--weight_schedule uniform",
        note="launch.sh LSUN-256 consistency distillation model flags",
    ),
    dict(
        name="cm_explicit_mult",
        flags="--image_size 32 --channel_mult 1,2,2 --num_channels 64 --learn_sigma True "
        "--attention_resolutions 16 --num_heads 2 --num_heads_upsample 1 --use_new_attention_order True "
        "--use_checkpoint True --dropout 0.1",
        note="explicit channel_mult for a size without a table entry; learn_sigma doubles out_channels",
    ),
    dict(
        name="cm_512",
        flags="--image_size 512 --num_channels 64",
        note="512 uses the fractional first level 0.5",
    ),
    dict(
        name="cm_128",
        flags="--image_size 128 --num_channels 64 --num_res_blocks 1",
        note="128 channel_mult table entry",
    ),
    dict(
        name="cm_unsupported_size",
        flags="--image_size 32",
        note="no channel_mult for 32 and none given: create_model raises",
    ),
]


# --------------------------------------------------------------------------
# reference import
# --------------------------------------------------------------------------


class ExactSoftmaxAttention(torch.nn.Module):
    """Stands in for cm's ``QKVFlashAttention``: the same maths, exact, in float32.

    ``[B, 3 * H * D, T]`` whose channels are grouped ``(3, H, D)`` -> per head
    ``softmax(q k^T / sqrt(D)) v`` -> ``[B, H * D, T]``.  Parameter-free, like the
    module it replaces; keeps its constructor checks.
    """

    #: Head widths the flash kernel accepts; ``None`` lifts the check (meta-device parameter counts).
    head_dims = (16, 32, 64)

    def __init__(
        self,
        embed_dim,
        num_heads,
        batch_first=True,
        attention_dropout=0.0,
        causal=False,
        device=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__()
        assert batch_first and not causal and attention_dropout == 0.0
        assert embed_dim % num_heads == 0, f"{num_heads} heads do not divide {embed_dim} channels"
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        if self.head_dims is not None:
            assert self.head_dim in self.head_dims, (
                f"flash_attn takes head widths {self.head_dims}, not {self.head_dim}"
            )

    def forward(self, qkv):
        b, width, t = qkv.shape
        assert width == 3 * self.embed_dim
        q, k, v = qkv.reshape(b, 3, self.num_heads, self.head_dim, t).unbind(1)  # [B, H, D, T]
        logits = torch.einsum("bhdt,bhds->bhts", q, k) / math.sqrt(self.head_dim)
        weights = torch.softmax(logits, dim=-1)
        out = torch.einsum("bhts,bhds->bhdt", weights, v)
        return out.reshape(b, self.embed_dim, t)


def _stub_missing_modules():
    """Empty stand-ins for what ``cm`` imports but neither UNetModel nor create_model uses."""
    stubs = {
        "blobfile": {},
        "mpi4py": {"MPI": types.SimpleNamespace(COMM_WORLD=None)},
        "piq": {"LPIPS": None},
        "torchvision": {},
        "torchvision.transforms": {"RandomCrop": None},
        "flash_attn": {},
        "flash_attn.flash_attention": {"FlashAttention": None},
        "einops": {"rearrange": None},
    }
    for name, attrs in stubs.items():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            module = types.ModuleType(name)
            for attr, value in attrs.items():
                setattr(module, attr, value)
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)


def import_reference(checkout):
    """``(cm.unet, cm.script_util)`` from the checkout, with the flash attention substituted."""
    checkout_on_path(checkout, EXPECTED_BLOBS, "consistency_models", CM_COMMIT)
    _stub_missing_modules()
    unet = importlib.import_module("cm.unet")
    unet.QKVFlashAttention = ExactSoftmaxAttention
    script_util = importlib.import_module("cm.script_util")
    assert script_util.UNetModel is unet.UNetModel
    return unet, script_util


# --------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------


def check_attention_layout(model):
    """Assert what the fixtures are meant to pin down: 1x1 Conv2d projections, flash substitute."""
    blocks = [m for m in model.modules() if type(m).__name__ == "AttentionBlock"]
    assert blocks
    for block in blocks:
        assert isinstance(block.qkv, torch.nn.Conv2d) and block.qkv.kernel_size == (1, 1)
        assert isinstance(block.proj_out, torch.nn.Conv2d) and block.proj_out.kernel_size == (1, 1)
        assert isinstance(block.attention, ExactSoftmaxAttention)


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def meta_model(cls, kwargs, check_head_dims=True):
    """``cls(**kwargs)`` on the meta device; optionally without the flash kernel's head-width check."""
    ExactSoftmaxAttention.head_dims = (16, 32, 64) if check_head_dims else None
    try:
        with torch.device("meta"):
            return cls(**kwargs)
    finally:
        ExactSoftmaxAttention.head_dims = (16, 32, 64)


def create_model_case(script_util, case):
    """Run the reference flag pipeline; capture what create_model passes to UNetModel."""
    parser = argparse.ArgumentParser()
    script_util.add_dict_to_argparser(parser, script_util.model_and_diffusion_defaults())
    args = parser.parse_args(case["flags"].split())
    flags = script_util.args_to_dict(args, script_util.model_and_diffusion_defaults().keys())
    # create_model_and_diffusion minus the KarrasDenoiser: the diffusion-only flags stop here
    model_flags = {k: v for k, v in flags.items() if k not in ("sigma_min", "sigma_max", "weight_schedule")}
    captured = {}
    real = script_util.UNetModel

    def capture(**kwargs):
        captured.update(kwargs)
        return meta_model(real, kwargs, check_head_dims=False)

    entry = {
        "name": case["name"],
        "library": LIBRARY,
        "commit": CM_COMMIT,
        "flags": case["flags"],
        "note": case["note"],
        "built_via": "script_util.create_model",
    }
    script_util.UNetModel = capture
    try:
        model = script_util.create_model(**model_flags)
    except ValueError as err:
        entry["error"] = f"{type(err).__name__}: {err}"
        return entry
    finally:
        script_util.UNetModel = real
    try:
        meta_model(real, captured)
        flash_ok = True
    except AssertionError:
        flash_ok = False
    entry.update(
        {
            "class": "UNetModel",
            "kwargs": {k: _jsonable(v) for k, v in captured.items()},
            "param_count": sum(p.numel() for p in model.parameters()),
            "constructed_on": "meta",
            "flash_head_dims_ok": flash_ok,
        }
    )
    return entry


# --------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(
        argv,
        __doc__,
        "--consistency-models",
        "checkout of openai/consistency_models at " + CM_COMMIT,
        "tests/fixtures/consistency",
    )
    torch.set_num_threads(1)
    unet, script_util = import_reference(args.checkout)

    def generate(cfg, out_dir):
        return generate_one(
            unet.UNetModel,
            cfg,
            out_dir,
            library=LIBRARY,
            commit=CM_COMMIT,
            timesteps=TIMESTEPS,
            check_model=check_attention_layout,
        )

    def make_index(entries):
        cases = [create_model_case(script_util, case) for case in CREATE_MODEL_CASES]
        for case in cases:
            print(f"create_model {case['name']}: {case.get('param_count', case.get('error'))}", flush=True)
        return {
            **index_header(GENERATOR, LIBRARY, CM_COMMIT, TIMESTEPS),
            "attention": "cm's QKVFlashAttention (flash_attn CUDA kernel, fp16) is replaced by exact fp32 "
            "softmax attention with the same channel grouping (q/k/v, then heads) and "
            "scale 1/sqrt(head_dim); it has no parameters.",
            "notes": [
                "normalization() is GroupNorm(32, C): all channel counts are multiples of 32; the flash "
                "kernel takes head widths 16, 32 and 64 only, which the substitute keeps asserting.",
                "AttentionBlock's qkv and proj_out are 1x1 Conv2d whatever dims is (UNetModel does not "
                "pass dims to it), so the reference only runs with dims=2.",
                "use_new_attention_order is ignored by the reference (cm_neworder_flag_ignored sets it).",
                "With 32 channels GroupNorm(32, 32) has one channel per group, so the bias of the conv "
                "before it and, without scale-shift norm, of emb_layers get mathematically zero "
                "gradients (stored values are rounding noise); likewise the key part of qkv.bias.",
                "create_model_cases: kwargs that script_util.create_model passed to UNetModel for these "
                "flags (argparse over model_and_diffusion_defaults(); sigma_min, sigma_max and "
                "weight_schedule only reach KarrasDenoiser); param_count from a meta-device build.",
            ],
            "fixtures": entries,
            "create_model_cases": cases,
        }

    def verify_cases(index):
        return [
            case["name"]
            for case in index["create_model_cases"]
            if create_model_case(script_util, case) != case
        ]

    write_and_verify(args, CONFIGS, generate, make_index, lambda path: verify_one(unet, path), verify_cases)


if __name__ == "__main__":
    main()
