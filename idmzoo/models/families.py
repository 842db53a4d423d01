"""The model families a spec's ``family`` field chooses between."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SiteCheckError
from ..layout import UNetLayout, unet_layout
from ..registry import register_block
from ..spec import FamilyParams
from .encoder import EncoderUNetModel
from .unet import SuperResUNetModel, UNetModel

if TYPE_CHECKING:
    from ..spec import Spec

__all__ = [
    "UNetFamily",
    "SuperResUNetFamily",
    "EncoderUNetFamily",
]


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
            raise SiteCheckError(
                "pool", 'the encoder_unet family needs a pool head, e.g. {"type": "attention"}'
            )
        if spec.num_classes is not None:
            raise SiteCheckError(
                "num_classes",
                "the encoder_unet family is not class-conditional; set out_channels to the number of classes",
            )

    def layout(self, spec: Spec) -> UNetLayout:
        return unet_layout(spec, in_channels=spec.in_channels, decoder=False)


# The model classes are the factories: ``build`` calls ``factory(spec)``.
register_block(
    "family",
    "unet",
    UNetModel,
    params=UNetFamily,
    description="Diffusion U-Net: model(x, timesteps, y=None).",
)
register_block(
    "family",
    "superres_unet",
    SuperResUNetModel,
    params=SuperResUNetFamily,
    description="Super-resolution U-Net: model(x, timesteps, low_res, y=None).",
)
register_block(
    "family",
    "encoder_unet",
    EncoderUNetModel,
    params=EncoderUNetFamily,
    description="Encoder half with a pooling head (noisy-image classifier): model(x, timesteps).",
)
