"""Token importance from a mixer's output (PAPER.md, "Semantics this project adopts")."""

from __future__ import annotations

from torch import Tensor


def token_importance(y: Tensor, kind: str) -> Tensor:
    """y: (b m d) mixer output before out_proj, aligned to token positions -> (b m) fp32.

    ``clip`` is the paper's metric, sum_d max(0, y); ``l1`` and ``l2`` are the
    ablation alternatives.
    """
    y = y.float()
    if kind == "clip":
        return y.clamp_min(0).sum(-1)
    if kind == "l1":
        return y.abs().sum(-1)
    if kind == "l2":
        return y.square().sum(-1).sqrt()
    raise ValueError(f"unknown importance {kind!r}")
