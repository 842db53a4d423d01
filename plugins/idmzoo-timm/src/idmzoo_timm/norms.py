"""timm's normalization layers as idmzoo norm blocks, one ``timm_<name>`` per name timm knows.

idmzoo hands a norm ``[N, C, *spatial]`` tensors: ``[N, C, L]``, ``[N, C, H, W]`` or
``[N, C, D, H, W]`` in residual blocks, and ``[N, C, T]`` inside attention even in 2-D
models.  timm's layers follow three conventions, so each is adapted by subclassing (the
parameter names stay timm's, ``weight`` / ``bias``, so ``timm_groupnorm`` loads the
reference checkpoints like ``group_norm32``):

* ``nn.GroupNorm`` and ``nn.BatchNorm1d`` take ``[N, C, ...]``: spatial axes are flattened
  to ``[N, C, L]``;
* the ``*2d`` layers (``LayerNorm2d``, ``RmsNorm2d``, ``BatchNorm2d``, ...) take only
  ``[N, C, H, W]``: spatial axes are flattened to ``[N, C, L, 1]``;
* the others (``LayerNorm``, ``RmsNorm``, ``SimpleNorm``, ...) normalise the *last* axis:
  channels are moved last and back.

None of these norms looks at the spatial arrangement, so flattening changes no result.
As with idmzoo's own ``group_norm32``, a layer whose weights are float32 normalises an
fp16/bf16 input in float32 and returns the input's dtype.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import torch
import torch.nn as nn
from pydantic import Field, PositiveFloat, PositiveInt, create_model
from timm.layers import create_norm, get_norm_layer

from idmzoo import BlockParams, Place, check_divides

__all__ = ["TimmNormParams", "timm_norm_names", "timm_norm_block", "channels_first_norm"]

#: The constructor arguments a spec may set, with their validation; a layer exposes
#: those its own ``__init__`` declares, with its own defaults.
_SPEC_ARGUMENTS: dict[str, tuple[Any, str]] = {
    "num_groups": (PositiveInt, "Number of channel groups; must divide every channel count."),
    "eps": (PositiveFloat, "Added to the variance for numerical stability."),
    "affine": (bool, "Learn a per-channel scale (and shift, where the layer has one)."),
    "momentum": (
        Annotated[float, Field(ge=0.0, le=1.0)] | None,
        "Running-statistics momentum; None for a cumulative average.",
    ),
    "track_running_stats": (bool, "Keep running statistics for evaluation mode."),
}


class TimmNormParams(BlockParams):
    """Base of the ``timm_*`` norms' parameter models (built from each layer's signature)."""

    def check(self, place: Place) -> None:
        num_groups = getattr(self, "num_groups", None)
        if num_groups is not None:
            check_divides(
                "num_groups",
                num_groups,
                place.channels,
                hint="; choose a divisor of every channel count in the model (e.g. 1, or a power of two "
                "dividing model_channels)",
            )


def timm_norm_names() -> list[str]:
    """Every name timm's norm factory (``timm.layers.get_norm_layer``) accepts, sorted.

    timm keeps them in ``timm.layers.create_norm._NORM_MAP``; listing that map is the only
    way to enumerate them, and each name is still resolved through the public factory.
    """
    return sorted(create_norm._NORM_MAP)


def _compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the layer's floating-point weights; float32 for a layer without any."""
    tensors = (*module.parameters(recurse=False), *module.buffers(recurse=False))
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


class _ChannelsFirstAdapter(nn.Module):
    """Runs a timm norm on ``[N, C, *spatial]`` by reshaping to the rank it was written for."""

    input_rank: int | None  # 3 or 4: flatten spatial axes; None: the layer wants channels last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(self)
        if x.dtype == dtype:
            return self._normalize(x)
        with torch.autocast(x.device.type, enabled=False):
            return self._normalize(x.to(dtype)).to(x.dtype)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_rank is None:
            return super().forward(x.movedim(1, -1)).movedim(-1, 1)  # [N, *spatial, C] and back
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1, *([1] * (self.input_rank - 3)))  # [N, C, L] or [N, C, L, 1]
        return super().forward(flat).reshape(x.shape)


def _input_rank(layer: type[nn.Module]) -> int | None:
    """3 or 4 for layers that take channels first (rank they accept), ``None`` for channels last."""
    if issubclass(layer, (nn.GroupNorm, nn.BatchNorm1d)):
        return 3
    if "2d" in layer.__name__.lower():  # timm's and torchvision's naming of NCHW layers
        return 4
    return None


def channels_first_norm(layer: type[nn.Module]) -> type[nn.Module]:
    """The subclass of timm's ``layer`` that takes idmzoo's ``[N, C, *spatial]`` tensors."""
    return type(
        f"ChannelsFirst{layer.__name__}",
        (_ChannelsFirstAdapter, layer),
        {
            "__module__": __name__,
            "__doc__": f"timm's {layer.__name__} on [N, C, *spatial] tensors.",
            "input_rank": _input_rank(layer),
        },
    )


def _params_model(name: str, layer: type[nn.Module]) -> type[TimmNormParams]:
    """A parameter model with the spec-settable arguments ``layer.__init__`` declares."""
    signature = inspect.signature(layer.__init__).parameters
    fields: dict[str, Any] = {
        argument: (annotation, Field(signature[argument].default, description=description))
        for argument, (annotation, description) in _SPEC_ARGUMENTS.items()
        if argument in signature and signature[argument].default is not inspect.Parameter.empty
    }
    return create_model(
        f"Timm{layer.__name__}Params",
        __base__=TimmNormParams,
        __module__=__name__,
        __doc__=f"Parameters of timm's {layer.__name__} (the ``{name}`` norm in timm).",
        **fields,
    )


def timm_norm_block(name: str) -> tuple[Callable[..., nn.Module], type[TimmNormParams], str]:
    """The factory, parameter model and description of the block for timm norm ``name``."""
    layer = get_norm_layer(name)
    description = f"timm's {layer.__name__} ({layer.__module__}) on [N, C, *spatial] tensors."
    return channels_first_norm(layer), _params_model(name, layer), description
