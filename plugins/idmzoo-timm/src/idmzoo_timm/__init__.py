"""idmzoo-timm: timm's norms and activations as idmzoo blocks, and the idmzoo zoo in timm.

* Blocks: ``timm_<name>`` norms for every name of ``timm.layers.get_norm_layer`` and the
  ``timm_act_resblock`` residual block; idmzoo registers them through the
  ``idmzoo.blocks`` entry point, so a spec can name them without importing this package.
* Models: importing this package registers every zoo entry in timm, so
  ``timm.create_model("adm_imagenet256_cond")`` and ``timm.list_models("adm_*")`` work.

See ``docs/timm.md``.
"""

from __future__ import annotations

from .blocks import register_timm_blocks
from .models import NoPretrainedWeightsError

__all__ = ["NoPretrainedWeightsError", "register_timm_blocks"]
