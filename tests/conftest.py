"""Shared test settings: deterministic hypothesis profile, slow tests first."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ssmprune", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ssmprune"))
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Real-size (``slow``) tests first, longest first: under ``-n 2 --dist worksteal``
    they start at once and the other worker takes the rest, instead of one long
    TensorRT build starting last and running alone."""
    items.sort(key=lambda item: -item.get_closest_marker("slow").kwargs.get("minutes", 0.1)
               if item.get_closest_marker("slow") else 0)
