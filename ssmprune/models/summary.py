"""What ``ssmprune info`` reports about a model."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn


def describe(model: nn.Module) -> dict[str, Any]:
    """Parameters, FLOPs (the paper's convention), tokens per block, input shape."""
    flops = model.flops()
    return {
        "model": getattr(model, "model_name", type(model).__name__),
        "family": model.family,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": flops,
        "gflops": round(flops / 1e9, 4),
        "tokens_per_block": model.tokens_per_block(),
        "input_shape": list(model.input_shape()),
        "config": _plain(dataclasses.asdict(model.config)),
        "prune": _plain(dataclasses.asdict(model.prune)) if getattr(model, "prune", None) else None,
    }


def _plain(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def compress_runs(values: list[int]) -> str:
    """[197, 197, 157] -> '197 x2, 157 x1'."""
    runs: list[list[int]] = []
    for v in values:
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return ", ".join(f"{v} x{n}" for v, n in runs)
