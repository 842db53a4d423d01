"""Build-time check that every registered block returns the shape the layout expects.

A plugin block that returns the wrong number of channels, or forgets to resample, would
otherwise surface at the first forward pass as a size mismatch deep inside torch, far
from the block at fault.  :func:`check_block_shapes` runs each group of blocks once on
dummy inputs on the ``meta`` device (shapes only: no memory, no arithmetic), with the
model's parameters swapped for meta copies, and names the first block whose output does
not have the shape the layout says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .errors import BlockBuildError, IdmzooError
from .layout import Site
from .messages import format_shape
from .registry import BLOCK_KINDS, REGISTRY
from .registry.discovery import BUILTIN_PACKAGE

if TYPE_CHECKING:
    from .models.base import IdmzooModel
    from .spec import Spec

__all__ = ["check_block_shapes", "uses_plugin_blocks"]

_BATCH = 2
_DEPTH = 2  # 3-D inputs: the depth axis is never resampled, so any size will do


def uses_plugin_blocks(spec: Spec) -> bool:
    """Whether any block of ``spec`` (the family and the overrides included) comes from outside idmzoo."""
    chosen = [(kind, params) for kind in BLOCK_KINDS if (params := getattr(spec, kind)) is not None]
    chosen += [(kind, block) for entry in spec.overrides for kind, block in entry.blocks.items()]
    return any(
        REGISTRY.get(kind, params.type).package != BUILTIN_PACKAGE
        for kind, params in chosen
        if hasattr(params, "type")  # a partial override keeps a block counted already
    )


def _describe(model: IdmzooModel, kind: str, path: str) -> str:
    """``resblock block 'name' (from package 'pkg') at input_blocks.1.0``."""
    if kind == "stem":
        return f"the stem convolution at {path}"
    module = model.get_submodule(path)
    package, _, name = getattr(module, "idmzoo_block", ":?").rpartition(":")
    return f"{kind} block {name!r} (from package {package!r}) at {path}"


class _Geometry:
    """The expected shapes of a spec's activations at each downsampling rate."""

    def __init__(self, model: IdmzooModel) -> None:
        spec, layout = model.spec, model.layout
        self.dims = spec.dims
        self.side = spec.image_size or 2 * layout.final_ds

    def spatial(self, ds: int) -> tuple[int, ...]:
        side = self.side // ds
        return (_DEPTH, side, side) if self.dims == 3 else (side,) * self.dims

    def activation(self, channels: int, ds: int) -> tuple[int, ...]:
        return (_BATCH, channels, *self.spatial(ds))

    def output(self, site: Site) -> tuple[int, ...]:
        ds = {"downsample": site.ds * 2, "upsample": site.ds // 2}.get(site.kind, site.ds)
        return self.activation(site.out_channels, ds)


def _meta(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 (or same-dtype, if not floating) meta tensor of ``tensor``'s shape."""
    dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    return torch.empty(tensor.shape, dtype=dtype, device="meta")


def _on_meta(module: nn.Module, *args: Any) -> Any:
    """Run ``module`` with every parameter and buffer replaced by a meta tensor of its shape."""
    state = {name: _meta(t) for name, t in (*module.named_parameters(), *module.named_buffers())}
    with torch.no_grad():
        return torch.func.functional_call(module, state, args)


class _Tracker:
    """Forward hooks checking each site's output, and each norm's, as the blocks run.

    Also remembers which block is running and on what input, to name it if it raises.
    """

    def __init__(self, model: IdmzooModel, sites: dict[nn.Module, tuple[Site, tuple[int, ...]]]) -> None:
        self.model, self.sites = model, sites
        self.block, self.input = "a block", ""

    def enter(self, block: str, input_shape: Sequence[int]) -> None:
        self.block, self.input = block, format_shape(input_shape)

    def before(self, module: nn.Module, args: Any) -> None:
        if module in self.sites:
            site = self.sites[module][0]
            self.enter(_describe(self.model, site.kind, site.path), args[0].shape)

    def after(self, module: nn.Module, args: Any, output: Any) -> None:
        if module in self.sites:
            site, expected = self.sites[module]
            where = _describe(self.model, site.kind, site.path)
        else:
            where, expected = f"the norm inside the {self.block}", tuple(args[0].shape)
        got = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        if got != expected:
            found = format_shape(got) if got is not None else type(output).__name__
            raise BlockBuildError(
                f"{where} returned {found} for an input of {format_shape(args[0].shape)}, but the "
                f"layout expects {format_shape(expected)}"
            )

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Hook every site and every norm of the model for the duration of the body."""
        handles = []
        for module in self.model.modules():
            if module in self.sites or getattr(module, "idmzoo_kind", None) == "norm":
                handles.append(module.register_forward_pre_hook(self.before))
                handles.append(module.register_forward_hook(self.after))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def run(self, module: nn.Module, *args: Any) -> Any:
        """Run ``module`` on meta inputs; a failure other than ours names the block that raised."""
        try:
            return _on_meta(module, *args)
        except IdmzooError:
            raise
        except Exception as err:
            raise BlockBuildError(
                f"{self.block} raised {type(err).__name__} on a dummy meta-device input of "
                f"{self.input}: {err}. If the block cannot run on the meta device, build with "
                f"check_shapes=False"
            ) from err


def check_block_shapes(model: IdmzooModel) -> None:
    """Verify that every block of ``model`` maps the layout's input shape to its output shape.

    Runs each ``TimestepEmbedSequential`` group of the layout (and the encoder's pool
    head) once on the meta device, so the cost does not depend on the model's size.

    Args:
        model: a freshly built model.

    Raises:
        BlockBuildError: naming the block (kind, registered name, package, module path)
            whose output shape differs from the layout's, or that raised on its input, or
            the path the model family built no module at.
    """
    layout, geometry = model.layout, _Geometry(model)
    groups = [*layout.input_blocks, layout.middle_block, *layout.output_blocks]
    sites: dict[nn.Module, tuple[Site, tuple[int, ...]]] = {}
    for site in (site for group in groups for site in group):
        try:
            module = model.get_submodule(site.path)
        except AttributeError as err:
            raise BlockBuildError(
                f"model family {model.spec.family.type!r} built no module at {site.path}, where "
                f"its layout puts a {site.kind} block"
            ) from err
        sites[module] = (site, geometry.output(site))
    emb = torch.empty(_BATCH, model.maker.ctx.emb_channels, device="meta")
    tracker, features = _Tracker(model, sites), []
    with tracker.attached():
        for group in groups:
            first = group[0]
            x = torch.empty(geometry.activation(first.channels, first.ds), device="meta")
            features.append(tracker.run(model.get_submodule(first.path.rpartition(".")[0]), x, emb))
        del features[len(layout.input_blocks) + 1 :]  # the encoder path and the bottleneck
        for path, head in model.named_modules():
            if getattr(head, "idmzoo_kind", None) == "pool":
                _check_head(tracker, head, path, features)


def _check_head(tracker: _Tracker, head: nn.Module, path: str, features: list[torch.Tensor]) -> None:
    """The pool head maps the bottleneck and the encoder features to ``[N, out_channels]``."""
    where = _describe(tracker.model, "pool", path)
    tracker.enter(where, features[-1].shape)
    out = tracker.run(head, features[-1], features)
    expected = (_BATCH, tracker.model.spec.out_channels)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        found = format_shape(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BlockBuildError(
            f"{where} returned {found} for a bottleneck of {format_shape(features[-1].shape)}, but "
            f"the model's output is {format_shape(expected)}"
        )
