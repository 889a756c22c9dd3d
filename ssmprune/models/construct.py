"""A ready model from (name, checkpoint, seed, pruning): what every command builds.

The exporter, ``run``, ``visualize`` and the measurement commands all start
here, so the model a manifest records is rebuilt the same way everywhere.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ssmprune.models import create_model, load_checkpoint
from ssmprune.models.digits import embedded_weights

DEFAULT_SEED = 0


def build_model(name: str, checkpoint: Optional[str] = None, seed: int = DEFAULT_SEED,
                **overrides) -> tuple[nn.Module, str]:
    """A model with a checkpoint's weights, the embedded weights of a digits model
    when no checkpoint is given, or else seeded random weights.

    ``overrides`` go to ``create_model`` (``prune=``, ``img_size=``, ...).
    Returns the model in eval mode and a short description of its weights.
    """
    torch.manual_seed(seed)
    model = create_model(name, **overrides)
    if checkpoint is None:
        checkpoint = embedded_weights(name)
        if checkpoint is None:
            return model, f"seeded random weights (seed {seed}): no pretrained checkpoint given"
        load_checkpoint(model, checkpoint)
        return model, f"embedded weights {checkpoint.name} (trained on scikit-learn digits)"
    load_checkpoint(model, checkpoint)
    return model, f"weights from {checkpoint}"
