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
from .errors import CheckpointError, IdmzooError
from .files import open_regular
from .messages import one_line, shorten
from .spec import Spec, load_spec

__all__ = ["WRAPPER_KEYS", "WRAPPER_PREFIXES", "load_checkpoint", "read_state_dict"]

#: Keys under which training scripts commonly nest the state dict; one of them is used
#: when the file is not itself a state dict and exactly one of them holds one.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "ema", "ema_state_dict")

#: Key prefixes added by wrappers: ``DistributedDataParallel``/``DataParallel`` and ``torch.compile``.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

_SHOWN = 10  # keys shown per group in a mismatch report
#: How torch's weights-only unpickler names the callable it refused to run (torch 2.13:
#: "Trying to load unsupported GLOBAL posix.system whose module posix is blocked").
_UNSUPPORTED_GLOBAL = re.compile(r"unsupported (?:global: )?(?:GLOBAL|class) ([\w.]+)", re.IGNORECASE)
#: How a torch file starts: a zip archive (torch >= 1.6), or a pickle (protocol 2+ opcode).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def _reason(err: Exception) -> str:
    """The line of torch's error that says what went wrong (its messages run to paragraphs).

    torch's advice to re-run with ``weights_only=False`` is left out: idmzoo never does.
    """
    lines = [
        line.strip()
        for line in str(err).splitlines()
        if line.strip() and "weights_only" not in line and "Weights only load failed" not in line
    ]
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
        CheckpointError: the file is missing, not a regular file (a FIFO, a device), empty,
            not a torch file, needs code to unpickle (the callable is named), holds no (or
            more than one candidate) state dict, or holds tensors that cannot be weights
            (meta, sparse, complex).
    """
    name = os.fspath(path)
    try:
        handle, size = open_regular(path, "checkpoint")
    except IdmzooError as err:
        raise CheckpointError(str(err)) from err.__cause__
    with handle:
        if size == 0:
            raise CheckpointError(f"checkpoint {name!r} is empty (0 bytes)")
        head = handle.read(4)
        if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
            raise CheckpointError(
                f"checkpoint {name!r} is not a torch checkpoint: it starts with {head!r}, but torch.save "
                "writes a zip archive (b'PK\\x03\\x04') or a pickle (b'\\x80')"
            )
        handle.seek(0)
        loaded = _load(handle, name, map_location)
    return _checked_tensors(_unwrap(loaded, name, key), name)


def _load(handle: Any, name: str, map_location: Any) -> Any:
    """``torch.load(weights_only=True)``, with every failure a :class:`CheckpointError` naming the file."""
    try:
        return torch.load(handle, map_location=map_location, weights_only=True)
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
    except Exception as err:  # EOFError, KeyError, ... from a truncated or foreign file
        raise CheckpointError(f"{name!r} is not a torch checkpoint, or is damaged: {one_line(err)}") from err


def _checked_tensors(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Refuse tensors that cannot be weights: no data (meta), sparse layouts, complex numbers."""
    bad = [
        f"{shorten(k)} ({'meta' if v.is_meta else v.layout if v.layout != torch.strided else v.dtype})"
        for k, v in state.items()
        if v.is_meta or v.layout != torch.strided or v.is_complex()
    ]
    if bad:
        raise CheckpointError(
            f"{name!r} holds {len(bad)} tensors that cannot be weights (no data, sparse or complex): "
            f"{', '.join(bad[:_SHOWN])}{' ...' if len(bad) > _SHOWN else ''}"
        )
    return state


def _unwrap(loaded: Any, name: str, key: str | None) -> dict[str, torch.Tensor]:
    """The state dict in what ``torch.load`` returned (see :func:`read_state_dict`)."""
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


def _prefix_of(state: Mapping[str, torch.Tensor], expected: Mapping[str, Any]) -> str | None:
    """The wrapper prefix (or chain of them, ``_orig_mod.module.``) on every key of ``state``, if any."""
    prefix = ""
    keys = list(state)
    while True:
        found = next(
            (p for p in WRAPPER_PREFIXES if keys and all(k.startswith(prefix + p) for k in keys)), None
        )
        if found is None or any(k.startswith(prefix + found) for k in expected):
            return prefix or None
        prefix += found


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _dtype_report(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Checkpoint tensors that are not floating point where the model holds floating-point weights."""
    expected = model.state_dict()
    wrong = [
        f"{k}: checkpoint {v.dtype}, model {expected[k].dtype}"
        for k, v in state.items()
        if k in expected and expected[k].is_floating_point() and not v.is_floating_point()
    ]
    return _group("not floating point (int, bool) where the model has floats", wrong) if wrong else None


def _on_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def load_checkpoint(
    model_or_spec: nn.Module | Spec | Mapping[str, Any] | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    key: str | None = None,
    map_location: Any = "cpu",
    strip_prefix: bool | str = False,
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
        strip_prefix: ``True`` removes the prefixes that ``DistributedDataParallel`` /
            ``DataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``) add to every
            key; a string removes that prefix from the keys that have it.  Without it, such
            a checkpoint is refused with a hint to pass it.

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
    prefix = _prefix_of(state, model.state_dict())
    hint = ""
    if isinstance(strip_prefix, str):
        state = _strip(state, strip_prefix)
    elif strip_prefix and prefix:
        state = _strip(state, prefix)
    elif prefix:
        hint = (
            f"\n  every checkpoint key starts with {prefix!r} (added by DistributedDataParallel or "
            "torch.compile); load it with load_checkpoint(..., strip_prefix=True)"
        )
    meta = _on_meta(model)
    report = _mismatch_report(model, state, missing_ok=not (strict or meta), unexpected_ok=not strict)
    report = "\n".join(filter(None, [report, _dtype_report(model, state)])) or None
    if report is not None:
        where = " (on the meta device, so every tensor must come from the checkpoint)" if meta else ""
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} does not fit the {type(model).__name__}{where}:\n{report}{hint}"
        )
    if meta:
        expected = model.state_dict()
        state = {k: v.to(expected[k].dtype) for k, v in state.items() if k in expected}
    model.load_state_dict(state, strict=strict, assign=meta)
    return model
