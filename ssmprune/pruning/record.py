"""Recording which tokens a pruned model keeps, without touching the model."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class RecordKept(TorchDispatchMode):
    """Collects the kept original positions of every ``ssmprune::token_gather`` call.

    Usage: ``with RecordKept() as rec: model(x)``; then ``rec.stages`` is a list
    of (b k') int64 tensors, one per pruning point, in forward order.
    """

    def __init__(self):
        super().__init__()
        self.stages: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.ssmprune.token_gather.default:
            self.stages.append(out[0].detach().clone())
        return out
