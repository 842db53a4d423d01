"""Loading what :mod:`idmzoo.artifacts` saved: a ``.safetensors`` file or a pretrained folder, no spec needed.

The model is built on the meta device from the spec in the file's metadata and takes the
file's tensors as its own (``load_state_dict(assign=True)``), so the weights are
allocated once, with the dtypes they were saved in, and the keys and shapes are checked
strictly first.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .artifacts import MODEL_FILE, SPEC_FILE, check_requirements, read_artifact
from .builder import build
from .checkpoint import _mismatch_report
from .errors import ArtifactError
from .models.base import IdmzooModel
from .runtime import Checkpointing
from .spec import load_spec

__all__ = ["load", "from_pretrained"]


def load(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    checkpointing: Checkpointing = "none",
    check_versions: bool = True,
) -> IdmzooModel:
    """Rebuild and load a model written by :func:`idmzoo.save`; the file alone describes it.

    Args:
        path: the ``.safetensors`` file.
        device: where the tensors are loaded (default ``"cpu"``).
        checkpointing: ``"none"``, ``"attention"`` or ``"all"``, as for :func:`idmzoo.build`.
        check_versions: refuse a file written with a newer idmzoo or plugin, or with a
            plugin of another release series; ``False`` makes those warnings.  A missing
            distribution is always refused: its blocks cannot be built.

    Returns:
        The model, bit-identical to the one saved (in training mode, as built).

    Raises:
        RequirementError: a block's distribution is missing or of another version (one
            line, with the ``pip install`` that fixes it).
        SpecVersionError: the spec is newer than this idmzoo reads.
        ArtifactError: not an idmzoo file, or its tensors do not fit its spec.
    """
    from safetensors.torch import load_file

    artifact = read_artifact(path)
    check_requirements(artifact, check_versions=check_versions)
    model = build(load_spec(artifact.spec), device="meta")
    state = load_file(os.fspath(path), device=str(device or "cpu"))
    for dropped, stored in artifact.shared.items():
        state[dropped] = state[stored]
    report = _mismatch_report(model, state, missing_ok=False, unexpected_ok=False)
    if report is not None:
        raise ArtifactError(f"the tensors of {str(path)!r} do not fit the spec it holds:\n{report}")
    model.load_state_dict(state, strict=True, assign=True)
    model.set_checkpointing(checkpointing)
    return model


def from_pretrained(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    checkpointing: Checkpointing = "none",
    check_versions: bool = True,
) -> IdmzooModel:
    """Load a pretrained folder (:meth:`IdmzooModel.save_pretrained`) or a single saved file.

    The spec inside ``model.safetensors`` is the one its weights were saved with;
    ``spec.json`` is a copy to read, and a folder whose copy differs from it is refused
    rather than either being silently preferred.  Options are those of :func:`load`.

    Raises:
        ArtifactError: no ``model.safetensors`` in the folder, or ``spec.json`` differs.
    """
    path = Path(path)
    if not path.is_dir():
        return load(path, device=device, checkpointing=checkpointing, check_versions=check_versions)
    weights = path / MODEL_FILE
    if not weights.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise ArtifactError(
            f"{str(path)!r} has no {MODEL_FILE} (it holds {found}); save_pretrained writes one"
        )
    copy = path / SPEC_FILE
    if copy.is_file():
        artifact = read_artifact(weights)
        check_requirements(artifact, check_versions=check_versions)  # a missing plugin: say what to install
        written, stored = load_spec(copy), load_spec(artifact.spec)
        if written != stored:
            fields = [k for k in type(stored).model_fields if getattr(written, k) != getattr(stored, k)]
            raise ArtifactError(
                f"{str(copy)!r} differs from the spec stored in {MODEL_FILE} (at {', '.join(fields)}); the "
                f"weights were saved with the stored one: restore {SPEC_FILE} or delete it"
            )
    return load(weights, device=device, checkpointing=checkpointing, check_versions=check_versions)
