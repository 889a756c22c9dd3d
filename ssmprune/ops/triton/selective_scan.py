"""Triton kernel of ``ssmprune::selective_scan`` and its host launcher.

Dimension glossary (as in ``ssmprune.ops.selective_scan``):
    b  batch
    d  d_inner, the channel count
    l  sequence length in scan order
    n  state size d_state

Kernel layout: one program per (batch element, block of BLOCK_D channels). The
program keeps its state h, a (BLOCK_D, BLOCK_N) fp32 tile, in registers and
walks the sequence in chunks of BLOCK_L tokens: the outer loop over chunks
carries h, the inner loop is unrolled, so the loads of a whole chunk do not
depend on h and can be issued ahead of the recurrence. Every input is read
through its own strides and upcast to fp32; the output has u's dtype.

Optional inputs (D, z, delta_bias, gap) are switched off by compile-time flags
(HAS_D, ...), never by passing None: Triton folds a None argument into a
constant and drops it from the compiled entry, which would shift every later
argument of TensorRT's ahead-of-time launch (it passes all nine input pointers
of the node). An absent input's pointer slot holds u, with zero strides, and is
never read.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ssmprune.ops.selective_scan import _check_shapes
from ssmprune.ops.triton.runtime import ADD, COMPILE_OPTIONS, Kernel, Launch, interpreting


def _selective_scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gap_ptr,
    d_inner, L,
    su_b, su_d, su_l, sdt_b, sdt_d, sdt_l, sA_d, sA_n,
    sB_b, sB_n, sB_l, sC_b, sC_n, sC_l, sD, sz_b, sz_d, sz_l, sbias, sgap_b, sgap_l,
    so_b, so_d, so_l,
    out_ptr,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_GAP: tl.constexpr,
):
    """Writes y (b d l) for the inputs of ``selective_scan``; ``s*`` are the
    strides of the tensor they name, ``N`` the state size, BLOCK_N its next
    power of two; ``HAS_*`` say which optional inputs are present (an absent
one's pointer is a placeholder that is never read). Argument order follows
    TensorRT's AOT launch contract: inputs, integer scalars, outputs, then
    compile-time constants.
    """
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d_inner

    # Padded channels and states read A = 0 and zero inputs: their state stays 0.
    A = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n,
                mask=mask_d[:, None] & (offs_n < N)[None, :], other=0.0).to(tl.float32)
    bias = tl.full((BLOCK_D,), 0.0, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * sbias, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_GAP:
        # The step of a pruned token: softplus(delta_bias), as the reference (so
        # softplus(0) = log 2 when there is no bias but softplus is on).
        dt0 = bias
        if DELTA_SOFTPLUS:
            dt0 = tl.maximum(bias, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(bias)))
    if HAS_D:
        D = tl.load(D_ptr + offs_d * sD, mask=mask_d, other=0.0).to(tl.float32)

    u_row = u_ptr + pid_b * su_b + offs_d * su_d
    dt_row = delta_ptr + pid_b * sdt_b + offs_d * sdt_d
    out_row = out_ptr + pid_b * so_b + offs_d * so_d
    B_col = B_ptr + pid_b * sB_b + offs_n * sB_n
    C_col = C_ptr + pid_b * sC_b + offs_n * sC_n

    h = tl.full((BLOCK_D, BLOCK_N), 0.0, tl.float32)
    for l0 in tl.range(0, L, BLOCK_L):
        for i in tl.static_range(BLOCK_L):
            # Past L the bounds drop to 0 and mask every load and store of the
            # step; such steps only touch the state after the last output, so
            # the recurrence needs no mask of its own. (Bounds rather than
            # `mask_d & (t < L)`: the 3.9 interpreter turns that into an int32
            # mask, which its loads reject.)
            t = l0 + i
            in_l = t < L
            m_d = offs_d < tl.where(in_l, d_inner, 0)
            m_n = offs_n < tl.where(in_l, N, 0)
            u = tl.load(u_row + t * su_l, mask=m_d, other=0.0).to(tl.float32)
            dt = tl.load(dt_row + t * sdt_l, mask=m_d, other=0.0).to(tl.float32) + bias
            if DELTA_SOFTPLUS:
                # softplus as max(x, 0) + log(1 + exp(-|x|)): exp never
                # overflows; log(1 + e) for tiny e is off by less than 1e-7 in
                # absolute terms (where torch uses log1p), far inside the
                # tolerances; above 17 it rounds to x, as torch's threshold does.
                dt = tl.maximum(dt, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(dt)))
            decay_dt = dt
            if HAS_GAP:
                g = tl.load(gap_ptr + pid_b * sgap_b + t * sgap_l, mask=in_l, other=0)
                decay_dt = dt + g.to(tl.float32) * dt0
            Bt = tl.load(B_col + t * sB_l, mask=m_n, other=0.0).to(tl.float32)
            Ct = tl.load(C_col + t * sC_l, mask=m_n, other=0.0).to(tl.float32)
            h = tl.exp(decay_dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.reduce(h * Ct[None, :], 1, ADD)
            if HAS_D:
                y += D * u
            if HAS_Z:
                z = tl.load(z_ptr + pid_b * sz_b + offs_d * sz_d + t * sz_l,
                            mask=m_d, other=0.0).to(tl.float32)
                y *= z / (1.0 + tl.exp(-z))
            tl.store(out_row + t * so_l, y.to(out_ptr.dtype.element_ty), mask=m_d)


KERNEL = Kernel(_selective_scan_kernel)

# Launch configuration. Compiled: small channel blocks, so a batch-1 Vim-S scan
# (d_inner 768) still spreads over about a hundred programs. Interpreted: the
# cost is per program and per operation, not per element, so fewer, larger
# blocks run much faster. Not yet tuned on a GPU.
BLOCK_D_CUDA = 8
NUM_WARPS_CUDA = 1
BLOCK_D_INTERPRETED = 64
BLOCK_L = 8


def _present(t: Optional[Tensor], placeholder: Tensor, ndim: int
             ) -> tuple[Tensor, tuple[int, ...]]:
    """(the tensor for a pointer slot, its strides): ``t`` itself, or for an
    absent input the placeholder with zero strides."""
    return (t, tuple(t.stride())) if t is not None else (placeholder, (0,) * ndim)


def selective_scan_launch(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
    z: Optional[Tensor], delta_bias: Optional[Tensor], gap: Optional[Tensor],
    delta_softplus: bool, out: Tensor, *, block_d: int = BLOCK_D_CUDA,
) -> Launch:
    """The launch that writes the scan of the given inputs into ``out`` (b d l).

    Shapes as in ``selective_scan``, not checked here; ``block_d`` is a power of
    two, the channels per program (clipped to d's next power of two).
    """
    b, d, l = u.shape
    n = A.shape[1]
    block_d = min(block_d, triton.next_power_of_2(d))
    (D_, sD), (z_, sz), (bias_, sbias), (gap_, sgap) = (
        _present(t, u, ndim) for t, ndim in ((D, 1), (z, 3), (delta_bias, 1), (gap, 2)))
    return Launch(
        kernel=KERNEL,
        grid=(b, triton.cdiv(d, block_d)),
        args=(
            u, delta, A, B, C, D_, z_, bias_, gap_,
            d, l,
            *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
            *sD, *sz, *sbias, *sgap,
            *out.stride(),
            out,
        ),
        kwargs=dict(
            N=n, BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(n), BLOCK_L=BLOCK_L,
            DELTA_SOFTPLUS=bool(delta_softplus), HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, HAS_GAP=gap is not None,
            num_warps=NUM_WARPS_CUDA, **COMPILE_OPTIONS,
        ),
    )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    z: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    gap: Optional[Tensor] = None,
    delta_softplus: bool = False,
    *,
    block_d: Optional[int] = None,
) -> Tensor:
    """Run the Triton selective scan; same contract as ``selective_scan_ref``.

    u, delta, z: (b d l) fp32/fp16/bf16; A: (d n); B, C: (b n l); D,
    delta_bias: (d); gap: (b l) int32/int64 or None. Any strides. CUDA tensors,
    or CPU tensors under TRITON_INTERPRET=1. Returns y: (b d l), u's dtype,
    contiguous. ``block_d`` (a power of two) overrides the channels per program.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, gap)
    out = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    if out.numel() == 0:
        return out
    if block_d is None:
        block_d = BLOCK_D_INTERPRETED if interpreting() else BLOCK_D_CUDA
    selective_scan_launch(u, delta, A, B, C, D, z, delta_bias, gap, delta_softplus, out,
                          block_d=block_d).run(u.device)
    return out
