"""What every idmzoo model shares: timestep conditioning, block construction, precision and checkpointing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from ..blocks.context import BlockContext
from ..blocks.layers import conv_nd
from ..blocks.timestep import TimestepEmbedSequential, timestep_embedding
from ..errors import BlockBuildError, IdmzooError
from ..layout import Site, UNetLayout
from ..registry import REGISTRY, BlockParams
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

    Every module it returns carries ``idmzoo_kind`` (its block kind), which is how
    checkpointing finds blocks of a kind, whoever wrote them.
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.ctx = BlockContext(
            dims=spec.dims,
            emb_channels=4 * spec.model_channels,
            dropout=spec.dropout,
            stage="input",
            make_norm=self.norm,
            make_resblock=self.resblock,
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
        return module

    def norm(self, channels: int) -> nn.Module:
        """The spec's norm for ``channels`` channels."""
        return self.create("norm", self.spec.norm, channels)

    def resblock(self, channels: int, out_channels: int, resample: str | None = None) -> nn.Module:
        """The spec's residual block; ``resample`` is passed only when it is set."""
        extra = {"resample": resample} if resample else {}
        return self.create("resblock", self.spec.resblock, channels, out_channels, self.ctx, **extra)

    def site(self, site: Site) -> nn.Module:
        """The module at ``site``."""
        if site.kind == "stem":
            return conv_nd(self.spec.dims, site.channels, site.out_channels, 3, padding=1)
        if site.kind == "resblock":
            return self.resblock(site.channels, site.out_channels)
        params = getattr(self.spec, site.kind)
        return self.create(site.kind, params, site.channels, self.ctx.at(site.stage))

    def group(self, sites: tuple[Site, ...]) -> TimestepEmbedSequential:
        """One ``TimestepEmbedSequential`` of the modules at ``sites``."""
        return TimestepEmbedSequential(*(self.site(site) for site in sites))


class IdmzooModel(nn.Module):
    """Base of the model families: the timestep MLP, the encoder path and the bottleneck.

    Attributes:
        spec: the :class:`~idmzoo.spec.Spec` the model was built from.
        layout: its :class:`~idmzoo.layout.UNetLayout`.
    """

    def __init__(self, spec: Spec, layout: UNetLayout) -> None:
        super().__init__()
        self.spec = spec
        self.layout = layout
        self.maker = BlockMaker(spec)
        emb_channels = self.maker.ctx.emb_channels
        self.time_embed = nn.Sequential(
            nn.Linear(spec.model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        self.input_blocks = nn.ModuleList(self.maker.group(g) for g in layout.input_blocks)
        self.middle_block = self.maker.group(layout.middle_block)

    @property
    def torso_dtype(self) -> torch.dtype:
        """The dtype the blocks run in: that of the stem convolution's weight."""
        return self.input_blocks[0][0].weight.dtype

    def embed(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timestep embedding ``[N, 4 * model_channels]``."""
        frequencies = timestep_embedding(timesteps, self.spec.model_channels)
        return self.time_embed(frequencies.to(self.time_embed[0].weight.dtype))

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
