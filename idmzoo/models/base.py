"""What every idmzoo model shares: timestep conditioning, block construction, precision and checkpointing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..blocks.context import BlockContext
from ..blocks.layers import conv_nd
from ..blocks.timestep import TimestepEmbedSequential
from ..errors import BlockBuildError, IdmzooError, InputError
from ..layout import Site
from ..registry import REGISTRY, BlockParams, Stage
from ..runtime import BlockCheckpointing, Checkpointing

if TYPE_CHECKING:
    from ..spec import Spec

__all__ = ["IdmzooModel", "BlockMaker"]

#: The kinds whose blocks a ``TimestepEmbedSequential`` runs, so the kinds that can be checkpointed.
CHECKPOINTABLE_KINDS = ("resblock", "attention", "upsample", "downsample")
_NAMED_MODES: dict[str, dict[str, BlockCheckpointing]] = {
    "none": {},
    "attention": {"attention": "full"},
    "all": dict.fromkeys(CHECKPOINTABLE_KINDS, "full"),
    "selective": dict.fromkeys(CHECKPOINTABLE_KINDS, "selective"),
}
#: The value of a block's ``gradient_checkpointing`` attribute for each mode (``True`` is
#: what a plugin block may already set for full checkpointing).
_ATTRIBUTE: dict[str, bool | str] = {"none": False, "full": True, "selective": "selective"}


def checkpointing_per_kind(mode: Checkpointing) -> dict[str, BlockCheckpointing]:
    """``{kind: "none" | "full" | "selective"}`` for every checkpointable kind, from a mode or a mapping."""
    if isinstance(mode, str):
        if mode not in _NAMED_MODES:
            raise ValueError(
                f"checkpointing must be one of {', '.join(_NAMED_MODES)} or a {{kind: mode}} mapping, "
                f"but got {mode!r}"
            )
        return {kind: _NAMED_MODES[mode].get(kind, "none") for kind in CHECKPOINTABLE_KINDS}
    if not isinstance(mode, Mapping):
        raise ValueError(f"checkpointing must be a string or a {{kind: mode}} mapping, but got {mode!r}")
    for kind, block_mode in mode.items():
        if kind not in CHECKPOINTABLE_KINDS:
            raise ValueError(
                f"checkpointing: {kind!r} is not a kind that can be checkpointed; "
                f"use {', '.join(CHECKPOINTABLE_KINDS)}"
            )
        if block_mode not in _ATTRIBUTE:
            raise ValueError(
                f"checkpointing[{kind!r}] must be one of {', '.join(_ATTRIBUTE)}, but got {block_mode!r}"
            )
    return {kind: mode.get(kind, "none") for kind in CHECKPOINTABLE_KINDS}


class BlockMaker:
    """Builds the spec's registered blocks at the places a layout names.

    The block of each kind at a place is :meth:`Spec.block_at` of that place, so the
    norms, activations and residual blocks a block builds through its context are the
    ones chosen for the block's own place.  Every module it returns carries
    ``idmzoo_kind`` (its block kind, which is how checkpointing finds blocks of a kind,
    whoever wrote them) and ``idmzoo_block`` (the registered block it is, ``package:name``).
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        #: The model-wide context (no place): the top-level blocks.
        self.ctx = self.context(None, "input")

    def context(self, where: Any, stage: Stage, **facts: int) -> BlockContext:
        """The context of a factory building at ``where`` (a :class:`Site`, or ``None``)."""
        return BlockContext(
            dims=self.spec.dims,
            emb_channels=4 * self.spec.model_channels,
            dropout=self.spec.dropout,
            stage=stage,
            make_norm=partial(self.norm, where=where),
            make_resblock=partial(self.resblock, where=where),
            make_activation=partial(self.activation, where=where),
            **facts,
        )

    def create(self, kind: str, params: BlockParams, *args: Any, **kwargs: Any) -> nn.Module:
        """Call the registered factory of ``params.type`` and check it returned a module."""
        info = REGISTRY.get(kind, params.type)
        try:
            module = info.create(params, *args, **kwargs)
        except IdmzooError:
            raise
        except Exception as err:  # a plugin factory may fail in any way; name it
            raise BlockBuildError(
                f"{kind} block {info.name!r} (from {info.package}) failed to build for "
                f"{args[0] if args else '?'} channels: {type(err).__name__}: {err}"
            ) from err
        if not isinstance(module, nn.Module):
            raise BlockBuildError(
                f"{kind} block {info.name!r} (from {info.package}) returned "
                f"{type(module).__name__}, not a torch.nn.Module"
            )
        module.idmzoo_kind = kind
        module.idmzoo_block = info.qualified_name
        return module

    def norm(self, channels: int, where: Any = None) -> nn.Module:
        """The norm chosen at ``where`` for ``channels`` channels."""
        return self.create("norm", self.spec.block_at("norm", where), channels)

    def activation(self, where: Any = None) -> nn.Module:
        """The activation chosen at ``where``."""
        return self.create("activation", self.spec.block_at("activation", where))

    def resblock(
        self, channels: int, out_channels: int, resample: str | None = None, where: Any = None
    ) -> nn.Module:
        """The residual block chosen at ``where``; ``resample`` is passed only when it is set."""
        extra = {"resample": resample} if resample else {}
        ctx = self.context(where, where.stage if where is not None else "input")
        params = self.spec.block_at("resblock", where)
        return self.create("resblock", params, channels, out_channels, ctx, **extra)

    def site(self, site: Site) -> nn.Module:
        """The module at ``site``."""
        if site.kind == "stem":
            return conv_nd(self.spec.dims, site.channels, site.out_channels, 3, padding=1)
        if site.kind == "resblock":
            return self.resblock(site.channels, site.out_channels, where=site)
        params = self.spec.block_at(site.kind, site)
        return self.create(site.kind, params, site.channels, self.context(site, site.stage))

    def group(self, sites: tuple[Site, ...]) -> TimestepEmbedSequential:
        """One ``TimestepEmbedSequential`` of the modules at ``sites``."""
        return TimestepEmbedSequential(*(self.site(site) for site in sites))


def _axes(dims: int) -> str:
    return {1: "L", 2: "H, W", 3: "D, H, W"}[dims]


class IdmzooModel(nn.Module):
    """Base of the model families: the timestep MLP, the encoder path and the bottleneck.

    Attributes:
        spec: the :class:`~idmzoo.spec.Spec` the model was built from.
        layout: its :class:`~idmzoo.layout.UNetLayout`.
    """

    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        self.layout = layout = spec.layout()
        self.maker = BlockMaker(spec)
        self.time_embed = self.maker.create(
            "time_embed", spec.time_embed, spec.model_channels, self.maker.ctx
        )
        self.input_blocks = nn.ModuleList(self.maker.group(g) for g in layout.input_blocks)
        self.middle_block = self.maker.group(layout.middle_block)

    def check_inputs(self, x: torch.Tensor, timesteps: torch.Tensor, *, channels: int | None = None) -> None:
        """Raise :class:`InputError` naming the argument if ``x`` or ``timesteps`` cannot be run.

        Only shapes are read, so the check costs nothing, needs no device sync and traces
        under ``torch.compile(fullgraph=True)`` (a failing check raises at trace time).
        """
        spec = self.spec
        expected = spec.in_channels if channels is None else channels
        if not isinstance(x, torch.Tensor) or x.dim() != spec.dims + 2:
            got = f"a tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(
                f"x must be [N, {expected}, {_axes(spec.dims)}] for a {spec.dims}-D model, but got {got}"
            )
        if x.shape[1] != expected:
            raise InputError(
                f"x has {x.shape[1]} channels, but the model takes {expected} (x is [N, C, ...])"
            )
        rate = self.layout.final_ds
        if self.decoder_rate_applies:
            halved = x.shape[3:] if spec.dims == 3 else x.shape[2:]  # 3-D keeps its depth
            if any(side % rate for side in halved):
                raise InputError(
                    f"x has spatial size {list(x.shape[2:])}, but every halved side must be a multiple of "
                    f"{rate}, the downsampling rate at the bottleneck, for the skip connections to line up"
                )
        if not isinstance(timesteps, torch.Tensor):
            raise InputError(
                f"timesteps must be a tensor of shape [{x.shape[0]}], but got {type(timesteps).__name__}"
            )
        if timesteps.dim() != 1 or timesteps.shape[0] not in (x.shape[0], 1):
            raise InputError(
                f"timesteps must have shape [{x.shape[0]}] (one per sample; [1] is broadcast as in the "
                f"reference), but got {list(timesteps.shape)}"
            )

    #: Whether every spatial side must be a multiple of the bottleneck rate (the U-Net's skips).
    decoder_rate_applies = True

    @property
    def torso_dtype(self) -> torch.dtype:
        """The dtype the blocks run in: that of the stem convolution's weight."""
        return self.input_blocks[0][0].weight.dtype

    def embed(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timestep embedding ``[N, 4 * model_channels]``."""
        return self.time_embed(timesteps)

    def encode(self, h: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the encoder path and the bottleneck on torso-dtype ``h``.

        Returns:
            The bottleneck output and the output of every encoder group, in order (the
            U-Net's skip connections, the encoder heads' pooled features).
        """
        outputs = []
        for block in self.input_blocks:
            h = block(h, emb)
            outputs.append(h)
        return self.middle_block(h, emb), outputs

    def torso(self) -> list[nn.Module]:
        """The block containers that :meth:`convert_to_fp16` converts."""
        return [self.input_blocks, self.middle_block]

    def convert_to_fp16(self) -> None:
        """Keep the torso's convolutions in float16; norms still compute in float32."""
        self._convert_convs(torch.float16)

    def convert_to_fp32(self) -> None:
        """Undo :meth:`convert_to_fp16`."""
        self._convert_convs(torch.float32)

    def _convert_convs(self, dtype: torch.dtype) -> None:
        for part in self.torso():
            for module in part.modules():
                if isinstance(module, nn.modules.conv._ConvNd):
                    module.to(dtype)

    def set_checkpointing(self, mode: Checkpointing) -> None:
        """Recompute activations in the backward pass: ``"none"``, ``"attention"``, ``"all"``,
        ``"selective"``, or ``{kind: "none" | "full" | "selective"}`` (unnamed kinds: none).

        It sets each block's ``gradient_checkpointing`` attribute (``False``, ``True`` or
        ``"selective"``), which the block's container reads on every forward.
        """
        per_kind = checkpointing_per_kind(mode)
        for module in self.modules():
            kind = getattr(module, "idmzoo_kind", None)
            if kind is not None:
                module.gradient_checkpointing = _ATTRIBUTE[per_kind.get(kind, "none")]

    def save_pretrained(
        self, directory: str | os.PathLike[str], *, metadata: Mapping[str, str] | None = None
    ) -> Path:
        """Write ``model.safetensors``, ``spec.json`` and a ``README.md`` model card to ``directory``.

        :func:`idmzoo.from_pretrained` loads it back; see :func:`idmzoo.save` for ``metadata``.
        """
        from ..artifacts import save_pretrained

        return save_pretrained(self, directory, metadata=metadata)
