#!/usr/bin/env python
"""Generate reference tensors from openai/guided-diffusion for idmzoo's exactness tests.

What it does
------------
For every configuration in ``CONFIGS`` (all named ``adm_*``) this script

1. seeds torch (``torch.manual_seed(seed)``) and builds the *reference* class
   (``UNetModel``, ``SuperResModel`` or ``EncoderUNetModel`` from
   ``guided_diffusion/unet.py``) with the exact constructor kwargs listed here
   (fp32: ``use_fp16=False``, ``use_checkpoint=False``, ``dropout=0``);
2. re-randomises every parameter, because the reference zero-initialises the
   output convolutions (and ``proj_out``) which would hide most of the
   network: weights with >= 2 dims get ``randn / sqrt(fan_in)``, GroupNorm
   weights ``1 + 0.1 * randn``, GroupNorm biases ``0.1 * randn`` and all other
   1-d parameters (biases) ``0.01 + 0.1 * randn``.  The state_dict is taken
   after this step;
3. draws the inputs: ``x ~ randn`` with the configured shape, ``timesteps =
   tensor([3.0, 517.0])``, ``y`` int64 labels when ``num_classes`` is set, and
   ``low_res ~ randn`` at half the spatial size for ``SuperResModel``;
4. records the eval-mode output (``model.eval()`` under ``torch.no_grad()``),
   then in train mode (identical, dropout is 0) runs the forward pass again
   with ``x`` (and ``low_res``) requiring grad, draws ``cotangent =
   randn_like(out)``, back-propagates ``(out * cotangent).sum()`` and stores
   ``x.grad`` (``input_grad``), ``low_res.grad`` (``low_res_grad``, super-res
   only) and every named parameter's ``.grad`` (``param_grads``);
5. writes ``<name>.pt`` (a plain dict, loadable with
   ``torch.load(path, weights_only=True)``; same layout as the
   improved-diffusion fixtures in ``tests/fixtures/reference``) and an
   ``index.json`` describing all fixtures;
6. verifies every written file: reloads it, rebuilds the reference model,
   ``load_state_dict(strict=True)``, re-runs forward/backward and checks the
   output (<= 1e-6) and the gradients against the stored tensors.

Everything runs on CPU with ``torch.set_num_threads(1)`` and is deterministic
for a given torch build (the index records the torch version used).

The guided-diffusion code is *not* vendored: it is imported from the checkout
given on the command line.  The script checks that ``guided_diffusion/unet.py``
and ``guided_diffusion/nn.py`` there are byte-identical (git blob ids) to those
of the pinned commit ``GUIDED_COMMIT``.

How to rerun
------------
::

    git --git-dir=/path/to/guided-diffusion.git worktree add /tmp/guided-diffusion \\
        22e0df8183507e13a7813f8d38d51b072ca1e67c
    #   (or: git archive 22e0df8... | tar -x -C /tmp/guided-diffusion)
    python tools/make_guided_fixtures.py --guided-diffusion /tmp/guided-diffusion \\
        --out tests/fixtures/guided

    # only re-check existing fixtures against the reference:
    python tools/make_guided_fixtures.py --guided-diffusion /tmp/guided-diffusion \\
        --out tests/fixtures/guided --verify-only

Notes on the configurations
---------------------------
``normalization()`` in the reference is ``GroupNorm(32, C)``, so every channel
count must be a multiple of 32; model_channels=32 is therefore the smallest
usable width, and the fractional first level (``channel_mult[0] == 0.5``) needs
model_channels=64 (0.5 * 32 = 16 channels would crash in GroupNorm).

Reference limitations found while building these (not covered by fixtures,
because the reference itself crashes or silently misbehaves there):

* ``SuperResModel`` only supports dims=2 (``_, _, H, W = x.shape``).
* ``EncoderUNetModel`` is effectively 2-D only: with dims=1 every pool
  crashes; with dims=3 "attention" and "spatial"/"spatial_v2" crash
  (``AttentionPool2d`` positional-embedding size, ``mean(dim=(2, 3))`` leaving
  the W axis), and "adaptive" silently returns ``[N, out_channels * D]``
  because ``nn.AdaptiveAvgPool2d`` on a 5-D tensor pools only H and W.
* ``pool="attention"`` requires the input size to equal ``image_size``.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch
from reference_fixtures import (
    UNET_KWARGS,
    checkout_on_path,
    explicit_kwargs,
    generate_one,
    index_header,
    make_inputs,
    parse_args,
    verify_one,
    write_and_verify,
)

GUIDED_COMMIT = "22e0df8183507e13a7813f8d38d51b072ca1e67c"
# git blob ids of the files that define the models at GUIDED_COMMIT
EXPECTED_BLOBS = {
    "guided_diffusion/unet.py": "96b46930006b7c9e49948d31568474824195cf8f",
    "guided_diffusion/nn.py": "a4cd59c2324b003626b8cf4c7581effd334908d3",
}
LIBRARY = "guided-diffusion"
TIMESTEPS = [3.0, 517.0]
GENERATOR = "tools/make_guided_fixtures.py"
#: inputs whose gradients the fixtures store (``low_res`` only for SuperResModel)
GRAD_INPUTS = ("x", "low_res")


# --------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------


def unet_kwargs(**overrides):
    """Full, explicit constructor kwargs of guided_diffusion UNetModel."""
    return explicit_kwargs(UNET_KWARGS, overrides)


def encoder_kwargs(**overrides):
    """Full, explicit constructor kwargs of guided_diffusion EncoderUNetModel."""
    kw = unet_kwargs()
    del kw["num_classes"]
    kw.update(out_channels=10, pool="adaptive")
    return explicit_kwargs(kw, overrides)


CONFIGS = [
    dict(
        name="adm_classcond_legacy",
        description="class-conditional UNet, legacy attention order, num_heads=4 / "
        "num_heads_upsample=2, conv resampling, scale-shift norm, channel_mult (1,2,2)",
        cls="UNetModel",
        seed=20260000,
        kwargs=unet_kwargs(
            out_channels=6,
            attention_resolutions=[2, 4],
            channel_mult=[1, 2, 2],
            conv_resample=True,
            num_classes=10,
            num_heads=4,
            num_head_channels=-1,
            num_heads_upsample=2,
            use_scale_shift_norm=True,
            resblock_updown=False,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_neworder_rud",
        description="new attention order, num_head_channels=16, resblock up/down, scale-shift norm",
        cls="UNetModel",
        seed=20260100,
        kwargs=unet_kwargs(
            num_head_channels=16,
            use_scale_shift_norm=True,
            resblock_updown=True,
            use_new_attention_order=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_noconv_resample",
        description="conv_resample=False (avg-pool down, nearest up, no conv), "
        "additive timestep embedding, legacy attention num_heads=2",
        cls="UNetModel",
        seed=20260200,
        kwargs=unet_kwargs(
            conv_resample=False,
            num_heads=2,
            use_scale_shift_norm=False,
            resblock_updown=False,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_fractional_mult",
        description="fractional first level like the 512x512 ADM models: "
        "channel_mult (0.5,1) with model_channels=64 (32/64 channels), "
        "num_head_channels=8, resblock up/down, scale-shift norm, class-conditional",
        cls="UNetModel",
        seed=20260300,
        kwargs=unet_kwargs(
            model_channels=64,
            out_channels=6,
            channel_mult=[0.5, 1],
            num_classes=10,
            num_head_channels=8,
            use_scale_shift_norm=True,
            resblock_updown=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_1d",
        description="dims=1, resblock up/down, new attention order, num_head_channels=16",
        cls="UNetModel",
        seed=20260400,
        kwargs=unet_kwargs(
            image_size=32,
            in_channels=2,
            out_channels=2,
            dims=1,
            num_head_channels=16,
            use_scale_shift_norm=True,
            resblock_updown=True,
            use_new_attention_order=True,
        ),
        x_shape=[2, 2, 32],
    ),
    dict(
        name="adm_3d",
        description="dims=3, conv resampling (stride (1,2,2) conv down, H/W-only nearest up + conv3d), "
        "legacy attention num_heads=2",
        cls="UNetModel",
        seed=20260500,
        kwargs=unet_kwargs(
            dims=3,
            conv_resample=True,
            resblock_updown=False,
            num_heads=2,
            use_scale_shift_norm=False,
        ),
        x_shape=[2, 3, 4, 16, 16],
    ),
    dict(
        name="adm_3d_rud",
        description="dims=3 with resblock up/down (avg-pool (1,2,2) / H,W-only nearest), "
        "new attention order, num_head_channels=16, scale-shift norm",
        cls="UNetModel",
        seed=20260600,
        kwargs=unet_kwargs(
            dims=3,
            resblock_updown=True,
            num_head_channels=16,
            use_new_attention_order=True,
            use_scale_shift_norm=True,
        ),
        x_shape=[2, 3, 4, 16, 16],
    ),
    dict(
        name="adm_superres",
        description="class-conditional SuperResModel (bilinear upsampled low_res concatenated), "
        "resblock up/down, num_head_channels=16, scale-shift norm",
        cls="SuperResModel",
        seed=20260700,
        kwargs=unet_kwargs(
            out_channels=6,
            num_classes=10,
            num_head_channels=16,
            use_scale_shift_norm=True,
            resblock_updown=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_encoder_adaptive",
        description="EncoderUNetModel pool='adaptive' (GroupNorm, SiLU, AdaptiveAvgPool2d, 1x1 conv)",
        cls="EncoderUNetModel",
        seed=20260800,
        kwargs=encoder_kwargs(
            pool="adaptive",
            num_head_channels=16,
            use_scale_shift_norm=True,
            resblock_updown=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_encoder_attention",
        description="EncoderUNetModel pool='attention' (AttentionPool2d, image_size must match input), "
        "like the guided-diffusion classifiers",
        cls="EncoderUNetModel",
        seed=20260900,
        kwargs=encoder_kwargs(
            pool="attention",
            num_head_channels=16,
            use_scale_shift_norm=True,
            resblock_updown=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_encoder_spatial",
        description="EncoderUNetModel pool='spatial' (per-block spatial means -> Linear 2048 -> ReLU -> Linear)",
        cls="EncoderUNetModel",
        seed=20261000,
        kwargs=encoder_kwargs(
            pool="spatial",
            num_heads=2,
            conv_resample=True,
            resblock_updown=False,
            use_scale_shift_norm=False,
        ),
        x_shape=[2, 3, 16, 16],
    ),
    dict(
        name="adm_encoder_spatial_v2",
        description="EncoderUNetModel pool='spatial_v2' (Linear 2048 -> GroupNorm(32, 2048) on [N, 2048] "
        "-> SiLU -> Linear), avg-pool downsampling",
        cls="EncoderUNetModel",
        seed=20261100,
        kwargs=encoder_kwargs(
            pool="spatial_v2",
            num_head_channels=16,
            conv_resample=False,
            resblock_updown=False,
            use_scale_shift_norm=True,
            use_new_attention_order=True,
        ),
        x_shape=[2, 3, 16, 16],
    ),
]


# --------------------------------------------------------------------------
# reference import
# --------------------------------------------------------------------------


def import_reference(checkout):
    checkout_on_path(checkout, EXPECTED_BLOBS, "guided-diffusion", GUIDED_COMMIT)
    # guided_diffusion.unet -> .fp16_util -> .logger; none of these need
    # mpi4py/blobfile at import time at the pinned commit, but stub them if
    # some import chain asks for them so that no install is required.
    for _ in range(4):
        try:
            return importlib.import_module("guided_diffusion.unet")
        except ModuleNotFoundError as e:
            if e.name not in ("mpi4py", "blobfile") or e.name in sys.modules:
                raise
            stub = types.ModuleType(e.name)
            if e.name == "mpi4py":
                stub.MPI = types.SimpleNamespace(COMM_WORLD=None)
            sys.modules[e.name] = stub
    raise RuntimeError("could not import guided_diffusion.unet")


# --------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------


def make_superres_inputs(cfg, timesteps):
    """The shared inputs, then ``low_res`` at half the spatial size for ``SuperResModel``."""
    inputs = make_inputs(cfg, timesteps)
    if cfg["cls"] == "SuperResModel":
        n, c, h, w = cfg["x_shape"]
        inputs["low_res"] = torch.randn(n, c, h // 2, w // 2)
    return inputs


def main(argv=None):
    args = parse_args(
        argv,
        __doc__,
        "--guided-diffusion",
        "checkout of openai/guided-diffusion at " + GUIDED_COMMIT,
        "tests/fixtures/guided",
    )
    torch.set_num_threads(1)
    unet = import_reference(args.checkout)

    def generate(cfg, out_dir):
        return generate_one(
            getattr(unet, cfg["cls"]),
            cfg,
            out_dir,
            library=LIBRARY,
            commit=GUIDED_COMMIT,
            timesteps=TIMESTEPS,
            inputs_fn=make_superres_inputs,
            grad_inputs=GRAD_INPUTS,
        )

    def make_index(entries):
        return {
            **index_header(GENERATOR, LIBRARY, GUIDED_COMMIT, TIMESTEPS),
            "notes": [
                "normalization() is GroupNorm(32, C): all channel counts are multiples of 32, so "
                "channel_mult 0.5 needs model_channels 64.",
                "With 32 channels GroupNorm(32, 32) has one channel per group, so the bias of the "
                "conv before it (in_layers) and, without scale-shift norm, of emb_layers get "
                "mathematically zero gradients (stored values are rounding noise); likewise the key part "
                "of qkv.bias. Layers with 64+ channels (adm_classcond_legacy, adm_fractional_mult, "
                "spatial_v2's GroupNorm(32, 2048)) exercise real channel grouping.",
                "AttentionBlock always uses the reference's custom gradient checkpoint "
                "(flag hard-coded True); gradients are unaffected.",
                "Not covered because the reference fails there: SuperResModel with dims!=2; "
                "EncoderUNetModel with dims!=2 (dims=3 'adaptive' silently returns "
                "[N, out_channels*D]); pool='attention' with input size != image_size.",
            ],
            "fixtures": entries,
        }

    write_and_verify(args, CONFIGS, generate, make_index, lambda path: verify_one(unet, path, GRAD_INPUTS))


if __name__ == "__main__":
    main()
