"""The timestep and class-label embeddings, chosen by name like every other layer.

A ``time_embed`` block is built as ``factory(model_channels, ctx, **params)`` and maps
timesteps ``[N]`` (any real values) to ``[N, ctx.emb_channels]``.  A ``label_embed`` block
is built as ``factory(num_classes, ctx, **params)`` and maps labels ``[N]`` to
``[N, ctx.emb_channels]``; one whose ``optional_labels`` is true is also called with
``y=None`` and returns an embedding that broadcasts over the batch (``[1, emb_channels]``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from pydantic import Field, NonNegativeFloat, PositiveFloat

from ..registry import BlockParams, register_block
from .context import BlockContext
from .timestep import timestep_embedding

__all__ = [
    "SinusoidalParams",
    "FourierParams",
    "CFGEmbeddingParams",
    "TimestepMLP",
    "SinusoidalTimeEmbedding",
    "FourierTimeEmbedding",
    "LabelEmbedding",
    "CFGLabelEmbedding",
]


class TimestepMLP(nn.Sequential):
    """Features of the timesteps, then linear → activation → linear (state-dict keys ``0``, ``2``)."""

    def __init__(self, feature_channels: int, ctx: BlockContext) -> None:
        emb = ctx.emb_channels
        super().__init__(nn.Linear(feature_channels, emb), ctx.make_activation(), nn.Linear(emb, emb))

    def features(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``[N]`` → ``[N, feature_channels]`` in float32."""
        raise NotImplementedError

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return super().forward(self.features(timesteps).to(self[0].weight.dtype))


class SinusoidalParams(BlockParams):
    """Parameters of the reference's sinusoidal timestep embedding."""

    max_period: PositiveFloat = Field(10000.0, description="The longest period of the sinusoids.")


@register_block(
    "time_embed",
    "sinusoidal",
    params=SinusoidalParams,
    description="The reference's: model_channels sinusoidal frequencies, then a two-layer MLP.",
)
class SinusoidalTimeEmbedding(TimestepMLP):
    """improved-diffusion's ``timestep_embedding`` (cosines, then sines) and its ``time_embed`` MLP."""

    def __init__(self, model_channels: int, ctx: BlockContext, *, max_period: float) -> None:
        super().__init__(model_channels, ctx)
        self.channels, self.max_period = model_channels, max_period

    def features(self, timesteps: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(timesteps, self.channels, self.max_period)


class FourierParams(BlockParams):
    """Parameters of the Gaussian Fourier feature embedding."""

    scale: PositiveFloat = Field(16.0, description="Standard deviation of the random frequencies.")


@register_block(
    "time_embed",
    "fourier",
    params=FourierParams,
    description="Gaussian Fourier features (NCSN++, EDM): fixed random frequencies, then the MLP.",
)
class FourierTimeEmbedding(TimestepMLP):
    """cos and sin of ``2π t f`` for ``model_channels // 2`` frequencies ``f ~ N(0, scale²)``.

    The frequencies are a buffer (``frequencies``, in the state dict): they are drawn once,
    at construction, and a checkpoint must restore them with the MLP.  Usually fed
    ``log(sigma) / 4`` or a continuous time in [0, 1] rather than integer steps.
    """

    def __init__(self, model_channels: int, ctx: BlockContext, *, scale: float) -> None:
        super().__init__(model_channels, ctx)
        self.channels = model_channels
        self.register_buffer("frequencies", torch.randn(model_channels // 2) * scale)

    def features(self, timesteps: torch.Tensor) -> torch.Tensor:
        args = 2 * math.pi * timesteps[:, None].float() * self.frequencies[None].float()
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.channels % 2:
            features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
        return features


def _normal_weight(rows: int, channels: int) -> torch.Tensor:
    """``nn.Embedding``'s own N(0, 1) init, skipped on the meta device.

    On meta, ``normal_`` goes through torch's Python reference kernels, whose first use
    imports the compiler stack (seconds); there is nothing to initialise there anyway.
    """
    weight = torch.empty(rows, channels)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return weight


@register_block(
    "label_embed", "embedding", description="The reference's: one learned vector per class (nn.Embedding)."
)
class LabelEmbedding(nn.Embedding):
    """``nn.Embedding(num_classes, emb_channels)``, state-dict key ``weight``; labels are required."""

    optional_labels = False

    def __init__(self, num_classes: int, ctx: BlockContext) -> None:
        super().__init__(num_classes, ctx.emb_channels, _weight=_normal_weight(num_classes, ctx.emb_channels))


class CFGEmbeddingParams(BlockParams):
    """Parameters of the label embedding with a learned "no label" entry."""

    drop_rate: NonNegativeFloat = Field(
        0.0,
        lt=1.0,
        description="In training, the fraction of labels replaced by no label (classifier-free guidance).",
    )


@register_block(
    "label_embed",
    "cfg_embedding",
    params=CFGEmbeddingParams,
    description='One learned vector per class and one for "no label" (y=None or -1): classifier-free guidance.',
)
class CFGLabelEmbedding(nn.Embedding):
    """``num_classes + 1`` learned vectors; the last is "no label", used for ``y=None`` and ``y == -1``.

    With ``drop_rate`` each label is replaced by no label with that probability in training,
    so one model learns both the conditional and the unconditional score.
    """

    optional_labels = True

    def __init__(self, num_classes: int, ctx: BlockContext, *, drop_rate: float) -> None:
        rows = num_classes + 1
        super().__init__(rows, ctx.emb_channels, _weight=_normal_weight(rows, ctx.emb_channels))
        self.num_classes, self.drop_rate = num_classes, drop_rate

    def forward(self, y: torch.Tensor | None) -> torch.Tensor:
        null = self.num_classes
        if y is None:
            return self.weight[null][None]
        y = torch.where(y < 0, null, y)
        if self.training and self.drop_rate:
            y = torch.where(torch.rand(y.shape, device=y.device) < self.drop_rate, null, y)
        return super().forward(y)
