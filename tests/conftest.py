"""Shared test settings: deterministic hypothesis profile, one assertion helper."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ssmprune", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ssmprune"))
torch.set_num_threads(1)


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to the largest |expected| (0 for empty)."""
    if expected.numel() == 0:
        return 0.0
    scale = expected.float().abs().max().clamp_min(1e-12)
    return ((actual.float() - expected.float()).abs().max() / scale).item()
