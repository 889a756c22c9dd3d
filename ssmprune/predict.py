"""Running the PyTorch reference model: weights, timing, top-k."""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import Tensor, nn

from ssmprune.models import create_model, load_checkpoint

DEFAULT_SEED = 0


def build_model(name: str, checkpoint: Optional[str] = None, seed: int = DEFAULT_SEED,
                **overrides) -> tuple[nn.Module, str]:
    """A model with a checkpoint's weights, or seeded random weights.

    Returns the model in eval mode and a short description of its weights.
    """
    torch.manual_seed(seed)
    model = create_model(name, **overrides)
    if checkpoint is None:
        return model, f"seeded random weights (seed {seed}): no pretrained checkpoint given"
    load_checkpoint(model, checkpoint)
    return model, f"weights from {checkpoint}"


@torch.inference_mode()
def timed_forward(model: nn.Module, x: Tensor, repeats: int = 3) -> tuple[Tensor, list[float]]:
    """Run ``model(x)`` once to warm up, then ``repeats`` times; latencies in ms."""
    logits = model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        logits = model(x)
        times.append((time.perf_counter() - start) * 1e3)
    return logits, times


def top_k(logits: Tensor, k: int = 5) -> list[list[tuple[int, float]]]:
    """Per sample, the k best (class index, probability) pairs."""
    probs = logits.float().softmax(-1)
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
