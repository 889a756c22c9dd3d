"""Reference models: registry, construction and checkpoint loading."""

from __future__ import annotations

from typing import Any, Union

from torch import nn

from ssmprune.models import vim  # noqa: F401  (registers the Vim family)
from ssmprune.models import plainmamba  # noqa: F401, I001  (registers PlainMamba)
from ssmprune.models import digits  # noqa: F401, I001  (the embedded digits models)
from ssmprune.models.checkpoint import load_checkpoint, save_checkpoint
from ssmprune.models.registry import get_entry, model_names
from ssmprune.pruning.config import PruneConfig, resolve

__all__ = ["create_model", "load_checkpoint", "save_checkpoint", "model_names"]


def create_model(name: str, prune: Union[None, str, PruneConfig] = None,
                 **overrides: Any) -> nn.Module:
    """Build a registered model with its default (random) init, in eval mode.

    ``prune`` is a PruneConfig or a preset name (``vim_s_paper``, ...); a
    pruned model has the dense model's parameters, so the same checkpoints
    load. ``overrides`` replace config fields (``img_size``, ``embed_dim``,
    ``depth``, ``num_classes``, ``in_chans``, ...); unknown names raise
    ConfigError, and so does a size with more patches than
    ``ssmprune.limits.MAX_TOKENS``, before anything is built.
    """
    entry = get_entry(name)
    cfg = entry.config(**overrides)
    model = entry.family.model_cls(cfg, prune=resolve(prune, name))
    model.model_name = name
    return model.eval()
