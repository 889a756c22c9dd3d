"""Alignment gaps: pruned positions between consecutive kept tokens in scan order.

A gap is counted in the original, unpruned sequence: a kept token whose
predecessor in scan order sits g positions earlier, with g - 1 pruned tokens in
between, has gap g - 1. The first token counts the pruned positions before it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gaps_from_ranks(ranks: Tensor) -> Tensor:
    """(b k) strictly increasing ranks in the unpruned scan -> (b k) int64 gaps."""
    start = torch.full_like(ranks[:, :1], -1)
    return torch.diff(ranks, dim=1, prepend=start) - 1


def vim_gaps(positions: Tensor, cls_index: int, cls_origin: int,
             num_patches: int) -> tuple[Tensor, Tensor]:
    """Gaps of both Vim scan directions.

    positions: (b k') int64 original token positions of the kept tokens, patches
    in ascending order with the class token at ``cls_index``; ``cls_origin`` is
    the class token's position in the unpruned sequence. The class token has
    gap 0 and is skipped when counting, so gaps are counted over patch indices.
    Returns (forward gaps, backward gaps), each (b k') int64, the backward ones
    in the backward branch's (flipped) order.
    """
    patches = torch.cat((positions[:, :cls_index], positions[:, cls_index + 1:]), dim=1)
    patches = patches - (patches > cls_origin).long()
    zero = torch.zeros_like(positions[:, :1])
    forward = gaps_from_ranks(patches)
    backward = gaps_from_ranks(num_patches - 1 - patches.flip(1))
    bwd_cls = positions.shape[1] - 1 - cls_index
    return (torch.cat((forward[:, :cls_index], zero, forward[:, cls_index:]), dim=1),
            torch.cat((backward[:, :bwd_cls], zero, backward[:, bwd_cls:]), dim=1))
