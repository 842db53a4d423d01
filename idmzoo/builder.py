"""``build``: from a spec to a ready model."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from .errors import BlockBuildError, IdmzooError
from .models.base import IdmzooModel
from .registry import REGISTRY
from .runtime import Checkpointing
from .shape_check import check_block_shapes, uses_plugin_blocks
from .spec import Spec, load_spec

__all__ = ["build"]


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
        IdmzooError: the spec file cannot be read, or a block (named in the message)
            failed to build or returns the wrong shape.
        TypeError: ``seed`` is not an int.

    Examples:
        >>> model = idmzoo.build("specs/idm_uncond_ssn.json", seed=0)
        >>> eps = model(x, t)
    """
    spec = load_spec(spec)
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
