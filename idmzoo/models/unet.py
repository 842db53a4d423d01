"""The U-Net and the super-resolution U-Net families."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks.layers import conv_nd, zero_module
from ..errors import InputError
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

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        layout = self.layout
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

    #: Channels of ``x`` as it enters :meth:`forward` (the super-res model's includes ``low_res``).
    @property
    def _x_channels(self) -> int:
        return self.layout.input_blocks[0][0].channels

    def _check_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Labels: present exactly when class-conditional, ``[N]``, integer, in ``[0, num_classes)``.

        A label embedding with ``optional_labels`` (classifier-free guidance) also takes
        ``y=None`` and the "no label" index ``-1``.

        The range check reads values, so it is skipped while ``torch.compile`` or
        ``torch.jit`` traces (where it would break the graph) and on the meta device; in
        eager mode it costs one host sync.
        """
        classes = self.spec.num_classes
        if classes is None:
            if y is not None:
                raise InputError("y was given but the model is not class-conditional (num_classes is None)")
            return
        optional = getattr(self.label_emb, "optional_labels", False)
        if y is None and optional:
            return
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
            raise InputError(f"a class-conditional model needs labels y of shape [{x.shape[0]}]")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise InputError(f"labels y must be integers (torch.long), but got {y.dtype}")
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or y.is_meta:
            return
        low = -1 if optional else 0
        outside = (y < low) | (y >= classes)
        if bool(outside.any()):
            raise InputError(
                f"labels y must be in [{low}, {classes - 1}] (num_classes={classes}), but got {y[outside][:5].tolist()}"
            )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Denoise ``x`` ``[N, C, *spatial]`` at ``timesteps`` ``[N]``, for labels ``y`` ``[N]``.

        Raises:
            InputError: an argument of the wrong shape, channel count, size or label range.
        """
        self.check_inputs(x, timesteps, channels=self._x_channels)
        self._check_labels(x, y)
        emb = self.embed(timesteps)
        if self.spec.num_classes is not None:
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
        self.check_inputs(x, timesteps)
        if (
            not isinstance(low_res, torch.Tensor)
            or low_res.dim() != x.dim()
            or low_res.shape[:2] != x.shape[:2]
        ):
            got = list(low_res.shape) if isinstance(low_res, torch.Tensor) else type(low_res).__name__
            raise InputError(
                f"low_res must be [{x.shape[0]}, {x.shape[1]}, <spatial>] with {x.dim() - 2} spatial axes "
                f"like x {list(x.shape)}, but got {got}"
            )
        upsampled = F.interpolate(low_res, x.shape[2:], mode=_INTERPOLATION[x.dim() - 2])
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, y)
