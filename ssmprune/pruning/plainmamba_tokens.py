"""PlainMamba's four zig-zag scans restricted to the tokens a pruned layer keeps.

After a pruning point each sample keeps its own set of m tokens of the h x w
grid, held in raster order with their original raster positions (b, m). The
scans of the following layers visit exactly those tokens, per sample:

* order: the kept tokens sorted by their rank in that direction's FULL
  zig-zag order, so the relative order of any two kept tokens is the dense one;
* direction code (the ``direction_Bs`` row): each kept token keeps the code of
  the move into it in the full order, even where its predecessor was pruned
  (the kept token then did not "arrive" by that move). The alternative,
  recomputing a move from the kept predecessor, gives codes for jumps that are
  no unit move and that the trained rows never saw; keeping the full-order code
  keeps every token's code what it was in the dense model, and the first kept
  token keeps its code too (START only if it is the full order's first);
* gap: the number of pruned positions between a kept token and the previous
  kept one in that direction's full order (PAPER.md, alignment).

The 2D depthwise convolution sees the kept tokens scattered back onto the full
grid, zeros at the pruned positions, and its output is read at the kept ones.

Everything is batched gathers, scatters and sorts over static shapes (no loop
over samples, no data-dependent shape), so the pruned model goes through
``torch.export``.

Dimension glossary: k scan directions (4), b batch, l = h * w grid tokens,
m kept tokens, c channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ssmprune.pruning.gaps import gaps_from_ranks


@dataclass(frozen=True)
class TokenScans:
    """The scans over the tokens one layer sees, per sample.

    positions: (b, m) int64 raster positions of the tokens, ascending, or None
        when the layer sees the whole grid in raster order (dense).
    orders: (k, b, m) int64; ``orders[k, i, t]`` is the index (into the m
        tokens of sample i) of the t-th token of scan k.
    inverse: (k, b, m) int64; ``inverse[k, i, j]`` is the scan-k position of
        token j, so ``orders`` gathered with ``inverse`` is ``arange(m)``.
    directions: (k, b, m) int64 ``direction_Bs`` rows, by scan position.
    gaps: (k, b, m) int64 alignment gaps by scan position, or None.
    """

    positions: Optional[Tensor]
    orders: Tensor
    inverse: Tensor
    directions: Tensor
    gaps: Optional[Tensor]


def dense_scans(orders: Tensor, inverse: Tensor, directions: Tensor, batch: int) -> TokenScans:
    """The full zig-zag scans (each (k, l) int64) for every sample of a batch."""
    k, l = orders.shape
    return TokenScans(None, orders[:, None].expand(k, batch, l),
                      inverse[:, None].expand(k, batch, l),
                      directions[:, None].expand(k, batch, l), None)


def restrict_scans(positions: Tensor, inverse: Tensor, directions: Tensor,
                   with_gaps: bool) -> TokenScans:
    """The scans restricted to the kept tokens (module docstring).

    positions: (b, m) int64 ascending raster positions of the kept tokens;
    inverse, directions: (k, l) int64 of the full grid (``ZigzagOrders``).
    """
    k = inverse.shape[0]
    b, m = positions.shape
    ranks = inverse[:, positions]  # (k, b, m): full-order rank of each kept token
    sorted_ranks, orders = ranks.sort(dim=-1)
    steps = torch.arange(m, device=positions.device).expand(k, b, m)
    inverse_kept = torch.zeros_like(orders).scatter(-1, orders, steps)
    codes = directions[:, None].expand(k, b, directions.shape[1]).gather(-1, sorted_ranks)
    gaps = gaps_from_ranks(sorted_ranks.reshape(k * b, m)).view(k, b, m) if with_gaps else None
    return TokenScans(positions, orders, inverse_kept, codes, gaps)


def tokens_to_grid(x: Tensor, positions: Optional[Tensor], hw_shape: tuple[int, int]) -> Tensor:
    """x: (b, m, c) tokens -> (b, c, h, w), zeros where no token is kept.

    ``positions`` (b, m) int64 raster positions, or None for the whole grid.
    """
    b, m, c = x.shape
    h, w = hw_shape
    if positions is not None:
        index = positions[:, :, None].expand(b, m, c)
        x = x.new_zeros(b, h * w, c).scatter(1, index, x)
    return x.transpose(1, 2).reshape(b, c, h, w)


def grid_to_tokens(grid: Tensor, positions: Optional[Tensor]) -> Tensor:
    """grid: (b, c, h, w) -> (b, m, c) read at ``positions`` (b, m), or all of it."""
    b, c = grid.shape[:2]
    x = grid.flatten(2).transpose(1, 2)
    if positions is None:
        return x
    return x.gather(1, positions[:, :, None].expand(b, positions.shape[1], c))
