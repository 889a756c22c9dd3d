"""One assertion helper of the numerical tests (``from numerics import max_rel_error``): a
module of its own, since ``from conftest import ...`` finds whichever conftest.py (tests/,
tests/measure/, tests/ship/, ...) was imported first."""

import torch


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to the largest |expected| (0 for empty)."""
    if expected.numel() == 0:
        return 0.0
    scale = expected.float().abs().max().clamp_min(1e-12)
    return ((actual.float() - expected.float()).abs().max() / scale).item()
