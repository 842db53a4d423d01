"""One self-describing file per model: the weights in safetensors, the spec and what it needs in the metadata.

A ``.pt`` checkpoint is a pickle and says nothing of the model it fits.  :func:`save`
writes a ``.safetensors`` file (tensors and a string-to-string header, no code) whose
metadata holds the spec, the idmzoo and spec versions, and every distribution providing
one of its blocks, with its version, so :func:`idmzoo.load` can rebuild the model alone
and refuse, in one line, a file this environment cannot build as it was saved.

This module writes and reads the metadata; building and loading are
:mod:`idmzoo.pretrained`'s (the models import this module for ``save_pretrained``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import ArtifactError, IdmzooPluginWarning, RequirementError, UnknownBlockError
from .migrations import SPEC_VERSION
from .registry import BLOCK_KINDS, REGISTRY
from .registry.discovery import BUILTIN_PACKAGE
from .spec import Spec

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "SPEC_FILE",
    "CARD_FILE",
    "Artifact",
    "save",
    "save_pretrained",
    "read_artifact",
    "check_requirements",
    "unwrap",
    "installed_version",
    "requirements",
    "block_records",
    "model_card",
]

#: The layout of the metadata below; a file with a newer one is refused.
FORMAT_VERSION = 1
#: The files of a pretrained folder (:func:`save_pretrained`).
MODEL_FILE, SPEC_FILE, CARD_FILE = "model.safetensors", "spec.json", "README.md"
_PREFIX = "idmzoo."


def _idmzoo_version() -> str:
    """The version of the idmzoo code running (an editable install's metadata may lag behind it)."""
    return sys.modules[__package__].__version__


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None`` when it is not installed."""
    if distribution == BUILTIN_PACKAGE:
        return _idmzoo_version()
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The release numbers of a version (``"0.2.1rc1"`` → ``(0, 2, 1)``), for ordering."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip().lstrip("vV"))
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def _series(version: str) -> tuple[int, ...]:
    """The releases that promise compatibility: the major version, or ``0.minor`` before 1.0."""
    release = (*_release(version), 0, 0)
    return release[:2] if release[0] == 0 else release[:1]


def unwrap(model: nn.Module) -> nn.Module:
    """The idmzoo model inside ``torch.compile`` or (Distributed)DataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _spec_of(model: nn.Module) -> Spec:
    spec = getattr(model, "spec", None)
    if not isinstance(spec, Spec):
        raise ArtifactError(
            f"can only save an idmzoo model (built by idmzoo.build or create), not a {type(model).__name__}"
        )
    return spec


def block_records(spec: Spec) -> list[dict[str, str]]:
    """Each block field of ``spec``: its JSON path, kind, name and providing distribution."""
    return [
        {"path": kind, "kind": kind, "name": params.type, "package": REGISTRY.get(kind, params.type).package}
        for kind in BLOCK_KINDS
        if (params := getattr(spec, kind)) is not None
    ]


def requirements(spec: Spec) -> dict[str, str | None]:
    """``{distribution: version}`` of idmzoo and of every distribution providing a block of ``spec``."""
    packages = [BUILTIN_PACKAGE, *(record["package"] for record in block_records(spec))]
    return {package: installed_version(package) for package in dict.fromkeys(packages)}


def _storable(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors safetensors accepts (contiguous, on the CPU, no two sharing memory) and the dropped aliases.

    A tensor that is the same view of the same memory as an earlier one (a tied weight) is
    stored once and recorded in ``shared`` (``{dropped name: stored name}``), so loading
    ties it again; a different view of shared memory is stored as its own copy.
    """
    shared: dict[str, str] = {}
    seen: dict[tuple[Any, int], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.numel():
            key = (tensor.device, tensor.untyped_storage().data_ptr())
            first = seen.setdefault(key, name)
            if first != name:
                other = state[first]
                if (tensor.data_ptr(), tensor.shape, tensor.stride(), tensor.dtype) == (
                    other.data_ptr(),
                    other.shape,
                    other.stride(),
                    other.dtype,
                ):
                    shared[name] = first
                    continue
                tensor = tensor.clone()
        tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, shared


def _metadata(
    model: nn.Module, spec: Spec, shared: dict[str, str], extra: Mapping[str, str]
) -> dict[str, str]:
    for key, value in extra.items():
        if not (isinstance(key, str) and isinstance(value, str)):
            raise TypeError(f"metadata must map str to str, but {key!r} maps to {type(value).__name__}")
        if key.startswith(_PREFIX) or key == "format":
            raise ValueError(f"metadata key {key!r} is idmzoo's own; choose another name")
    return {
        **extra,
        "format": "pt",  # what safetensors' torch loaders and the Hugging Face hub expect
        "idmzoo.format_version": str(FORMAT_VERSION),
        "idmzoo.version": _idmzoo_version(),
        "idmzoo.spec_version": str(SPEC_VERSION),
        "idmzoo.spec": spec.to_json(indent=None),
        "idmzoo.requirements": json.dumps(requirements(spec)),
        "idmzoo.blocks": json.dumps(block_records(spec)),
        "idmzoo.shared": json.dumps(shared),
        "idmzoo.parameters": str(sum(p.numel() for p in model.parameters())),
    }


def save(
    model: nn.Module, path: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model`` to one ``.safetensors`` file that :func:`idmzoo.load` rebuilds it from.

    Every tensor keeps its dtype (an fp16 torso stays fp16) and its exact bits; tied
    weights are stored once.  The file is written under a temporary name and renamed, so
    ``path`` is never a half-written file.

    Args:
        model: an idmzoo model (``torch.compile`` and DataParallel wrappers are unwrapped).
        path: the file to write.
        metadata: your own string entries for the header (a licence, a training run); the
            ``idmzoo.*`` keys and ``format`` are idmzoo's.

    Returns:
        ``path``.

    Raises:
        ArtifactError: not an idmzoo model, or a model on the meta device (it has no values).
    """
    from safetensors.torch import save_file

    model = unwrap(model)
    spec = _spec_of(model)
    state = model.state_dict()
    if any(t.is_meta for t in state.values()):
        raise ArtifactError("the model is on the meta device and has no values to save; load weights first")
    tensors, shared = _storable(state)
    header = _metadata(model, spec, shared, metadata or {})
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, temporary, metadata=header)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


@dataclass(frozen=True)
class Artifact:
    """What the metadata of a saved model says.

    Attributes:
        path: the file.
        spec: the saved spec, as data (``load_spec`` migrates and validates it).
        idmzoo_version: the idmzoo that wrote the file.
        requirements: ``{distribution: version}`` (``None``: not an installed distribution).
        blocks: ``path``, ``kind``, ``name`` and ``package`` of each block field.
        shared: ``{dropped tensor name: stored tensor name}`` of tied weights.
        metadata: the whole header, your own keys included.
    """

    path: Path
    spec: dict[str, Any]
    idmzoo_version: str
    requirements: dict[str, str | None]
    blocks: tuple[dict[str, str], ...]
    shared: dict[str, str]
    metadata: dict[str, str]


def read_artifact(path: str | os.PathLike[str]) -> Artifact:
    """The idmzoo metadata of a ``.safetensors`` file, read without loading any tensor.

    Raises:
        ArtifactError: the file cannot be read, is not safetensors, was not written by
            :func:`idmzoo.save`, or has a newer format than this idmzoo reads.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except FileNotFoundError as err:
        raise ArtifactError(f"no such file: {str(path)!r}") from err
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise ArtifactError(f"{str(path)!r} is not a readable .safetensors file: {err}") from err
    if "idmzoo.spec" not in metadata:
        raise ArtifactError(
            f"{str(path)!r} is a .safetensors file without idmzoo metadata (not written by idmzoo.save), "
            "so it does not say which model it fits; `idmzoo identify` guesses from its shapes"
        )
    try:
        version = int(metadata.get("idmzoo.format_version", "1"))
        artifact = Artifact(
            path=path,
            spec=json.loads(metadata["idmzoo.spec"]),
            idmzoo_version=metadata.get("idmzoo.version", "0"),
            requirements=json.loads(metadata.get("idmzoo.requirements", "{}")),
            blocks=tuple(json.loads(metadata.get("idmzoo.blocks", "[]"))),
            shared=json.loads(metadata.get("idmzoo.shared", "{}")),
            metadata=metadata,
        )
    except (ValueError, TypeError) as err:
        raise ArtifactError(f"{str(path)!r} has damaged idmzoo metadata: {err}") from err
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{str(path)!r} was written by idmzoo {artifact.idmzoo_version} in file format {version}; "
            f"this idmzoo reads format {FORMAT_VERSION}: pip install --upgrade idmzoo"
        )
    return artifact


def _pip(distribution: str, version: str | None, upper: str | None = None) -> str:
    spec = f">={version}" if version else ""
    spec += f",<{upper}" if upper else ""
    return f'pip install "{distribution}{spec}"'


def _version_problem(distribution: str, saved: str | None) -> str | None:
    """Why the installed ``distribution`` may not build what version ``saved`` wrote, or ``None``."""
    installed = installed_version(distribution)
    if saved is None or installed is None:  # not a distribution (registered by a script): nothing to compare
        return None
    if _release(installed) < _release(saved):
        return (
            f"the file was written with {distribution} {saved}, and {installed} is installed: "
            f"{_pip(distribution, saved)}"
        )
    if distribution != BUILTIN_PACKAGE and _series(installed) != _series(saved):
        # idmzoo itself reads older files through spec migrations; a plugin promises nothing across series
        upper = ".".join(map(str, (*_series(saved)[:-1], _series(saved)[-1] + 1)))
        return (
            f"the file was written with {distribution} {saved}, and {installed} is installed, a newer "
            f"release series that may build its blocks differently: {_pip(distribution, saved, upper)}"
        )
    return None


def check_requirements(artifact: Artifact, *, check_versions: bool = True) -> None:
    """Refuse, in one line, a saved model this environment would not build as it was saved.

    Every block must be registered by the distribution that provided it when the file was
    written (a missing distribution names the block, its spec field and the ``pip
    install`` that fixes it); with ``check_versions``, each distribution must be at least
    the saved version and, for plugins, of the same release series (the major version;
    ``0.minor`` before 1.0).  Without it, version differences are warnings.

    Raises:
        RequirementError: naming every problem, on one line.
    """
    problems = []
    for block in artifact.blocks:
        kind, name, package, field = block["kind"], block["name"], block["package"], block["path"]
        saved = artifact.requirements.get(package)
        try:
            info = REGISTRY.get(kind, name)
        except UnknownBlockError:
            info = None
        where = f"{kind} block {name!r} (spec field {field})"
        if info is not None and info.package == package:
            continue
        if info is not None:
            problems.append(
                f"{where} was saved from {package}, but here {info.package} provides it: {_pip(package, saved)}"
            )
        elif installed_version(package) is None:
            problems.append(f"{where} comes from {package}, which is not installed: {_pip(package, saved)}")
        else:
            failed = [f.cause for f in REGISTRY.failed_plugins if f.distribution == package]
            cause = f" (it failed to load: {failed[0]})" if failed else ""
            problems.append(
                f"{where}: {package} {installed_version(package)} is installed but registers no such "
                f"block{cause}: {_pip(package, saved)}"
            )
    versions = [
        problem
        for distribution, saved in artifact.requirements.items()
        if (problem := _version_problem(distribution, saved)) is not None
    ]
    if versions and not check_versions:
        for problem in versions:
            warnings.warn(f"{artifact.path}: {problem}", IdmzooPluginWarning, stacklevel=3)
        versions = []
    problems += versions
    if problems:
        raise RequirementError(f"cannot load {str(artifact.path)!r}: " + "; ".join(problems))


def model_card(model: nn.Module, spec: Spec, title: str) -> str:
    """The ``README.md`` of a pretrained folder: what the model is, its size, its blocks, how to load it."""
    from .summary import summarize

    summary = summarize(model)
    needs = requirements(spec)
    blocks = block_records(spec)
    rows = "\n".join(
        f"| `{package}` | {version or '(not a distribution)'} | "
        + ", ".join(f"`{b['kind']}: {b['name']}`" for b in blocks if b["package"] == package)
        + " |"
        for package, version in needs.items()
    )
    plugins = [f"{p}>={v}" if v else p for p, v in needs.items() if p != BUILTIN_PACKAGE]
    install = "pip install " + " ".join(f'"{p}"' for p in [f"idmzoo>={needs[BUILTIN_PACKAGE]}", *plugins])
    shape = f"{spec.image_size}x{spec.image_size} " if spec.image_size else ""
    conditioning = f"class-conditional ({spec.num_classes} classes)" if spec.num_classes else "unconditional"
    return f"""# {title}

An idmzoo model (the U-Net of improved-diffusion / guided-diffusion, built from a spec): a {conditioning} `{spec.family.type}`
network on {shape}{spec.dims}-D inputs with {spec.in_channels} input and {spec.out_channels} output
channels, and **{summary.parameters:,} parameters**. Its architecture is `{SPEC_FILE}` (spec_version
{SPEC_VERSION}); its weights are `{MODEL_FILE}` (safetensors: no pickle, no code), whose metadata
holds the same spec and the requirements below, so the file alone rebuilds the model.

## Blocks per stage

```text
{summary}
```

## Requirements

| distribution | version saved with | blocks |
|---|---|---|
{rows}

```bash
{install}
```

## Loading

```python
import idmzoo

model = idmzoo.from_pretrained("path/to/this/folder")   # or the .safetensors file alone
```

`idmzoo.load` refuses, in one line, a file whose blocks come from a distribution that is not
installed (with the `pip install` that fixes it), or from an older one.
"""


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a pretrained folder: ``model.safetensors`` (:func:`save`), ``spec.json`` and a ``README.md`` card.

    Returns:
        The folder, created if needed.
    """
    model = unwrap(model)
    spec = _spec_of(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save(model, directory / MODEL_FILE, metadata=metadata)
    spec.save(directory / SPEC_FILE)
    (directory / CARD_FILE).write_text(model_card(model, spec, directory.resolve().name), encoding="utf-8")
    return directory
