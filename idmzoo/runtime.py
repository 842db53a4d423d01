"""Run-time choices that change no weights: the attention kernel and gradient checkpointing.

They are kept out of the spec on purpose (as diffusers keeps its attention backend out of
its saved config): a spec describes an architecture and its checkpoint layout, while these
only trade speed for memory or select a verification path.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "AttentionBackend",
    "Checkpointing",
    "attention_backend",
    "get_attention_backend",
    "set_attention_backend",
    "dot_product_attention",
]

#: ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (memory linear in tokens
#: with a fused kernel); ``"math"``: the reference's einsum formulation, for verification.
AttentionBackend = Literal["sdpa", "math"]
#: Which blocks recompute their activations in the backward pass.
Checkpointing = Literal["none", "attention", "all"]

_ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "math")
_attention_backend: AttentionBackend = "sdpa"


def get_attention_backend() -> AttentionBackend:
    """The attention kernel every attention block uses now."""
    return _attention_backend


def set_attention_backend(backend: AttentionBackend) -> None:
    """Select the attention kernel process-wide; prefer the :func:`attention_backend` context."""
    global _attention_backend
    if backend not in _ATTENTION_BACKENDS:
        raise ValueError(
            f"attention backend must be one of {', '.join(_ATTENTION_BACKENDS)}, but got {backend!r}"
        )
    _attention_backend = backend


@contextlib.contextmanager
def attention_backend(backend: AttentionBackend) -> Iterator[None]:
    """Use ``backend`` for every attention block inside the ``with`` body.

    Examples:
        >>> with idmzoo.attention_backend("math"):   # the reference's einsum path
        ...     reference_like = model(x, t)
    """
    previous = get_attention_backend()
    set_attention_backend(backend)
    try:
        yield
    finally:
        set_attention_backend(previous)


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √c) v over ``[..., tokens, head_channels]`` tensors, by the current backend.

    The ``math`` path follows the reference: q and k are each scaled by c^-1/4 (more
    stable in float16 than dividing afterwards) and the softmax runs in float32.
    """
    if _attention_backend == "sdpa":
        # The fused kernels need unit stride along the head channels; given strided views,
        # SDPA silently falls back to its quadratic-memory math kernel (4x slower on CPU).
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v)
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
    weight = torch.einsum("...tc,...sc->...ts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("...ts,...sc->...tc", weight, v)
