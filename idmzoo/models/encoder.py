"""The encoder U-Net family: guided-diffusion's noisy-image classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import IdmzooModel

if TYPE_CHECKING:
    from ..spec import Spec

__all__ = ["EncoderUNetModel"]


class EncoderUNetModel(IdmzooModel):
    """The encoder half of the U-Net and a pooling head: ``model(x, timesteps)`` → ``[N, out_channels]``."""

    decoder_rate_applies = False  # no skip connections: strided convs take any size

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        layout = self.layout
        head = self.maker.context(
            layout.head,
            "head",
            out_channels=spec.out_channels,
            feature_channels=layout.feature_channels,
            spatial_size=(spec.image_size or 0) // layout.final_ds,
        )
        self.out = self.maker.create("pool", spec.pool, layout.final_channels, head)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Class logits of noisy ``x`` ``[N, C, *spatial]`` at ``timesteps`` ``[N]``."""
        self.check_inputs(x, timesteps)
        emb = self.embed(timesteps)
        h, features = self.encode(x.type(self.torso_dtype), emb)
        return self.out(h.type(x.dtype), [*features, h])
