"""The zoo: the published improved-diffusion and guided-diffusion models, by name.

The catalogue (``zoo_catalog.json``, shipped inside the package so the zoo works from an
installed wheel) keeps, for every published configuration, the command-line flags of its
README and the exact parameter count the reference builds.  A zoo entry's spec is
``spec_from_flags`` of those flags, so the catalogue cannot disagree with the flag import.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from .errors import UnknownModelError
from .messages import did_you_mean
from .reference import spec_from_flags
from .spec import Spec

if TYPE_CHECKING:  # torch is imported by create() only, so listing the zoo stays fast
    import torch

    from .models.base import IdmzooModel
    from .runtime import Checkpointing

__all__ = ["ZooEntry", "list_models", "get_entry", "zoo_spec", "create"]

_CATALOG = "zoo_catalog.json"


@dataclass(frozen=True)
class ZooEntry:
    """One published configuration.

    Attributes:
        name: the zoo name, e.g. ``"adm_imagenet256_cond"`` (``idm_`` = improved-diffusion,
            ``adm_`` = guided-diffusion).
        library: ``"improved-diffusion"`` or ``"guided-diffusion"``.
        kind: ``"model"``, ``"sr"`` or ``"classifier"``, as :func:`idmzoo.spec_from_flags` takes it.
        family: the spec's model family (``unet``, ``superres_unet`` or ``encoder_unet``).
        description: one line for listings.
        readme_flags: the model flags of the library's README.
        param_count: the exact number of parameters the reference builds for these flags.
        checkpoints: file names of the published checkpoints that load into this model.
        note: where the flags come from, and what the checkpoints share.
    """

    name: str
    library: str
    kind: Literal["model", "sr", "classifier"]
    family: str
    description: str
    readme_flags: str
    param_count: int
    checkpoints: tuple[str, ...]
    note: str

    def spec(self) -> Spec:
        """The spec of this configuration: :func:`idmzoo.spec_from_flags` of its README flags."""
        return spec_from_flags(self.library, self.readme_flags, self.kind)


def _natural_key(name: str) -> list[int | str]:
    """Sort key that puts ``adm_classifier64`` before ``adm_classifier128``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@functools.cache
def _catalog() -> dict[str, ZooEntry]:
    """The catalogue shipped with the package, read once."""
    data = json.loads(resources.files(__package__).joinpath(_CATALOG).read_text(encoding="utf-8"))
    entries = (
        ZooEntry(**{**record, "checkpoints": tuple(record["checkpoints"])}) for record in data["models"]
    )
    return {entry.name: entry for entry in entries}


def list_models(pattern: str = "*", *, exclude: str | Sequence[str] = ()) -> list[ZooEntry]:
    """The zoo's entries whose names match an fnmatch ``pattern``, in natural name order.

    Args:
        pattern: e.g. ``"adm_*"`` or ``"*classifier*"``.
        exclude: pattern(s) of names to leave out.

    Returns:
        The matching :class:`ZooEntry` records.

    Examples:
        >>> [e.name for e in list_models("adm_classifier*")]
        ['adm_classifier64', 'adm_classifier128', 'adm_classifier256', 'adm_classifier512']
    """
    excluded = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    return [
        entry
        for name, entry in sorted(_catalog().items(), key=lambda item: _natural_key(item[0]))
        if fnmatch.fnmatchcase(name, pattern) and not any(fnmatch.fnmatchcase(name, e) for e in excluded)
    ]


def get_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``.

    Raises:
        TypeError: ``name`` is not a string.
        UnknownModelError: no such entry; the message suggests the closest names.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, but got {type(name).__name__}")
    catalog = _catalog()
    if name in catalog:
        return catalog[name]
    raise UnknownModelError(
        f"unknown zoo model {name!r}.{did_you_mean(name, catalog)} Zoo models: {', '.join(sorted(catalog))} "
        "(idmzoo.list_models() or `idmzoo list-models` describes them)."
    )


def zoo_spec(name: str, **overrides: Any) -> Spec:
    """The spec of zoo entry ``name`` with some fields replaced.

    Overrides go through the spec's full validation, so a misspelt field or an impossible
    value fails naming the field.  A block field is replaced whole, e.g.
    ``norm={"type": "group_norm32", "num_groups": 16}``.

    Raises:
        UnknownModelError: ``name`` is not in the zoo.
        pydantic.ValidationError: an override is not a spec field or makes the spec invalid.
    """
    spec = get_entry(name).spec()
    if not overrides:
        return spec
    return Spec.model_validate({**spec.model_dump(), **overrides})


def create(
    name: str,
    *,
    device: torch.device | str | None = None,
    checkpointing: Checkpointing = "none",
    seed: int | None = None,
    check_shapes: bool | None = None,
    **overrides: Any,
) -> IdmzooModel:
    """Build zoo entry ``name``, optionally with some spec fields overridden.

    Args:
        name: a zoo name, see :func:`list_models`.
        device: where to allocate the parameters; ``"meta"`` builds without memory (then
            ``model.to_empty(device=...)`` or :func:`idmzoo.load_checkpoint`).
        checkpointing: ``"none"``, ``"attention"``, ``"all"``, ``"selective"`` or a ``{kind: mode}``
            mapping; see :func:`idmzoo.build`.
        seed: seed the initial weights; see :func:`idmzoo.build`.
        check_shapes: run the build-time shape check; see :func:`idmzoo.build`.
        **overrides: spec fields to replace, validated like a spec file.  The build options
            above are never taken for spec fields.

    Returns:
        The model, with random weights (load a published checkpoint with
        :func:`idmzoo.load_checkpoint`).

    Raises:
        UnknownModelError: ``name`` is not in the zoo.
        pydantic.ValidationError: an override is not a spec field or makes the spec invalid.

    Examples:
        >>> model = idmzoo.create("idm_cifar10_uncond", dropout=0.1, seed=0)
        >>> big = idmzoo.create("adm_imagenet256_cond", device="meta")
    """
    from .builder import build

    return build(
        zoo_spec(name, **overrides),
        checkpointing=checkpointing,
        device=device,
        seed=seed,
        check_shapes=check_shapes,
    )
