"""Reference models: registry, construction and checkpoint loading."""

from __future__ import annotations

from typing import Any

from torch import nn

from ssmprune.models import vim  # noqa: F401  (registers the Vim family)
from ssmprune.models import plainmamba  # noqa: F401, I001  (registers PlainMamba)
from ssmprune.models.checkpoint import load_checkpoint, save_checkpoint
from ssmprune.models.registry import get_entry, model_names

__all__ = ["create_model", "load_checkpoint", "save_checkpoint", "model_names"]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model with its default (random) init, in eval mode.

    ``overrides`` replace config fields (``img_size``, ``embed_dim``, ``depth``,
    ``num_classes``, ``in_chans``, ...); unknown names raise ConfigError.
    """
    entry = get_entry(name)
    cfg = entry.config(**overrides)
    model = entry.family.model_cls(cfg)
    model.model_name = name
    return model.eval()
