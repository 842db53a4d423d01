"""``build``: from a spec to a ready model."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from .errors import InvalidBlockError
from .registry import REGISTRY
from .runtime import Checkpointing
from .spec import Spec, load_spec

__all__ = ["build"]


def build(
    spec: Spec | Mapping[str, Any] | str | os.PathLike[str],
    *,
    checkpointing: Checkpointing = "none",
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build the model a spec describes.

    Args:
        spec: a :class:`Spec`, a dict, or the path of a ``.json`` spec file.
        checkpointing: recompute activations of ``"none"``, ``"attention"`` or ``"all"``
            blocks in the backward pass (a training option; it changes no weight).
        device: where to allocate parameters; ``"meta"`` builds without allocating memory.

    Returns:
        The model, with ``model.spec`` set to the validated spec.

    Raises:
        pydantic.ValidationError: the spec is invalid.
        IdmzooError: the spec file cannot be read, or a plugin block misbehaves.

    Examples:
        >>> model = idmzoo.build("specs/idm_cifar10_uncond.json")
        >>> eps = model(x, t)
    """
    spec = load_spec(spec)
    family = REGISTRY.get("family", spec.family.type)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = family.create(spec.family, spec)
    if not isinstance(model, nn.Module):
        raise InvalidBlockError(
            f"model family {family.name!r} (from {family.package}) returned "
            f"{type(model).__name__}, not a torch.nn.Module"
        )
    model.set_checkpointing(checkpointing)
    if spec.use_fp16:
        model.convert_to_fp16()
    return model
