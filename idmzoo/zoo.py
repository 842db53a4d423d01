"""The zoo: the published improved-diffusion, guided-diffusion and consistency-models models, by name.

The catalogue (``zoo_catalog.json``, shipped inside the package so the zoo works from an
installed wheel) keeps, for every published configuration, the command-line flags of its
source, the exact parameter count the source's own factory builds, and the provenance of
each checkpoint (repository, commit, paper, licence, URL).  A zoo entry's spec is
``spec_from_flags`` of those flags (plus the entry's ``spec_overrides``), so the catalogue
cannot disagree with the flag import.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ManualDownloadError, UnknownModelError
from .messages import did_you_mean
from .reference import spec_from_flags
from .spec import Spec

if TYPE_CHECKING:  # torch is imported by create() only, so listing the zoo stays fast
    from typing import TextIO

    import torch

    from .models.base import IdmzooModel
    from .runtime import Checkpointing

__all__ = [
    "Checkpoint",
    "License",
    "Metric",
    "Paper",
    "Source",
    "ZooEntry",
    "create",
    "download_checkpoint",
    "get_entry",
    "list_models",
    "zoo_spec",
]

_CATALOG = "zoo_catalog.json"


@dataclass(frozen=True)
class Metric:
    """A result the source states for a checkpoint, e.g. ``FID 2.07``, with how it was measured."""

    name: str
    value: str
    setting: str


@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint file of a zoo entry, and where to get it.

    Attributes:
        file: its file name, also its name in the download cache.
        url: a direct download link, or ``None`` when the source gives none (Google Drive
            and OneDrive pages are not direct downloads).
        page: where to get the file by hand when there is no ``url``.
        sha256: the recorded SHA-256 (hex), or ``None`` when unknown.
        size: the recorded size in bytes, or ``None`` when unknown.
        metrics: the results the source reports for it.
        note: provenance caveats (an inferred name, a link from the README's history...).
    """

    file: str
    url: str | None
    page: str | None
    sha256: str | None
    size: int | None
    metrics: tuple[Metric, ...]
    note: str


@dataclass(frozen=True)
class Source:
    """Where an entry's flags and factory come from: repository, commit and files."""

    repo: str
    commit: str
    files: tuple[str, ...]
    flags_from: str


@dataclass(frozen=True)
class Paper:
    """The paper that published the checkpoints."""

    title: str
    arxiv: str


@dataclass(frozen=True)
class License:
    """The source's licence: an SPDX id (``None``: the source has none), its file and a note."""

    spdx: str | None
    file: str | None
    note: str


@dataclass(frozen=True)
class ZooEntry:
    """One published configuration.

    Attributes:
        name: the zoo name, e.g. ``"adm_imagenet256_cond"`` (``idm_`` = improved-diffusion,
            ``adm_`` = guided-diffusion, ``cm_`` = consistency-models; other prefixes name the
            research built on guided-diffusion).
        library: the flag set of ``readme_flags``: ``"improved-diffusion"``,
            ``"guided-diffusion"`` or ``"consistency-models"``.
        kind: ``"model"``, ``"sr"`` or ``"classifier"``, as :func:`idmzoo.spec_from_flags` takes it.
        family: the spec's model family (``unet``, ``superres_unet`` or ``encoder_unet``).
        description: one line for listings.
        readme_flags: the model flags the source gives (README, launch script or config).
        param_count: the exact number of parameters the source's factory builds.
        checkpoints: file names of the published checkpoints that load into this model.
        note: where the flags come from, and what the checkpoints share.
        spec_overrides: spec fields the source sets beyond its flags (e.g. channel counts).
        checkpoint_files: each checkpoint's URL, hash, size and reported metrics.
        source: the repository, commit and files the entry was read from.
        paper: the paper (title and arXiv id).
        license: the source's licence.
        shares_network_with: other entries whose checkpoints have exactly this network's
            parameter names and shapes.
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
    spec_overrides: dict[str, Any] = field(hash=False)  # entries stay hashable
    checkpoint_files: tuple[Checkpoint, ...]
    source: Source
    paper: Paper
    license: License
    shares_network_with: tuple[str, ...]

    def spec(self) -> Spec:
        """The spec of this configuration: :func:`idmzoo.spec_from_flags` of its flags, then ``spec_overrides``."""
        return _overridden(spec_from_flags(self.library, self.readme_flags, self.kind), self.spec_overrides)

    def checkpoint(self, file: str | None = None) -> Checkpoint:
        """The published checkpoint called ``file`` (default: the first one listed).

        Raises:
            UnknownModelError: this entry has no checkpoint of that name.
        """
        if file is None:
            return self.checkpoint_files[0]
        for record in self.checkpoint_files:
            if record.file == file:
                return record
        raise UnknownModelError(
            f"zoo model {self.name!r} has no checkpoint {file!r}.{did_you_mean(file, self.checkpoints)} "
            f"Its checkpoints: {', '.join(self.checkpoints)}"
        )


def _overridden(spec: Spec, overrides: Mapping[str, Any]) -> Spec:
    """``spec`` with some fields replaced, through the spec's full validation.

    A block given without ``type`` changes only the given parameters of the block there;
    ``overrides=`` entries are appended after the spec's own.
    """
    if not overrides:
        return spec
    data = spec.model_dump()
    for name, value in overrides.items():
        if name == "overrides" and isinstance(value, (list, tuple)):
            data[name] = [*data.get(name, []), *value]
        elif isinstance(value, Mapping) and "type" not in value and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return Spec.model_validate(data)


def _entry(record: dict[str, Any]) -> ZooEntry:
    """A catalogue record as a :class:`ZooEntry`."""
    files = tuple(
        Checkpoint(**{**c, "metrics": tuple(Metric(**m) for m in c["metrics"])})
        for c in record["checkpoint_files"]
    )
    return ZooEntry(
        **{
            **record,
            "checkpoints": tuple(c.file for c in files),
            "checkpoint_files": files,
            "source": Source(**{**record["source"], "files": tuple(record["source"]["files"])}),
            "paper": Paper(**record["paper"]),
            "license": License(**record["license"]),
            "shares_network_with": tuple(record["shares_network_with"]),
        }
    )


def _natural_key(name: str) -> list[int | str]:
    """Sort key that puts ``adm_classifier64`` before ``adm_classifier128``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@functools.cache
def _catalog() -> dict[str, ZooEntry]:
    """The catalogue shipped with the package, read once."""
    data = json.loads(resources.files(__package__).joinpath(_CATALOG).read_text(encoding="utf-8"))
    return {record["name"]: _entry(record) for record in data["models"]}


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
    value fails naming the field.  A block object with ``type`` replaces the entry's block
    whole (``norm={"type": "group_norm32", "num_groups": 16}``); one without ``type`` keeps
    the entry's block and changes only those parameters (``attention={"num_heads": 8}``).
    ``overrides=[...]`` entries come after the entry's own.

    Raises:
        UnknownModelError: ``name`` is not in the zoo.
        pydantic.ValidationError: an override is not a spec field or makes the spec invalid.
    """
    return _overridden(get_entry(name).spec(), overrides)


def download_checkpoint(
    name: str,
    checkpoint: str | None = None,
    *,
    progress: bool | TextIO | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> Path:
    """The local copy of a zoo entry's published checkpoint, downloaded into the cache if needed.

    The file is verified against its recorded size and SHA-256 when the catalogue has them
    (see :func:`idmzoo.download.download` for the cache, resuming and ``IDMZOO_MIRROR``).

    Args:
        name: a zoo name.
        checkpoint: one of the entry's ``checkpoints`` (default: the first).
        progress: where to draw a progress bar (default: stderr when it is a terminal).
        cache: the folder to keep it in (default: ``<cache_dir()>/checkpoints``).

    Returns:
        The path of the verified file.

    Raises:
        UnknownModelError: no such entry, or no such checkpoint of it.
        ManualDownloadError: the source gives no direct link (e.g. Google Drive) and the file
            is not in the cache: the message says where to get it and where to put it.
        DownloadError: the download failed, or its bytes are not the recorded ones.
    """
    from .download import cache_dir, download, is_verified

    record = get_entry(name).checkpoint(checkpoint)
    if record.url is not None:
        return download(
            record.url,
            sha256=record.sha256,
            size=record.size,
            filename=record.file,
            progress=progress,
            cache=cache,
        )
    dest = (Path(cache) if cache is not None else cache_dir() / "checkpoints") / record.file
    if is_verified(dest, sha256=record.sha256, size=record.size):  # put there by hand
        return dest
    found = " (the file there does not match the recorded size or sha256)" if dest.exists() else ""
    raise ManualDownloadError(
        f"{record.file} of zoo model {name!r} has no direct download link: download it by hand from "
        f"{record.page} and put it at {dest}{found}; it is then used from there"
        + (f" (expected sha256 {record.sha256})" if record.sha256 else "")
    )


def create(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | None = None,
    device: torch.device | str | None = None,
    checkpointing: Checkpointing = "none",
    seed: int | None = None,
    check_shapes: bool | None = None,
    **overrides: Any,
) -> IdmzooModel:
    """Build zoo entry ``name``, optionally with some spec fields overridden or its published weights.

    Args:
        name: a zoo name, see :func:`list_models`.
        pretrained: load a published checkpoint: it is downloaded into the cache (see
            :func:`download_checkpoint`) and loaded strictly into a model built on the meta
            device, so the weights are allocated once.
        checkpoint: which of the entry's ``checkpoints`` to load (default: the first);
            implies ``pretrained``.
        device: where to allocate the parameters; ``"meta"`` builds without memory (then
            ``model.to_empty(device=...)`` or :func:`idmzoo.load_checkpoint`).  With
            ``pretrained``, where the checkpoint's tensors are loaded (default ``"cpu"``).
        checkpointing: ``"none"``, ``"attention"``, ``"all"``, ``"selective"`` or a ``{kind: mode}``
            mapping; see :func:`idmzoo.build`.
        seed: seed the initial weights; see :func:`idmzoo.build` (not with ``pretrained``).
        check_shapes: run the build-time shape check; see :func:`idmzoo.build`.
        **overrides: spec fields to replace, validated like a spec file.  The build options
            above are never taken for spec fields.

    Returns:
        The model: random weights, or the checkpoint's with ``pretrained``.

    Raises:
        UnknownModelError: ``name`` is not in the zoo, or ``checkpoint`` is not one of its.
        pydantic.ValidationError: an override is not a spec field or makes the spec invalid.
        DownloadError: the checkpoint could not be downloaded or verified
            (:class:`~idmzoo.ManualDownloadError`: it must be downloaded by hand).
        CheckpointError: the checkpoint does not fit the model (e.g. after an override).
        ValueError: ``pretrained`` with ``device="meta"`` or with ``seed``.

    Examples:
        >>> model = idmzoo.create("idm_cifar10_uncond", dropout=0.1, seed=0)
        >>> big = idmzoo.create("adm_imagenet256_cond", device="meta")
        >>> ct = idmzoo.create("cm_imagenet64", checkpoint="ct_imagenet64.pt")
    """
    from .builder import build

    spec = zoo_spec(name, **overrides)
    if not (pretrained or checkpoint is not None):
        return build(spec, checkpointing=checkpointing, device=device, seed=seed, check_shapes=check_shapes)
    if str(device) == "meta":
        raise ValueError(
            "pretrained weights cannot be loaded onto the meta device; pass device='cpu' or 'cuda'"
        )
    if seed is not None:
        raise ValueError("seed seeds random weights; it has no effect with pretrained weights")
    from .checkpoint import load_checkpoint

    path = download_checkpoint(name, checkpoint)
    model = build(spec, checkpointing=checkpointing, device="meta", check_shapes=check_shapes)
    return load_checkpoint(model, path, strict=True, map_location=device if device is not None else "cpu")
