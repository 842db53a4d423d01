"""The idmzoo zoo in timm's model registry: ``timm.create_model("idm_cifar10_uncond")``.

Importing this module (``import idmzoo_timm`` does) registers one timm entry point per
zoo entry, named like it.  As in timm's own model modules, each entry point is also an
attribute of this module, and timm's ``register_model`` adds its name to ``__all__``.
``pretrained=True`` loads a published checkpoint exactly as ``idmzoo.create(name,
pretrained=True)`` does (downloaded into idmzoo's cache, verified, loaded strictly); a
checkpoint with no direct link raises :class:`NoPretrainedWeightsError`, saying where to
get it by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn
from timm.models import register_model

import idmzoo
from idmzoo import ManualDownloadError, ZooEntry

__all__ = ["NoPretrainedWeightsError"]


class NoPretrainedWeightsError(ManualDownloadError, RuntimeError):
    """``pretrained=True`` for a checkpoint that must be downloaded by hand (e.g. from Google Drive)."""


def _entry_point(entry: ZooEntry) -> Callable[..., nn.Module]:
    def create(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: Any = None,
        cache_dir: Any = None,
        **overrides: Any,
    ) -> nn.Module:
        # timm passes pretrained_cfg, pretrained_cfg_overlay and cache_dir to every entry
        # point; the weights come from idmzoo's catalogue and cache, which they do not describe.
        try:
            return idmzoo.create(entry.name, pretrained=pretrained, **overrides)
        except ManualDownloadError as err:
            raise NoPretrainedWeightsError(
                f"{err} Or load a checkpoint yourself: model = idmzoo.load_checkpoint("
                f"timm.create_model({entry.name!r}, device='meta'), 'path/to/{entry.checkpoints[0]}')"
            ) from err

    create.__name__ = create.__qualname__ = entry.name
    create.__module__ = __name__
    create.__doc__ = (
        f"{entry.description} ({entry.library}, {entry.param_count:,} parameters).\n\n"
        "Keyword arguments are idmzoo spec fields (validated) or ``device``/``checkpointing``/"
        "``checkpoint``; see :func:`idmzoo.create`."
    )
    return create


def _register_zoo_models() -> None:
    """Register every zoo entry in timm's model registry (once: on import)."""
    for entry in idmzoo.list_models():
        globals()[entry.name] = register_model(_entry_point(entry))


_register_zoo_models()
