"""The token gather op: one contract, its reference, its fake.

Dimension glossary:
    b  batch
    m  tokens before the gather
    k  unprotected tokens kept (static: from the keep ratio and input size)
    k' k + 1 when a token is protected (Vim's class token), else k

``token_gather(scores, positions, tensors, k, protect, insert_at)`` picks, per
batch element, the k highest-scoring tokens among those not protected, keeps
them in their original order, re-inserts the protected token (index
``protect`` of the input, -1 for none) at output index ``insert_at``, and
gathers every tensor of ``tensors`` (each (b m ...)) along the token axis.
It returns ``[kept_positions, *gathered]``: ``positions`` (b m) int64 are the
tokens' positions in the original, unpruned sequence, gathered the same way,
so the next scans can compute their gaps. Ties in the scores go to the earlier
token.
"""

from __future__ import annotations

import torch
from torch import Tensor

OP_NAME = "ssmprune::token_gather"
ONNX_OP_TYPE = "TokenGather"


def _check(scores: Tensor, positions: Tensor, tensors: list[Tensor], k: int, protect: int,
           insert_at: int) -> None:
    if scores.dim() != 2:
        raise ValueError(f"token_gather: scores must be (batch, tokens), got {tuple(scores.shape)}")
    b, m = scores.shape
    if tuple(positions.shape) != (b, m):
        raise ValueError(f"token_gather: positions must be {(b, m)}, got {tuple(positions.shape)}")
    for t in tensors:
        if tuple(t.shape[:2]) != (b, m):
            raise ValueError(f"token_gather: tensors must start with {(b, m)}, "
                             f"got {tuple(t.shape)}")
    free = m - (1 if protect >= 0 else 0)
    if not 1 <= k <= free:
        raise ValueError(f"token_gather: k={k} must be in [1, {free}]")
    if protect >= m:
        raise ValueError(f"token_gather: protect={protect} is not a token index (m={m})")
    if protect >= 0 and not 0 <= insert_at <= k:
        raise ValueError(f"token_gather: insert_at={insert_at} must be in [0, {k}]")


def kept_indices(scores: Tensor, k: int, protect: int, insert_at: int) -> Tensor:
    """(b m) scores -> (b k') int64 input indices of the kept tokens, in output order."""
    s = scores.float()
    if protect >= 0:
        # Rank the free tokens only: a sentinel score for the protected one
        # could tie with free tokens scoring -inf.
        s = torch.cat((s[:, :protect], s[:, protect + 1:]), dim=1)
    # A stable sort makes ties deterministic (earlier token first), unlike topk.
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    idx = torch.sort(order, dim=1).values
    if protect >= 0:
        idx = idx + (idx >= protect).long()
        cls = idx.new_full((idx.shape[0], 1), protect)
        idx = torch.cat((idx[:, :insert_at], cls, idx[:, insert_at:]), dim=1)
    return idx


def gather_tokens(t: Tensor, idx: Tensor) -> Tensor:
    """t (b m ...) gathered along the token axis with idx (b k')."""
    index = idx.reshape(idx.shape + (1,) * (t.dim() - 2)).expand(idx.shape + t.shape[2:])
    return torch.gather(t, 1, index)


def token_gather_ref(scores: Tensor, positions: Tensor, tensors: list[Tensor], k: int,
                     protect: int = -1, insert_at: int = 0) -> list[Tensor]:
    """Reference implementation of the contract above."""
    _check(scores, positions, tensors, k, protect, insert_at)
    idx = kept_indices(scores, k, protect, insert_at)
    return [gather_tokens(positions, idx)] + [gather_tokens(t, idx) for t in tensors]


# The registered schema has no defaults on purpose: the dispatcher drops
# trailing arguments equal to their schema defaults (even when passed), and
# torch.library then checks the backward's six gradients against the shorter
# argument list: "RuntimeError: Expected the return from backward to be of the
# same structure as the inputs" whenever protect=-1 / insert_at=0. The defaults
# live on the public wrapper ``token_gather`` below instead.
@torch.library.custom_op(OP_NAME, mutates_args=())
def _token_gather_op(scores: Tensor, positions: Tensor, tensors: list[Tensor], k: int,
                     protect: int, insert_at: int) -> list[Tensor]:
    return token_gather_ref(scores, positions, tensors, k, protect, insert_at)


@_token_gather_op.register_fake
def _(scores, positions, tensors, k, protect, insert_at):
    _check(scores, positions, tensors, k, protect, insert_at)
    kept = k + (1 if protect >= 0 else 0)
    b = scores.shape[0]
    return [positions.new_empty(b, kept)] + [t.new_empty((b, kept) + tuple(t.shape[2:]))
                                             for t in tensors]


def token_gather(scores: Tensor, positions: Tensor, tensors: list[Tensor], k: int,
                 protect: int = -1, insert_at: int = 0) -> list[Tensor]:
    """``ssmprune::token_gather``: scores (b m) float, positions (b m) int64,
    tensors each (b m ...) any dtype. Returns [positions (b k') int64,
    *tensors gathered to (b k' ...)]. Differentiable in ``tensors``.

    Always passes all six arguments to the op (see the comment above
    ``_token_gather_op``); traced, it is one ``ssmprune::token_gather`` node.
    """
    return _token_gather_op(scores, positions, tensors, k, protect, insert_at)


def _gather_setup_context(ctx, inputs, output):
    scores, positions, tensors, k, protect, insert_at = inputs
    ctx.idx = kept_indices(scores, k, protect, insert_at)
    ctx.shapes = [t.shape for t in tensors]


def _gather_backward(ctx, grad_outputs):
    """Gradients flow to the gathered tensors (scattered back); the selection
    itself (scores, positions) is not differentiable."""
    grads = []
    for shape, g in zip(ctx.shapes, grad_outputs[1:]):
        if g is None:
            grads.append(None)
            continue
        full = g.new_zeros(shape)
        index = ctx.idx.reshape(ctx.idx.shape + (1,) * (g.dim() - 2)).expand(g.shape)
        grads.append(full.scatter(1, index, g))
    return None, None, grads, None, None, None


_token_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup_context)
