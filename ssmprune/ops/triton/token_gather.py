"""Triton kernel of ``ssmprune::token_gather`` and its host launcher.

Dimension glossary (as in ``ssmprune.ops.token_gather``):
    b  batch
    m  tokens before the gather
    k  unprotected tokens kept
    k' k + 1 when a token is protected, else k
    c  elements of one token's row in a gathered tensor (its trailing dims flattened)

Kernel layout: one launch does the selection and every gather. The grid is
(batch element, block of BLOCK_C row elements). Each program ranks the m
tokens of its batch element itself, so programs never wait for one another:
the ranking costs O(m^2) comparisons, cheap next to moving the rows for the
token counts of vision models (m about 200). A token's rank is the number of
tokens that beat it (a higher score, or the same score and an earlier index:
the stable-sort rule of the reference); it is kept when its rank is below k.
Its output slot is the count of kept tokens before it (a cumulative sum, so
the original order is kept), moved one up at and after ``insert_at`` to make
room for the protected token. The program then copies its BLOCK_C slice of
that token's row of every tensor to the slot: a scatter of the kept rows, so
no index tensor goes through memory. Program (b, 0) also writes the kept
positions.

Several tensors, of any dtypes and row lengths, travel as tuples of pointers
in the same launch (Triton specialises the kernel on the tuple length).
"""

from __future__ import annotations

from typing import Optional

import triton
import triton.language as tl
from torch import Tensor

from ssmprune.ops.token_gather import _check
from ssmprune.ops.triton.runtime import ADD, COMPILE_OPTIONS, Kernel, Launch, interpreting


def _token_gather_kernel(
    scores_ptr, positions_ptr, srcs,
    m, k, protect, insert_at, num_out,
    ss_b, ss_m, sp_b, sp_m, src_strides_b, src_strides_m, row_sizes,
    out_positions_ptr, dsts,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Writes the kept positions (b k') and every gathered tensor (b k' c).

    ``srcs``, ``dsts``, ``src_strides_*`` and ``row_sizes`` are tuples with one
    entry per tensor; ``s*`` are strides; outputs are contiguous. ``protect`` is
    -1 when no token is protected, and then ``insert_at`` is k, which no free
    token's slot reaches. Argument order follows TensorRT's AOT launch
    contract: inputs, integer scalars, outputs, then compile-time constants.
    """
    pid_b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    kept_before = tl.full((), 0, tl.int32)
    for i0 in tl.range(0, m, BLOCK_M):
        offs_i = i0 + tl.arange(0, BLOCK_M)
        in_i = offs_i < m
        s_i = tl.load(scores_ptr + pid_b * ss_b + offs_i * ss_m, mask=in_i, other=0.0)
        s_i = s_i.to(tl.float32)
        nan_i = s_i != s_i
        rank = tl.full((BLOCK_M,), 0, tl.int32)
        for j0 in tl.range(0, m, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            free_j = (offs_j < m) & (offs_j != protect)
            s_j = tl.load(scores_ptr + pid_b * ss_b + offs_j * ss_m, mask=free_j, other=0.0)
            s_j = s_j.to(tl.float32)
            nan_j = s_j != s_j
            # NaN ranks above every number, as in torch.sort's descending order.
            higher = (s_j[None, :] > s_i[:, None]) | (nan_j[None, :] & ~nan_i[:, None])
            same = (s_j[None, :] == s_i[:, None]) | (nan_j[None, :] & nan_i[:, None])
            beats = higher | (same & (offs_j[None, :] < offs_i[:, None]))
            rank += tl.reduce((beats & free_j[None, :]).to(tl.int32), 1, ADD)
        is_protected = offs_i == protect
        kept = in_i & (rank < k) & ~is_protected
        kept_int = kept.to(tl.int32)
        slot = kept_before + tl.associative_scan(kept_int, 0, ADD) - kept_int
        slot += (slot >= insert_at).to(tl.int32)
        slot = tl.where(is_protected, insert_at, slot)
        moved = kept | is_protected
        kept_before += tl.reduce(kept_int, 0, ADD)

        if tl.program_id(1) == 0:
            pos = tl.load(positions_ptr + pid_b * sp_b + offs_i * sp_m, mask=moved)
            tl.store(out_positions_ptr + pid_b * num_out + slot, pos, mask=moved)
        for t in tl.static_range(len(srcs)):
            row = row_sizes[t]
            mask = moved[:, None] & (offs_c < row)[None, :]
            src = srcs[t] + pid_b * src_strides_b[t] + offs_i[:, None] * src_strides_m[t]
            vals = tl.load(src + offs_c[None, :], mask=mask)
            dst = dsts[t] + (pid_b * num_out + slot[:, None]) * row
            tl.store(dst + offs_c[None, :], vals, mask=mask)


KERNEL = Kernel(_token_gather_kernel)

# Token blocks of the ranking: BLOCK_M tokens ranked at once against BLOCK_J
# others, a (BLOCK_M, BLOCK_J) comparison tile. Row elements per program:
# BLOCK_C. Not yet tuned on a GPU.
BLOCK_M = 64
BLOCK_J = 32
BLOCK_C_CUDA = 256
NUM_WARPS_CUDA = 4
# The interpreter's cost is per program and per operation: one program per
# batch element where possible.
BLOCK_C_INTERPRETED = 1024


def _rows(t: Tensor) -> Tensor:
    """t (b m ...) as (b m c) with contiguous rows (a view when possible)."""
    rows = t.reshape(t.shape[0], t.shape[1], -1)
    return rows if rows.stride(2) == 1 or rows.shape[2] <= 1 else rows.contiguous()


def token_gather_launch(scores: Tensor, positions: Tensor, rows: list[Tensor], k: int,
                        protect: int, insert_at: int, out_positions: Tensor,
                        outs: list[Tensor], *, block_c: int = BLOCK_C_CUDA) -> Launch:
    """The launch that writes the kept positions into ``out_positions`` (b k')
    and the gathered ``rows`` (each (b m c), unit stride along c) into ``outs``
    (each contiguous, (b k' ...) with c elements per token).

    Arguments are not checked here; ``block_c`` is a power of two, the row
    elements per program (clipped to the widest row's next power of two).
    """
    b, m = scores.shape
    widest = max((r.shape[2] for r in rows), default=1)
    block_c = min(block_c, triton.next_power_of_2(max(widest, 1)))
    return Launch(
        kernel=KERNEL,
        grid=(b, max(1, triton.cdiv(widest, block_c))),
        args=(
            scores, positions, tuple(rows),
            m, k, protect, insert_at if protect >= 0 else k, out_positions.shape[1],
            *scores.stride(), *positions.stride(),
            tuple(r.stride(0) for r in rows), tuple(r.stride(1) for r in rows),
            tuple(r.shape[2] for r in rows),
            out_positions, tuple(outs),
        ),
        kwargs=dict(
            BLOCK_M=min(BLOCK_M, triton.next_power_of_2(m)),
            BLOCK_J=min(BLOCK_J, triton.next_power_of_2(m)),
            BLOCK_C=block_c, num_warps=NUM_WARPS_CUDA, **COMPILE_OPTIONS,
        ),
    )


def token_gather(scores: Tensor, positions: Tensor, tensors: list[Tensor], k: int,
                 protect: int = -1, insert_at: int = 0, *,
                 block_c: Optional[int] = None) -> list[Tensor]:
    """Run the Triton token gather; same contract as ``token_gather_ref``.

    scores: (b m) float; positions: (b m) int64; tensors: each (b m ...), any
    dtype. CUDA tensors, or CPU tensors under TRITON_INTERPRET=1. Returns
    [positions (b k') int64, *tensors gathered to (b k' ...)], all contiguous.
    ``block_c`` (a power of two) overrides the row elements per program.
    """
    _check(scores, positions, tensors, k, protect, insert_at)
    b = scores.shape[0]
    num_out = k + (1 if protect >= 0 else 0)
    out_positions = positions.new_empty((b, num_out))
    outs = [t.new_empty((b, num_out) + tuple(t.shape[2:])) for t in tensors]
    if b == 0:
        return [out_positions, *outs]
    if block_c is None:
        block_c = BLOCK_C_INTERPRETED if interpreting() else BLOCK_C_CUDA
    token_gather_launch(scores, positions, [_rows(t) for t in tensors], k, protect, insert_at,
                        out_positions, outs, block_c=block_c).run(scores.device)
    return [out_positions, *outs]
