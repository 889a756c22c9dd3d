"""Side-by-side timing for the benchmark scripts: interleaved runs, medians, ratios."""

from __future__ import annotations

import platform
import statistics
import time
from datetime import date
from typing import Callable

import torch


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1) -> dict[str, float]:
    """Median milliseconds per candidate, each round running every candidate once.

    Interleaving spreads the noise of a shared machine over all candidates, so
    their ratios hold even when absolute times drift.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"{date.today().isoformat()}")
