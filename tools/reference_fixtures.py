"""Shared machinery of the reference-fixture generators (``tools/make_*_fixtures.py``).

The generators build a reference library's model from a pinned checkout, record
its outputs and gradients and write them as ``.pt`` fixtures plus an
``index.json``.  Everything they have in common lives here, once, so that the
fixture layout, the re-randomisation and the checks cannot drift apart between
them.  No reference code is in this module: each generator imports its own
reference and keeps its configurations, stubs and patches.

The order of random draws and of dict keys here is part of the fixtures'
bytes: changing either changes every regenerated ``.pt`` file.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys

import torch

#: Largest output difference that ``verify_one`` accepts.
OUTPUT_ATOL = 1e-6

#: What ``rerandomise`` does, as recorded in every ``index.json``.
RERANDOMISATION = (
    "weights (ndim>=2): randn/sqrt(fan_in); GroupNorm weight: 1+0.1*randn; "
    "GroupNorm bias: 0.1*randn; other 1-d params: 0.01+0.1*randn"
)


#: Every constructor argument of the reference ``UNetModel`` (guided-diffusion's and
#: consistency_models', which take the same ones), explicit and in the constructor's
#: order: fp32, no checkpointing, no dropout.  Each configuration overrides a few.
UNET_KWARGS = dict(
    image_size=16,
    in_channels=3,
    model_channels=32,
    out_channels=3,
    num_res_blocks=1,
    attention_resolutions=[2],
    dropout=0.0,
    channel_mult=[1, 1],
    conv_resample=True,
    dims=2,
    num_classes=None,
    use_checkpoint=False,
    use_fp16=False,
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    resblock_updown=False,
    use_new_attention_order=False,
)


def explicit_kwargs(defaults, overrides):
    """A deep copy of ``defaults`` updated with ``overrides``, refusing names the constructor
    does not take.  The copy keeps configurations from sharing (and pickling) the same lists."""
    unknown = set(overrides) - set(defaults)
    assert not unknown, unknown
    return {**copy.deepcopy(defaults), **overrides}


# --------------------------------------------------------------------------
# reference checkout
# --------------------------------------------------------------------------


def git_blob_id(path):
    """Git's blob id of a file, so a checkout can be matched to a pinned commit without git."""
    with open(path, "rb") as f:
        data = f.read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def checkout_on_path(checkout, expected_blobs, label, commit):
    """Refuse a checkout whose model files differ from the pinned commit; else put it on sys.path.

    Returns the absolute checkout path.  ``label`` names the repository in the error.
    """
    checkout = os.path.abspath(checkout)
    for rel, blob in expected_blobs.items():
        got = git_blob_id(os.path.join(checkout, rel))
        if got != blob:
            raise SystemExit(f"{rel} in {checkout} has blob {got}, expected {blob} ({label} commit {commit})")
    sys.path.insert(0, checkout)
    return checkout


# --------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------


@torch.no_grad()
def rerandomise(model):
    """Overwrite every parameter (see ``RERANDOMISATION``).

    The references zero-initialise output convolutions and ``proj_out``, which
    would hide most of the network from the fixtures.
    """
    gn = {}
    for mod in model.modules():
        if isinstance(mod, torch.nn.GroupNorm):
            if mod.weight is not None:
                gn[id(mod.weight)] = "gn_weight"
                gn[id(mod.bias)] = "gn_bias"
    for _name, p in model.named_parameters():
        kind = gn.get(id(p))
        if kind == "gn_weight":
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif kind == "gn_bias":
            p.copy_(0.1 * torch.randn_like(p))
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn_like(p) / fan_in**0.5)
        else:
            p.copy_(0.01 + 0.1 * torch.randn_like(p))


def make_inputs(cfg, timesteps):
    """``x``, ``timesteps`` and, with ``num_classes``, distinct labels ``y`` (drawn in that order)."""
    kw = cfg["kwargs"]
    inputs = {
        "x": torch.randn(cfg["x_shape"]),
        "timesteps": torch.tensor(timesteps, dtype=torch.float32),
    }
    n = cfg["x_shape"][0]
    assert n == len(timesteps)
    if kw.get("num_classes"):
        # distinct labels, so that mixing up samples' labels is detectable
        inputs["y"] = torch.randperm(kw["num_classes"])[:n].to(torch.int64)
    return inputs


def run_train(model, inputs, grad_inputs=("x",), cotangent=None):
    """Train-mode forward + backward of ``(out * cotangent).sum()``.

    Returns ``(out, cotangent, {input: grad} for grad_inputs, {parameter: grad})``;
    a parameter without a gradient is an error (it would be untested).
    """
    model.train()
    model.zero_grad(set_to_none=True)
    args = {
        k: (v.detach().clone().requires_grad_(True) if k in grad_inputs else v) for k, v in inputs.items()
    }
    out = model(**args)
    if cotangent is None:
        cotangent = torch.randn_like(out)
    (out * cotangent).sum().backward()
    in_grads = {k: args[k].grad.detach().clone() for k in grad_inputs if k in inputs}
    p_grads = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            raise RuntimeError(f"parameter {name} received no gradient")
        p_grads[name] = p.grad.detach().clone()
    return out.detach(), cotangent, in_grads, p_grads


@torch.no_grad()
def run_eval(model, inputs):
    """Eval-mode output without autograd: the tensor the fixtures compare first."""
    model.eval()
    return model(**inputs).detach().clone()


def maxabs(a, b=None):
    """Largest absolute value of ``a`` (or of ``a - b``) as a float, for stats and diffs."""
    if b is None:
        return float(a.abs().max())
    return float((a - b).abs().max())


def generate_one(
    model_cls,
    cfg,
    out_dir,
    *,
    library,
    commit,
    timesteps,
    inputs_fn=make_inputs,
    grad_inputs=("x",),
    check_model=None,
):
    """Build, re-randomise, record and save one fixture; return its ``index.json`` entry.

    ``inputs_fn(cfg, timesteps)`` draws the inputs; gradients are kept for the
    ``grad_inputs`` present (``x`` as ``input_grad``, any other ``k`` as
    ``<k>_grad``).  ``check_model(model)`` may assert on the freshly built model.
    """
    torch.manual_seed(cfg["seed"])
    model = model_cls(**cfg["kwargs"])
    if check_model is not None:
        check_model(model)
    rerandomise(model)
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    inputs = inputs_fn(cfg, timesteps)

    output = run_eval(model, inputs)
    out_train, cotangent, in_grads, p_grads = run_train(model, inputs, grad_inputs)
    rerun = run_eval(model, inputs)

    zero_grads = sorted(n for n, g in p_grads.items() if not bool(g.ne(0).any()))
    if zero_grads:
        raise RuntimeError(f"{cfg['name']}: all-zero gradients for {zero_grads}")
    for k, g in in_grads.items():
        if not bool(g.ne(0).any()):
            raise RuntimeError(f"{cfg['name']}: all-zero gradient for input {k}")
    if not torch.isfinite(output).all():
        raise RuntimeError(f"{cfg['name']}: non-finite output")

    stats = {
        "train_vs_eval_output_maxabs": maxabs(out_train, output),
        "rerun_maxabs": maxabs(rerun, output),
        "output_maxabs": maxabs(output),
        "input_grad_maxabs": maxabs(in_grads["x"]),
        "param_grads_maxabs": max(maxabs(g) for g in p_grads.values()),
        "param_grad_zero_elements": int(sum(int(g.eq(0).sum()) for g in p_grads.values())),
    }
    param_count = sum(p.numel() for p in model.parameters())
    record = {
        "library": library,
        "commit": commit,
        "class": model_cls.__name__,
        "kwargs": cfg["kwargs"],
        "seed": cfg["seed"],
        "state_dict": state_dict,
        "inputs": {k: v.detach().clone() for k, v in inputs.items()},
        "output": output,
        "cotangent": cotangent.detach().clone(),
        "input_grad": in_grads["x"],
        "param_grads": p_grads,
        "param_count": param_count,
        "stats": stats,
    }
    for k, g in in_grads.items():
        if k != "x":
            record[f"{k}_grad"] = g
    fname = cfg["name"] + ".pt"
    path = os.path.join(out_dir, fname)
    torch.save(record, path)
    with open(path, "rb") as f:
        blob = f.read()
    return {
        "name": cfg["name"],
        "file": fname,
        "description": cfg["description"],
        "library": library,
        "commit": commit,
        "class": model_cls.__name__,
        "kwargs": cfg["kwargs"],
        "seed": cfg["seed"],
        "param_count": param_count,
        "input_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "input_dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in inputs.items()},
        "output_shape": list(output.shape),
        "size_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "stats": stats,
    }


def index_header(generator, library, commit, timesteps):
    """The leading ``index.json`` fields every generator writes (the generator adds its notes after)."""
    return {
        "generator": generator,
        "library": library,
        "commit": commit,
        "torch": torch.__version__,
        "timesteps": timesteps,
        "rerandomisation": RERANDOMISATION,
    }


# --------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------


def verify_one(classes, path, grad_inputs=("x",)):
    """Rebuild ``getattr(classes, rec["class"])`` from a fixture, rerun it and compare.

    Returns ``(ok, diffs)``: output within ``OUTPUT_ATOL``, gradients within
    1e-5 relative to their stored magnitude (1 for inputs other than ``x``).
    """
    rec = torch.load(path, weights_only=True)
    model = getattr(classes, rec["class"])(**rec["kwargs"])
    model.load_state_dict(rec["state_dict"], strict=True)
    inputs = rec["inputs"]
    out = run_eval(model, inputs)
    _, _, in_grads, p_grads = run_train(model, inputs, grad_inputs, cotangent=rec["cotangent"])
    assert set(p_grads) == set(rec["param_grads"]), "parameter names differ"
    assert rec["param_count"] == sum(p.numel() for p in model.parameters())
    diffs = {
        "output": maxabs(out, rec["output"]),
        "input_grad": maxabs(in_grads["x"], rec["input_grad"]),
        "param_grads": max(maxabs(p_grads[k], rec["param_grads"][k]) for k in p_grads),
    }
    bounds = [
        (diffs["input_grad"], rec["stats"]["input_grad_maxabs"]),
        (diffs["param_grads"], rec["stats"]["param_grads_maxabs"]),
    ]
    for k, g in in_grads.items():
        if k != "x":
            diffs[f"{k}_grad"] = maxabs(g, rec[f"{k}_grad"])
            bounds.append((diffs[f"{k}_grad"], 1.0))
    ok = diffs["output"] <= OUTPUT_ATOL and all(v <= 1e-5 * max(1.0, s) for v, s in bounds)
    return ok, diffs


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def parse_args(argv, doc, checkout_option, checkout_help, out_example):
    """The generators' shared command line; the checkout lands in ``args.checkout``."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    metavar = checkout_option.lstrip("-").upper().replace("-", "_")  # argparse's own, for dest "checkout"
    ap.add_argument(checkout_option, dest="checkout", metavar=metavar, required=True, help=checkout_help)
    ap.add_argument("--out", required=True, help=f"output directory (e.g. {out_example})")
    ap.add_argument(
        "--verify-only",
        action="store_true",
        help="do not regenerate; only check the fixtures listed in <out>/index.json",
    )
    return ap.parse_args(argv)


def write_and_verify(args, configs, generate, make_index, verify, verify_extra=None):
    """Write the fixtures and index to ``args.out`` (unless ``--verify-only``), then verify them.

    ``generate(cfg, out_dir)`` returns an index entry, ``make_index(entries)``
    the whole index, ``verify(path)`` ``(ok, diffs)``; ``verify_extra(index)``
    returns the names of further failed checks.  Any failure exits non-zero.
    """
    out_dir, verify_only = args.out, args.verify_only
    os.makedirs(out_dir, exist_ok=True)
    index_path = os.path.join(out_dir, "index.json")

    if not verify_only:
        entries = []
        for cfg in configs:
            entry = generate(cfg, out_dir)
            print(
                f"wrote {entry['file']}: {entry['param_count']} params, {entry['size_bytes']} bytes",
                flush=True,
            )
            entries.append(entry)
        index = make_index(entries)
        with open(index_path, "w") as f:
            json.dump(index, f, indent=1)
            f.write("\n")

    with open(index_path) as f:
        index = json.load(f)
    failed = []
    for entry in index["fixtures"]:
        ok, diffs = verify(os.path.join(out_dir, entry["file"]))
        print(f"verify {entry['name']}: {'ok' if ok else 'FAILED'} {diffs}", flush=True)
        if not ok:
            failed.append(entry["name"])
    if verify_extra is not None:
        failed.extend(verify_extra(index))
    if failed:
        raise SystemExit(f"verification failed for {failed}")
