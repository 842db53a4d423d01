"""Timestep conditioning: sinusoidal embeddings and the container that routes them."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..runtime import run_checkpointed

__all__ = ["timestep_embedding", "TimestepBlock", "TimestepEmbedSequential"]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embeddings ``[N, dim]`` of (possibly fractional) timesteps ``[N]``.

    Cosines first, then sines, as the reference checkpoints expect; an odd ``dim`` is
    padded with one zero column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepBlock(nn.Module):
    """A block whose ``forward(x, emb)`` also takes the timestep embedding ``[N, emb_channels]``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequence of blocks; the embedding goes to those that are :class:`TimestepBlock`.

    It is also where gradient checkpointing happens: a child whose
    ``gradient_checkpointing`` attribute is ``True`` (or ``"full"``) or ``"selective"`` is
    run under non-reentrant :func:`torch.utils.checkpoint.checkpoint`
    (:func:`~idmzoo.runtime.run_checkpointed`), so any plugin block can be checkpointed
    without cooperating.
    """

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            args = (x, emb) if isinstance(layer, TimestepBlock) else (x,)
            mode = getattr(layer, "gradient_checkpointing", False)
            if mode and mode != "none" and torch.is_grad_enabled():
                x = run_checkpointed(layer, mode, *args)
            else:
                x = layer(*args)
        return x
