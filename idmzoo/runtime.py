"""Run-time choices that change no weights: the attention kernel and gradient checkpointing.

They are kept out of the spec on purpose (as diffusers keeps its attention backend out of
its saved config): a spec describes an architecture and its checkpoint layout, while these
only trade speed for memory or select a verification path.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

__all__ = [
    "AttentionBackend",
    "Checkpointing",
    "BlockCheckpointing",
    "SAVED_OPS",
    "dropout_keep_mask",
    "prefer_recompute",
    "run_checkpointed",
    "attention_backend",
    "get_attention_backend",
    "set_attention_backend",
    "dot_product_attention",
]

#: ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (memory linear in tokens
#: with a fused kernel); ``"math"``: the reference's einsum formulation, for verification.
AttentionBackend = Literal["sdpa", "math"]
#: How one block is checkpointed: ``"full"`` recomputes its whole forward in the backward
#: pass; ``"selective"`` keeps the outputs of its convolutions, matmuls and attention
#: kernels (:data:`SAVED_OPS`) and recomputes only the cheap pointwise work between them.
BlockCheckpointing = Literal["none", "full", "selective"]
#: Which blocks recompute their activations: ``"none"``; ``"attention"`` (attention blocks,
#: full); ``"all"`` (every block, full); ``"selective"`` (every block, selective); or a
#: mapping ``{kind: BlockCheckpointing}`` for the kinds named (the others: ``"none"``).
Checkpointing = Literal["none", "attention", "all", "selective"] | Mapping[str, BlockCheckpointing]

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


@torch.library.custom_op("idmzoo::dropout_keep_mask", mutates_args=())
def dropout_keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """The elements dropout keeps, ``rand_like(x) >= p``, drawn by a single op.

    As one op (rather than a draw and a comparison) it is one of :data:`SAVED_OPS`:
    selective checkpointing keeps its boolean mask, 1 byte per element, instead of
    redrawing the float32 uniform numbers in the backward pass, the costliest part of a
    residual block's recomputation on CPU.
    """
    return torch.rand_like(x) >= p


@dropout_keep_mask.register_fake
def _dropout_keep_mask_shape(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.bool)


def _aten(*names: str) -> frozenset[Any]:
    """The overloads of the aten ops ``names`` that this torch build has (CUDA-only ones may not exist)."""
    return frozenset(op.default for name in names if (op := getattr(torch.ops.aten, name, None)) is not None)


#: The ops whose outputs selective checkpointing keeps: the expensive ones, and dropout's
#: mask (small, and costly to redraw).  Everything else (norms, activations, additions,
#: reshapes) is recomputed, which costs little time and holds no memory between the passes.
SAVED_OPS: frozenset[Any] = _aten(
    "convolution",
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
) | {torch.ops.idmzoo.dropout_keep_mask.default}


class _RecomputeRegion(threading.local):
    depth = 0


_recompute_region = _RecomputeRegion()


@contextlib.contextmanager
def prefer_recompute() -> Iterator[None]:
    """Under selective checkpointing, keep none of the outputs of the ops run inside.

    For a block's last computation when its output only enters an addition (a residual
    branch's last convolution, attention's output projection): the backward pass never
    reads that output, so keeping it would hold an activation per block for nothing, and
    it is not recomputed either, because recomputation stops as soon as every tensor the
    backward pass needs is rebuilt.  Anything wrapped earlier in a block *is* recomputed
    (the ops after it must be), so use it only at the end.  It does nothing outside
    selective checkpointing, nor under ``torch.compile``, whose partitioner decides what
    to keep.

    Examples:
        >>> with idmzoo.prefer_recompute():
        ...     return x + self.proj_out(h)
    """
    if torch.compiler.is_compiling():
        yield
        return
    _recompute_region.depth += 1
    try:
        yield
    finally:
        _recompute_region.depth -= 1


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if op in SAVED_OPS and not _recompute_region.depth:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_selective_contexts = functools.partial(create_selective_checkpoint_contexts, _selective_policy)


def run_checkpointed(block: Callable[..., torch.Tensor], mode: bool | str, *args: Any) -> torch.Tensor:
    """``block(*args)`` under non-reentrant checkpointing, full (``True``/``"full"``) or ``"selective"``.

    The RNG state is restored before the recomputation, so dropout replays its forward mask.
    """
    if mode == "selective":
        return checkpoint(block, *args, use_reentrant=False, context_fn=_selective_contexts)
    return checkpoint(block, *args, use_reentrant=False)
