"""Loading the reference checkpoints (``.pt`` state dicts) safely into idmzoo models.

``torch.load`` runs with ``weights_only=True``: a file that needs arbitrary code to
unpickle is refused, never executed.  When a checkpoint does not fit, the error lists
the missing, unexpected and shape-mismatched keys, grouped and truncated, instead of
torch's one long line.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from .builder import build
from .errors import CheckpointError
from .spec import Spec, load_spec

__all__ = ["WRAPPER_KEYS", "load_checkpoint", "read_state_dict"]

#: Keys under which training scripts commonly nest the state dict; one of them is used
#: when the file is not itself a state dict and exactly one of them holds one.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "ema", "ema_state_dict")

_SHOWN = 10  # keys shown per group in a mismatch report
#: How torch's weights-only unpickler names the callable it refused to run.
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)")


def _reason(err: Exception) -> str:
    """The line of torch's error that says what went wrong (its messages run to paragraphs)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next(
        (line for line in lines if "WeightsUnpickler error" in line), lines[0] if lines else repr(err)
    )


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def read_state_dict(
    path: str | os.PathLike[str], *, key: str | None = None, map_location: Any = "cpu"
) -> dict[str, torch.Tensor]:
    """The state dict stored in a ``.pt`` file, read with ``weights_only=True``.

    Accepted: a plain ``{parameter name: tensor}`` mapping (the reference scripts save
    this), or a mapping where exactly one of :data:`WRAPPER_KEYS` holds such a mapping
    (or the one named by ``key``).

    Args:
        path: the checkpoint file.
        key: the entry holding the state dict, when the file nests it.
        map_location: passed to ``torch.load``.

    Returns:
        The state dict.

    Raises:
        CheckpointError: the file is missing, not a torch file, needs code to unpickle,
            or holds no (or more than one candidate) state dict.
    """
    name = os.fspath(path)
    try:
        loaded = torch.load(name, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        needed = _UNSUPPORTED_GLOBAL.search(str(err))
        if needed is None:
            raise CheckpointError(
                f"{name!r} cannot be read with torch.load(weights_only=True): it is not a torch "
                f"checkpoint, is damaged, or holds more than tensors ({_reason(err)})"
            ) from err
        raise CheckpointError(
            f"refused to load {name!r}: unpickling it would call {needed.group(1)}, and "
            "torch.load(weights_only=True) allows only tensors and plain containers; idmzoo never "
            "runs code from a checkpoint. A reference checkpoint holds only tensors; if you trust "
            "this file's author, extract its state dict yourself and torch.save() just that."
        ) from err
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {name!r}: {err.strerror or err}") from err
    except RuntimeError as err:
        raise CheckpointError(f"{name!r} is not a torch checkpoint, or is damaged: {_reason(err)}") from err
    if key is not None:
        if not (isinstance(loaded, Mapping) and _is_state_dict(loaded.get(key))):
            raise CheckpointError(f"{name!r} has no state dict under key {key!r}")
        return dict(loaded[key])
    if _is_state_dict(loaded):
        return dict(loaded)
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{name!r} holds a {type(loaded).__name__}, not a state dict")
    found = [k for k in WRAPPER_KEYS if _is_state_dict(loaded.get(k))]
    if len(found) == 1:
        return dict(loaded[found[0]])
    if found:
        raise CheckpointError(
            f"{name!r} holds several state dicts ({', '.join(map(repr, found))}); "
            "choose one with load_checkpoint(..., key=...)"
        )
    keys = ", ".join(repr(k) for k in list(loaded)[:_SHOWN])
    raise CheckpointError(
        f"{name!r} is not a state dict (a mapping of parameter names to tensors) and none of "
        f"{', '.join(WRAPPER_KEYS)} holds one; its top-level keys: {keys}"
    )


def _group(title: str, lines: list[str]) -> str:
    shown = "\n".join(f"    {line}" for line in lines[:_SHOWN])
    more = f"\n    ... and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return f"  {title} ({len(lines)}):\n{shown}{more}"


def _mismatch_report(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, missing_ok: bool, unexpected_ok: bool
) -> str | None:
    """A readable list of what keeps ``state`` from loading, or ``None`` when it fits."""
    expected = model.state_dict()
    groups = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing and not missing_ok:
        groups.append(_group("missing from the checkpoint", missing))
    if unexpected and not unexpected_ok:
        groups.append(_group("unexpected in the checkpoint", unexpected))
    shapes = [
        f"{k}: checkpoint {list(v.shape)}, model {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if shapes:
        groups.append(_group("shape mismatch", shapes))
    return "\n".join(groups) if groups else None


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def load_checkpoint(
    model_or_spec: nn.Module | Spec | Mapping[str, Any] | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    key: str | None = None,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a reference-format checkpoint into a model, or into a model built from a spec.

    Given a spec (a :class:`Spec`, a dict, or a ``.json`` path), the model is built on the
    ``meta`` device and takes the checkpoint's tensors directly (``assign=True``), so the
    weights are allocated once.  A model still on ``meta`` is loaded the same way; a model
    with real tensors (e.g. after ``model.to_empty(device="cpu")``) is copied into.  Each
    tensor keeps the model's dtype (an fp16 torso stays fp16).

    Args:
        model_or_spec: the model, or the spec to build it from.
        path: the ``.pt`` file; see :func:`read_state_dict` for the layouts accepted.
        strict: require the checkpoint's keys to match the model's exactly.  With
            ``strict=False`` missing and unexpected keys are skipped (a model on ``meta``
            still needs every key); shapes must always match.
        key: the entry holding the state dict, when the file nests several.
        map_location: where the tensors are loaded (``torch.load``'s ``map_location``).

    Returns:
        The model with the checkpoint's weights.

    Raises:
        CheckpointError: the file cannot be read safely, or does not fit the model (the
            message lists the missing, unexpected and shape-mismatched keys).
        pydantic.ValidationError: an invalid spec.

    Examples:
        >>> model = idmzoo.load_checkpoint(idmzoo.zoo_spec("adm_imagenet256_cond"), "256x256_diffusion.pt")
    """
    if isinstance(model_or_spec, nn.Module):
        model = model_or_spec
    else:
        model = build(load_spec(model_or_spec), device="meta")
    state = read_state_dict(path, key=key, map_location=map_location)
    meta = _on_meta(model)
    report = _mismatch_report(model, state, missing_ok=not (strict or meta), unexpected_ok=not strict)
    if report is not None:
        where = " (on the meta device, so every tensor must come from the checkpoint)" if meta else ""
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} does not fit the {type(model).__name__}{where}:\n{report}"
        )
    if meta:
        expected = model.state_dict()
        state = {k: v.to(expected[k].dtype) for k, v in state.items() if k in expected}
    model.load_state_dict(state, strict=strict, assign=meta)
    return model
