"""Shared test settings: deterministic hypothesis profile, one thread for torch and ONNX
Runtime, slow tests first."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ssmprune", max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ssmprune"))
torch.set_num_threads(1)


def _one_onnxrt_thread() -> None:
    """ONNX Runtime sessions of the library (``parity.runners.onnxrt_session``) with one
    intra-op thread where they ask for ONNX Runtime's default (threads=0), as torch above.

    The default is a thread per core, and they spin while they wait: under ``-n 2`` on two
    cores each worker's session spins on the core the other worker computes on (an int8
    calibration of vim_digits: 51 s of CPU, 33 s with one thread). A session asked for a
    number of threads keeps it. The results are those of a one-core machine: the same
    logits up to rounding (plainmamba_digits' fp32 logits move by 5e-7 at most, vim_digits'
    and the int8 files' not at all)."""
    from ssmprune.parity import runners

    default = runners.onnxrt_options

    def onnxrt_options(threads: int = 0, optimization: str = "all"):
        return default(threads or 1, optimization)

    runners.onnxrt_options = onnxrt_options


_one_onnxrt_thread()


def pytest_collection_modifyitems(config, items):
    """Real-size (``slow``) tests first, longest first: under ``-n 2 --dist worksteal``
    they start at once and the other worker takes the rest, instead of one long
    TensorRT build starting last and running alone."""
    items.sort(key=lambda item: -item.get_closest_marker("slow").kwargs.get("minutes", 0.1)
               if item.get_closest_marker("slow") else 0)
