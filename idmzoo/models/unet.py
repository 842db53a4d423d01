"""The U-Net and the super-resolution U-Net families."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks.layers import conv_nd, zero_module
from ..layout import UNetLayout
from .base import IdmzooModel

if TYPE_CHECKING:
    from ..spec import Spec

__all__ = ["UNetModel", "SuperResUNetModel"]

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class UNetModel(IdmzooModel):
    """The diffusion U-Net: ``model(x, timesteps, y=None)`` → ``[N, out_channels, *spatial]``.

    State-dict keys and shapes are those of improved-/guided-diffusion's ``UNetModel`` (and of
    consistency-models' with the ``conv2d_attention`` block).
    """

    def __init__(self, spec: Spec, layout: UNetLayout) -> None:
        super().__init__(spec, layout)
        if spec.num_classes is not None:
            self.label_emb = self.maker.create(
                "label_embed", spec.label_embed, spec.num_classes, self.maker.ctx
            )
        self.output_blocks = nn.ModuleList(self.maker.group(g) for g in layout.output_blocks)
        head = layout.head
        self.out = nn.Sequential(
            self.maker.norm(layout.final_channels, where=head),
            self.maker.activation(where=head),
            zero_module(conv_nd(spec.dims, layout.stem_channels, spec.out_channels, 3, padding=1)),
        )

    def torso(self) -> list[nn.Module]:
        return [*super().torso(), self.output_blocks]

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoise ``x`` ``[N, C, *spatial]`` at ``timesteps`` ``[N]``, for labels ``y`` ``[N]``."""
        emb = self.embed(timesteps)
        if self.spec.num_classes is None:
            if y is not None:
                raise ValueError("y was given but the model is not class-conditional (num_classes is None)")
        else:
            if (y is None and not getattr(self.label_emb, "optional_labels", False)) or (
                y is not None and y.shape != (x.shape[0],)
            ):
                raise ValueError(f"a class-conditional model needs labels y of shape [{x.shape[0]}]")
            emb = emb + self.label_emb(y)
        h, skips = self.encode(x.type(self.torso_dtype), emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


class SuperResUNetModel(UNetModel):
    """A U-Net conditioned on a low-resolution image, upsampled and concatenated to ``x``."""

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        low_res: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Like :meth:`UNetModel.forward`, with ``low_res`` ``[N, C, *smaller spatial]``."""
        upsampled = F.interpolate(low_res, x.shape[2:], mode=_INTERPOLATION[x.dim() - 2])
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, y)
