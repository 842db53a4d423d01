"""Which model a checkpoint fits, from its tensor names and shapes alone.

A reference ``.pt`` says nothing of its architecture.  :func:`identify` compares its
shapes with those of every zoo entry (exact fits first, else the closest with what
differs) and reconstructs a spec from them where the shapes decide it, naming the fields
they cannot decide (the head count, dropout...).  The zoo's shape maps come from meta
builds, which cost about half a second per entry, so they are cached in memory and under
:func:`idmzoo.download.cache_dir`, keyed by the code and the registered blocks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .builder import build
from .checkpoint import read_state_dict
from .download import cache_dir
from .messages import format_shape
from .registry import list_blocks
from .spec import Spec
from .zoo import list_models

__all__ = ["ZooMatch", "Reconstruction", "Identification", "identify", "match_zoo", "spec_from_shapes"]

Shapes = dict[str, tuple[int, ...]]
_SHOWN = 3  # differences shown per closest entry


def shapes_of(state: Mapping[str, torch.Tensor]) -> Shapes:
    """``{name: shape}`` of a state dict (meta tensors work: only shapes are read)."""
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def read_shapes(path: str | os.PathLike[str]) -> Shapes:
    """The tensor shapes of a ``.safetensors`` file (read from its header alone) or a ``.pt`` checkpoint."""
    name = os.fspath(path)
    if name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(name, framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    return shapes_of(read_state_dict(name))


def _model_shapes(spec: Spec) -> Shapes:
    return shapes_of(build(spec, device="meta", check_shapes=False).state_dict())


def _cache_key() -> str:
    """A digest of what decides the zoo's shapes: idmzoo's code and catalogue, and the registered blocks."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted([*package.rglob("*.py"), package / "zoo_catalog.json"]):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    blocks = [(b.kind, b.name, b.package, b.override) for b in list_blocks()]
    digest.update(json.dumps(blocks).encode())
    return digest.hexdigest()[:32]


@functools.cache
def zoo_shapes() -> dict[str, Shapes]:
    """``{zoo name: {tensor name: shape}}`` of every zoo entry, cached in memory and on disk."""
    path = cache_dir() / "zoo_shapes" / f"{_cache_key()}.json"
    try:
        cached = json.loads(path.read_text())
        return {name: {k: tuple(v) for k, v in shapes.items()} for name, shapes in cached.items()}
    except (OSError, ValueError):
        pass
    computed = {entry.name: _model_shapes(entry.spec()) for entry in list_models()}
    try:  # an unwritable cache only costs the next run the builds
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.part")
        temporary.write_text(json.dumps(computed))
        os.replace(temporary, path)
    except OSError:
        pass
    return computed


@dataclass(frozen=True)
class ZooMatch:
    """How a checkpoint's shapes compare with one zoo entry's.

    Attributes:
        name: the zoo entry.
        names: the share of tensor names, over both, present in both (1.0: the same layout).
        fit: the share of tensors, over both, present in both with the same shape (1.0: exact).
        missing: tensors of the zoo model the checkpoint lacks.
        unexpected: tensors of the checkpoint the zoo model lacks.
        mismatched: ``(name, checkpoint shape, zoo shape)`` of tensors in both with other shapes.
    """

    name: str
    names: float
    fit: float
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    @property
    def exact(self) -> bool:
        """Every tensor present in both, with the same shape: the checkpoint loads strictly."""
        return not (self.missing or self.unexpected or self.mismatched)

    def differences(self) -> str:
        """One line: counts of each kind of difference, and the first few."""
        parts = []
        if self.mismatched:
            shown = ", ".join(
                f"{k}: checkpoint {format_shape(a)}, zoo {format_shape(b)}"
                for k, a, b in self.mismatched[:_SHOWN]
            )
            parts.append(f"{len(self.mismatched)} of other shape ({shown})")
        if self.missing:
            parts.append(f"{len(self.missing)} missing ({', '.join(self.missing[:_SHOWN])})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected ({', '.join(self.unexpected[:_SHOWN])})")
        return "; ".join(parts) or "none"


def compare(
    name: str, shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> ZooMatch:
    """``shapes`` (a checkpoint's) against ``expected`` (zoo entry ``name``'s)."""
    same = sum(1 for k, v in shapes.items() if expected.get(k) == tuple(v))
    union = len(shapes.keys() | expected.keys())
    both = len(shapes.keys() & expected.keys())
    return ZooMatch(
        name=name,
        names=both / union if union else 1.0,
        fit=same / union if union else 1.0,
        missing=tuple(k for k in expected if k not in shapes),
        unexpected=tuple(k for k in shapes if k not in expected),
        mismatched=tuple(
            (k, tuple(v), expected[k]) for k, v in shapes.items() if k in expected and tuple(v) != expected[k]
        ),
    )


def match_zoo(
    shapes: Mapping[str, tuple[int, ...]], *, zoo: Mapping[str, Shapes] | None = None
) -> list[ZooMatch]:
    """Every zoo entry compared with ``shapes``: exact fits first, then by names and shapes in common.

    A narrower variant of an entry has all of its names and none of its shapes; it still
    ranks that entry first.
    """
    zoo = zoo_shapes() if zoo is None else zoo
    matches = [compare(name, shapes, expected) for name, expected in zoo.items()]
    return sorted(matches, key=lambda m: (not m.exact, -(m.names + m.fit), m.name))


@dataclass(frozen=True)
class Reconstruction:
    """A spec rebuilt from shapes.

    Attributes:
        spec: a spec whose model has exactly these tensor names and shapes, or ``None``.
        undetermined: the fields the shapes cannot decide, with what was assumed.
        reason: why there is no spec, when there is none.
    """

    spec: Spec | None
    undetermined: tuple[str, ...] = ()
    reason: str | None = None


def _children(shapes: Mapping[str, Any], prefix: str) -> dict[int, set[str]]:
    """``{i: {rest of the names}}`` of the tensors under ``prefix.i.``."""
    found: dict[int, set[str]] = {}
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.(.+)")
    for name in shapes:
        match = pattern.fullmatch(name)
        if match:
            found.setdefault(int(match.group(1)), set()).add(match.group(2))
    return found


def spec_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> Reconstruction:
    """The ``unet`` spec whose tensors have exactly ``shapes``, read off the reference layout.

    The candidate is built on the meta device and kept only if its shapes are exactly
    these, so a returned spec always loads the checkpoint strictly.
    """
    shapes = {k: tuple(v) for k, v in shapes.items()}
    stem, out = shapes.get("input_blocks.0.0.weight"), shapes.get("out.2.weight")
    time = shapes.get("time_embed.0.weight")
    if stem is None or out is None or time is None or len(stem) < 3:
        return Reconstruction(None, reason="not the tensor names of an improved-diffusion U-Net")
    model_channels, in_channels, dims = time[1], stem[1], len(stem) - 2  # the stem has mult[0] * width
    inputs, outputs = _children(shapes, "input_blocks"), _children(shapes, "output_blocks")

    def is_resblock(names: set[str], j: int) -> bool:
        return f"{j}.in_layers.2.weight" in names

    def has_attention(names: set[str]) -> bool:
        return any(n.startswith("1.qkv.") for n in names)

    def upsampler(names: set[str]) -> set[str]:
        """The names of the child after the residual block that is not attention: the upsampler."""
        kids: dict[str, set[str]] = {}
        for name in names:
            child, _, rest = name.partition(".")
            kids.setdefault(child, set()).add(rest)
        return next(
            (
                rest
                for child, rest in kids.items()
                if child != "0" and not any(r.startswith("qkv.") for r in rest)
            ),
            set(),
        )

    upsampling = [i for i, names in sorted(outputs.items()) if upsampler(names)]
    levels = len(upsampling) + 1
    if not outputs or len(outputs) % levels:
        return Reconstruction(None, reason="the output blocks do not divide into levels")
    num_res_blocks = len(outputs) // levels - 1
    first = [1 + level * (num_res_blocks + 1) for level in range(levels)]
    try:
        widths = [shapes[f"input_blocks.{i}.0.out_layers.3.weight"][0] for i in first]
        emb = shapes["input_blocks.1.0.emb_layers.1.weight"][0]
    except KeyError:
        return Reconstruction(None, reason="no residual block where the reference layout puts one")
    mult = [w // model_channels if w % model_channels == 0 else w / model_channels for w in widths]
    boundary = inputs.get(first[1] - 1, set()) if levels > 1 else set()
    upsample_names = upsampler(outputs[upsampling[0]]) if upsampling else set()
    qkv = next((v for k, v in shapes.items() if k.endswith(".qkv.weight")), None)
    skips = [v for k, v in shapes.items() if k.endswith("skip_connection.weight")]
    fields: dict[str, Any] = {
        "family": "unet",
        "in_channels": in_channels,
        "model_channels": model_channels,
        "out_channels": out[0],
        "num_res_blocks": max(num_res_blocks, 1),
        "channel_mult": mult,
        "dims": dims,
        "attention_resolutions": [2**lv for lv, i in enumerate(first) if has_attention(inputs.get(i, set()))],
        "num_classes": shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else None,
        "resblock": {
            "type": "resblock",
            "use_scale_shift_norm": emb == 2 * widths[0],
            "skip_conv": bool(skips) and skips[0][-1] == 3,
        },
        "attention": "conv2d_attention"
        if qkv is not None and len(qkv) == 4 and dims == 2
        else "legacy_attention",
        "downsample": "resblock_down" if is_resblock(boundary, 0) else "strided_conv",
        "upsample": "resblock_up"
        if any(n.startswith("in_layers.") for n in upsample_names)
        else "nearest_conv",
    }
    undetermined = [
        "attention.num_heads / num_head_channels (assumed 1 head)",
        "dropout (assumed 0.0)",
        "image_size (assumed none)",
        "use_fp16 (assumed false)",
        "norm.num_groups (assumed 32)",
    ]
    if fields["attention"] == "legacy_attention":
        undetermined.insert(
            0, "attention.type (legacy_attention and new_order_attention have the same weights)"
        )
    if in_channels % 2 == 0:
        undetermined.append(
            f"family (a superres_unet with in_channels={in_channels // 2} has the same weights as this unet)"
        )
    try:
        spec = Spec.model_validate(fields)
        fits = _model_shapes(spec) == shapes
    except Exception as err:  # a candidate the reference layout does not allow: no spec, with why
        return Reconstruction(None, reason=f"the layout read from the shapes is not a valid spec ({err})")
    if not fits:
        return Reconstruction(
            None,
            reason="no unet spec read off the shapes reproduces them exactly (resampling without "
            "convolutions leaves no tensors to read the levels from)",
        )
    return Reconstruction(spec, tuple(undetermined))


@dataclass(frozen=True)
class Identification:
    """What :func:`identify` found.

    Attributes:
        shapes: the checkpoint's ``{tensor name: shape}``.
        matches: every zoo entry compared, exact fits first.
        reconstruction: the spec read off the shapes (see :func:`spec_from_shapes`).
    """

    shapes: Shapes
    matches: tuple[ZooMatch, ...]
    reconstruction: Reconstruction = field(default_factory=lambda: Reconstruction(None))

    @property
    def exact(self) -> tuple[str, ...]:
        """The zoo entries the checkpoint loads into strictly."""
        return tuple(m.name for m in self.matches if m.exact)


def identify(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any], *, reconstruct: bool = True
) -> Identification:
    """Which zoo entries a checkpoint fits exactly, the closest otherwise, and a spec read off its shapes.

    Args:
        checkpoint: a ``.pt`` or ``.safetensors`` path, a state dict, or ``{name: shape}``.
        reconstruct: also reconstruct a spec when no zoo entry fits exactly.
    """
    if isinstance(checkpoint, Mapping):
        shapes = {
            k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in checkpoint.items()
        }
    else:
        shapes = read_shapes(checkpoint)
    matches = tuple(match_zoo(shapes))
    exact = any(m.exact for m in matches)
    reconstruction = spec_from_shapes(shapes) if reconstruct and not exact else Reconstruction(None)
    return Identification(shapes, matches, reconstruction)
