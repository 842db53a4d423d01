"""``build``: from a spec to a ready model."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .errors import BlockBuildError, IdmzooError
from .messages import shorten
from .models.base import IdmzooModel
from .registry import REGISTRY
from .runtime import Checkpointing
from .shape_check import check_block_shapes, uses_plugin_blocks
from .spec import Spec, load_spec

__all__ = ["build", "check_device"]


def check_device(device: torch.device | str) -> torch.device:
    """``device`` parsed, if this machine has it; else an :class:`IdmzooError` saying why.

    So ``cuda:7`` on a 2-GPU machine fails as that, not as an assertion inside the family.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise IdmzooError(
            f"{shorten(str(device))!r} is not a torch device ({' '.join(str(err).split())})"
        ) from None
    if parsed.type in ("cpu", "meta"):
        return parsed
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise IdmzooError(f"device {str(device)!r}: no {parsed.type} device is available here")
    count = getattr(getattr(torch, parsed.type, None), "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise IdmzooError(
            f"device {str(device)!r}: this machine has {count()} {parsed.type} device(s), numbered from 0"
        )
    return parsed


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's generators inside the body and restore the caller's afterwards."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, but got {type(seed).__name__}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def build(
    spec: Spec | Mapping[str, Any] | str | os.PathLike[str],
    *,
    checkpointing: Checkpointing = "none",
    device: torch.device | str | None = None,
    seed: int | None = None,
    check_shapes: bool | None = None,
) -> IdmzooModel:
    """Build the model a spec describes.

    Args:
        spec: a :class:`Spec`, a dict, or the path of a ``.json`` spec file.
        checkpointing: recompute activations in the backward pass for ``"none"``,
            ``"attention"`` or ``"all"`` blocks, ``"selective"`` (every block, keeping its
            convolution, matmul and attention outputs), or ``{kind: "none" | "full" |
            "selective"}`` per block kind (a training option; it changes no weight).
        device: where to allocate parameters; ``"meta"`` builds without allocating memory.
        seed: seed the initial weights: the same spec and seed give bit-identical weights
            (on the same device type and torch version).  The caller's random state is
            left untouched.  ``None`` draws from torch's global generator as usual.
        check_shapes: run every block once on the meta device and check it returns the
            shape the layout expects, naming the first block that does not.  ``None`` (the
            default) checks when the spec uses a block from a plugin; ``True`` always;
            ``False`` never (for a plugin block that cannot run on the meta device).

    Returns:
        The model, with ``model.spec`` set to the validated spec.

    Raises:
        pydantic.ValidationError: the spec is invalid.
        IdmzooError: the spec file cannot be read, ``device`` is not one this machine has,
            or a block (named in the message) failed to build or returns the wrong shape.
        TypeError: ``seed`` is not an int.

    Examples:
        >>> model = idmzoo.build("specs/idm_uncond_ssn.json", seed=0)
        >>> eps = model(x, t)
    """
    spec = load_spec(spec)
    if device is not None:
        device = check_device(device)
    family = REGISTRY.get("family", spec.family.type)
    with _seeded(seed), torch.device(device) if device is not None else contextlib.nullcontext():
        try:
            model = family.create(spec.family, spec)
        except IdmzooError:
            raise
        except Exception as err:
            raise BlockBuildError(
                f"model family {family.name!r} (from package {family.package!r}) failed to build: "
                f"{type(err).__name__}: {err}"
            ) from err
    if not isinstance(model, IdmzooModel):
        raise BlockBuildError(
            f"model family {family.name!r} (from package {family.package!r}) returned "
            f"{type(model).__name__}, not an idmzoo.models.base.IdmzooModel"
        )
    if check_shapes or (check_shapes is None and uses_plugin_blocks(spec)):
        check_block_shapes(model)
    model.set_checkpointing(checkpointing)
    if spec.use_fp16:
        model.convert_to_fp16()
    return model
