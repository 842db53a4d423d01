"""What a block declares about itself: its typed parameters, and where in a model it can work.

:class:`BlockParams` is the base of every block's parameter model.  Its hooks are called
during spec validation, before any module exists, with a :class:`Place` that tells the
block everything the spec fixes about where it is going to be built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import SiteCheckError

__all__ = ["Stage", "Place", "BlockParams", "check_divides"]

#: Where in the model a block sits: the encoder path, the bottleneck, the decoder path,
#: the output head, or (for norms checked against every width) anywhere.
Stage = Literal["input", "middle", "output", "head", "any"]


@dataclass(frozen=True)
class Place:
    """One place in a model where a block will be built, as validation sees it.

    Attributes:
        kind: the block kind built there (``norm``, ``resblock``, ``attention``, ...).
        path: the module path, e.g. ``input_blocks.4.1`` (``out`` for the encoder's head;
            for a norm, the path of the block it belongs to, or ``""`` when it is checked
            against a channel count the model uses anywhere).
        stage: see :data:`Stage`.
        channels: input channels.
        out_channels: output channels.
        level: the U-Net level (0 is full resolution, one per ``channel_mult`` entry), or
            ``None`` where no single level applies (norms checked model-wide).
        ds: the downsampling rate at the block's input (1, 2, 4, ...).
        dims: 1, 2 or 3 signal dimensions.
        image_size: the spec's ``image_size`` (``None`` when it is not fixed).
        spec: the whole :class:`~idmzoo.Spec`, for blocks that depend on more.
    """

    kind: str
    path: str
    stage: Stage
    channels: int
    out_channels: int
    level: int | None
    ds: int
    dims: int
    image_size: int | None
    spec: Any

    @property
    def resolution(self) -> int | None:
        """The side length of the block's input, when the spec fixes ``image_size``."""
        return None if self.image_size is None else self.image_size // self.ds

    def describe(self) -> str:
        """``at input_blocks.4.1``, or for a norm ``needed for 96 channels``, for error messages."""
        if self.kind != "norm":
            return f"at {self.path}"
        inside = f" inside the block at {self.path}" if self.path else ""
        return f"needed for {self.channels} channels{inside}"


def check_divides(field: str, value: int, channels: int, *, hint: str = "") -> None:
    """Raise :class:`SiteCheckError` at ``field`` unless ``value`` divides ``channels``.

    The check every norm group count and attention head width needs, with one message.

    Examples:
        >>> check_divides("num_groups", self.num_groups, place.channels)
    """
    if channels % value:
        raise SiteCheckError(field, f"{field}={value} does not divide {channels} channels{hint}")


class BlockParams(BaseModel):
    """Base class of every block's parameter model.

    Subclass it with the block's own parameters (typed, with defaults and
    ``Field(description=...)``): the registry passes every one of them to the factory as a
    keyword argument, so the defaults live here only.  ``type`` is filled in by the registry
    with the name the block is registered under.  Unknown keys are rejected so typos fail
    at validation.  Float parameters must be finite (``allow_inf_nan=False``): an
    infinite ``eps`` would make the output independent of the input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    type: str = Field(description="The registered name of the block.")

    def check(self, place: Place) -> None:
        """Reject a place where this block cannot work, before anything is built.

        Called once for every place the block will be built.  Norms are called for every
        channel count a norm will see.  Raise :class:`~idmzoo.SiteCheckError` naming the
        offending parameter (or, with ``spec_field=``, the spec field at fault).
        """

    def inner_norm_channels(self, place: Place) -> tuple[int, ...]:
        """Channel counts of the norms the block builds besides those at its input and output.

        A block with an inner layer of its own width that it normalizes (e.g. an MLP head's
        hidden layer) returns that width, so the spec's norm is checked against it at
        validation instead of failing inside the build.
        """
        return ()

    def factory_kwargs(self) -> dict[str, Any]:
        """The parameters as keyword arguments for the factory (everything but ``type``)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name != "type"}
