"""The U-Net's structure as data: every block's place, kind and channel counts.

One walk over ``channel_mult`` produces a :class:`UNetLayout`; the spec validator checks
each block against it before anything is built, the builder builds from it, and the
CLI summarises it.  Paths are the reference's module paths, so the state dict keys of a
built model are those of the published checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .registry.params import Stage

if TYPE_CHECKING:
    from .spec import Spec

__all__ = ["Site", "UNetLayout", "unet_layout"]


@dataclass(frozen=True)
class Site:
    """One block of the model.

    Attributes:
        kind: a block kind (``resblock``, ``attention``, ``upsample``, ``downsample``),
            ``stem`` for the fixed input convolution, or ``head`` for the output head.
        path: the module path, e.g. ``input_blocks.4.1``.
        channels: input channels.
        out_channels: output channels.
        stage: ``input``, ``middle``, ``output`` or ``head``.
        ds: the downsampling rate at the block's input.
        level: the level whose resolution the block reads (0 is full resolution); the
            middle block belongs to the last level.
    """

    kind: str
    path: str
    channels: int
    out_channels: int
    stage: Stage
    ds: int
    level: int


@dataclass(frozen=True)
class UNetLayout:
    """The blocks of a U-Net (or of its encoder half), grouped as the reference groups them.

    Attributes:
        input_blocks: groups of :class:`Site`, one ``TimestepEmbedSequential`` each.
        middle_block: the bottleneck's sites.
        output_blocks: decoder groups; empty for the encoder.
        stem_channels: channels after the input convolution.
        final_channels: channels entering the output head.
        final_ds: downsampling rate at the bottleneck.
        feature_channels: summed channels of every encoder group and the bottleneck
            (the width the encoder's spatial heads pool).
        head: the output head (``out``): the U-Net's norm, activation and convolution at
            level 0, or the encoder's pool at the last level; overrides select it as
            ``stage: "head"``.  Not one of :meth:`sites`.
    """

    input_blocks: tuple[tuple[Site, ...], ...]
    middle_block: tuple[Site, ...]
    output_blocks: tuple[tuple[Site, ...], ...]
    stem_channels: int
    final_channels: int
    final_ds: int
    feature_channels: int
    head: Site | None = None

    def sites(self) -> Iterator[Site]:
        """Every site, in forward order."""
        for group in self.input_blocks:
            yield from group
        yield from self.middle_block
        for group in self.output_blocks:
            yield from group

    def normalized_channels(self) -> set[int]:
        """Every channel count a norm layer will see (all block inputs and outputs)."""
        counts = {self.final_channels}
        for site in self.sites():
            if site.kind != "stem":
                counts.update((site.channels, site.out_channels))
        return counts


def unet_layout(spec: Spec, *, in_channels: int, decoder: bool = True) -> UNetLayout:
    """Lay out the U-Net ``spec`` describes, with ``in_channels`` at the stem.

    ``channel_mult`` may hold fractions (guided-diffusion's 512x512 models use 0.5): a
    level's width is ``int(mult * model_channels)``.
    """
    mc, attention_at = spec.model_channels, set(spec.attention_resolutions)
    last_level = len(spec.channel_mult) - 1
    ch = stem = int(spec.channel_mult[0] * mc)
    input_blocks: list[tuple[Site, ...]] = [
        (Site("stem", "input_blocks.0.0", in_channels, ch, "input", 1, 0),)
    ]
    skip_channels = [ch]
    ds = 1

    def group(prefix: str, blocks: list[tuple[str, int, int]], stage: Stage, level: int) -> tuple[Site, ...]:
        """Sites ``prefix.0``, ``prefix.1``, ... from (kind, in, out) triples."""
        return tuple(
            Site(kind, f"{prefix}.{j}", cin, cout, stage, ds, level)
            for j, (kind, cin, cout) in enumerate(blocks)
        )

    per_level = spec.res_blocks_per_level
    for level, mult in enumerate(spec.channel_mult):
        width = int(mult * mc)
        for _ in range(per_level[level]):
            blocks = [("resblock", ch, width)] + ([("attention", width, width)] if ds in attention_at else [])
            input_blocks.append(group(f"input_blocks.{len(input_blocks)}", blocks, "input", level))
            ch = width
            skip_channels.append(ch)
        if level != last_level:
            input_blocks.append(
                group(f"input_blocks.{len(input_blocks)}", [("downsample", ch, ch)], "input", level)
            )
            skip_channels.append(ch)
            ds *= 2

    middle_blocks = [("resblock", ch, ch), ("attention", ch, ch), ("resblock", ch, ch)]
    middle = group("middle_block", middle_blocks, "middle", last_level)
    feature_channels = sum(skip_channels) + ch
    final_ds = ds

    output_blocks: list[tuple[Site, ...]] = []
    if decoder:
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            width = int(mult * mc)
            last_block = per_level[level]
            for i in range(last_block + 1):
                blocks = [("resblock", ch + skip_channels.pop(), width)]
                ch = width
                if ds in attention_at:
                    blocks.append(("attention", ch, ch))
                if level and i == last_block:
                    blocks.append(("upsample", ch, ch))
                output_blocks.append(group(f"output_blocks.{len(output_blocks)}", blocks, "output", level))
                if level and i == last_block:
                    ds //= 2
        head = Site("head", "out", ch, spec.out_channels, "head", 1, 0)
    else:
        head = Site("head", "out", ch, spec.out_channels, "head", ds, last_level)
    return UNetLayout(
        input_blocks=tuple(input_blocks),
        middle_block=middle,
        output_blocks=tuple(output_blocks),
        stem_channels=stem,
        final_channels=ch,
        final_ds=final_ds,
        feature_channels=feature_channels,
        head=head,
    )
