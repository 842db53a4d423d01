"""The model families a spec's ``family`` field chooses between."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..layout import UNetLayout, unet_layout
from ..registry import SiteCheckError
from ..spec import FamilyParams
from .encoder import EncoderUNetModel
from .unet import SuperResUNetModel, UNetModel

if TYPE_CHECKING:
    from ..spec import Spec

__all__ = ["UNetFamily", "SuperResUNetFamily", "EncoderUNetFamily", "build_unet", "build_superres_unet", "build_encoder_unet"]


class UNetFamily(FamilyParams):
    """The diffusion U-Net (improved-diffusion, guided-diffusion and consistency-models ``UNetModel``)."""

    def check_spec(self, spec: Spec) -> None:
        if spec.pool is not None:
            raise SiteCheckError("pool", "only the encoder_unet family has an output head; remove pool")

    def layout(self, spec: Spec) -> UNetLayout:
        return unet_layout(spec, in_channels=spec.in_channels)


class SuperResUNetFamily(UNetFamily):
    """The super-resolution U-Net: the low-res image is upsampled and concatenated to the input."""

    def layout(self, spec: Spec) -> UNetLayout:
        return unet_layout(spec, in_channels=2 * spec.in_channels)


class EncoderUNetFamily(FamilyParams):
    """guided-diffusion's ``EncoderUNetModel``: encoder path, bottleneck, and a ``pool`` head."""

    def check_spec(self, spec: Spec) -> None:
        if spec.pool is None:
            raise SiteCheckError("pool", "the encoder_unet family needs a pool head, e.g. {\"type\": \"attention\"}")
        if spec.num_classes is not None:
            raise SiteCheckError("num_classes", "the encoder_unet family is not class-conditional; set out_channels to the number of classes")
        if spec.pool.type.rpartition(":")[2] == "attention":
            if spec.dims == 3:
                raise SiteCheckError(
                    "pool",
                    "the attention pool learns one position per bottleneck pixel, but a 3-D input "
                    "keeps its depth, which the spec does not fix; use dims 1 or 2, or another pool",
                )
            rate = 2 ** (len(spec.channel_mult) - 1)
            if spec.image_size is None or spec.image_size % rate:
                raise SiteCheckError(
                    "image_size",
                    f"the attention pool learns one position per bottleneck pixel, so image_size must be "
                    f"set to a multiple of {rate} (the bottleneck's downsampling rate), but got {spec.image_size}",
                )

    def layout(self, spec: Spec) -> UNetLayout:
        return unet_layout(spec, in_channels=spec.in_channels, decoder=False)


def build_unet(spec: Spec) -> UNetModel:
    """A :class:`UNetModel` for ``spec``."""
    return UNetModel(spec, spec.layout())


def build_superres_unet(spec: Spec) -> SuperResUNetModel:
    """A :class:`SuperResUNetModel` for ``spec``."""
    return SuperResUNetModel(spec, spec.layout())


def build_encoder_unet(spec: Spec) -> EncoderUNetModel:
    """An :class:`EncoderUNetModel` for ``spec``."""
    return EncoderUNetModel(spec, spec.layout())
