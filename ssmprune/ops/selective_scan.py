"""The selective scan op: one contract, its reference forms and its fake.

Dimension glossary (mamba_ssm / Mamba paper names):
    b  batch
    d  d_inner, the expanded channel count (E in the paper)
    l  sequence length in scan order (kept tokens only when pruned)
    n  state size d_state (N in the paper)

Semantics (PAPER.md, "Selective scan" and "Semantics this project adopts"):
    dt_t   = softplus(delta_t + delta_bias)            if delta_softplus
    dt0    = softplus(delta_bias)                       default step of a pruned token
    h_t    = exp((dt_t + gap_t * dt0) * A) * h_{t-1} + dt_t * B_t * u_t
    y_t    = C_t . h_t + D * u_t ;   y_t *= silu(z_t)   if z is given
The state is kept in fp32 whatever the input dtype; the output has u's dtype.
``gap`` counts the pruned positions between a token and the previous kept one:
with gap all zeros (or None) this is the ordinary mamba_ssm selective scan.

Two PyTorch forms live here: ``selective_scan_ref``, the sequential oracle,
and ``selective_scan_chunked``, the chunked vectorised form (the blueprint of
the ONNX body). On CPU the torch custom op ``ssmprune::selective_scan`` runs
the fused C kernel of ``cpu_kernel`` when it can be built, else the chunked
form; its fake implementation lets ``torch.export`` keep it as one node.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmprune.ops import cpu_kernel

OP_NAME = "ssmprune::selective_scan"
ONNX_OP_TYPE = "SelectiveScan"


def _prepare(u, delta, A, B, C, D, z, delta_bias, gap, delta_softplus):
    """Upcast to fp32 and compute the input step dt and the decay step.

    Returns u, dt, decay_dt (b d l), A (d n), B, C (b n l), all fp32.
    """
    u32 = u.float()
    dt = delta.float()
    bias = delta_bias.float() if delta_bias is not None else None
    if bias is not None:
        dt = dt + bias[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)
    decay_dt = dt
    if gap is not None:
        base = bias if bias is not None else torch.zeros(dt.shape[1], device=dt.device)
        dt0 = F.softplus(base) if delta_softplus else base
        decay_dt = dt + gap.to(torch.float32)[:, None, :] * dt0[None, :, None]
    return u32, dt, decay_dt, A.float(), B.float(), C.float()


def _finish(y, u32, D, z, out_dtype):
    """Add the D skip and the silu(z) gate; y, u32: (b d l) fp32."""
    if D is not None:
        y = y + D.float()[None, :, None] * u32
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, gap):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, d_inner, L), got {tuple(u.shape)}")
    b, d, l = u.shape
    n = A.shape[-1]
    expected = {
        "delta": (delta, (b, d, l)),
        "A": (A, (d, n)),
        "B": (B, (b, n, l)),
        "C": (C, (b, n, l)),
        "D": (D, (d,)),
        "z": (z, (b, d, l)),
        "delta_bias": (delta_bias, (d,)),
        "gap": (gap, (b, l)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}"
            )
    if gap is not None and gap.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"selective_scan: gap must be int32 or int64, got {gap.dtype}")


def selective_scan_ref(
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
) -> Tensor:
    """Sequential oracle: one step per token, exactly the recurrence above.

    u, delta, z: (b d l); A: (d n); B, C: (b n l); D, delta_bias: (d);
    gap: (b l) int. Returns y: (b d l) in u's dtype.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, gap)
    u32, dt, decay_dt, A, B, C = _prepare(u, delta, A, B, C, D, z, delta_bias, gap, delta_softplus)
    b, d, l = u32.shape
    h = u32.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(l):
        decay = torch.exp(decay_dt[:, :, t, None] * A)
        h = decay * h + (dt[:, :, t] * u32[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u32.new_zeros(b, d, 0)
    return _finish(y, u32, D, z, u.dtype)


def chunk_length(l: int) -> int:
    """Chunk length of the fast form: about sqrt(l), so both loops are short."""
    return max(1, int(round(l ** 0.5)))


def selective_scan_chunked(
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
) -> Tensor:
    """Fast chunked form of the scan, same contract as ``selective_scan_ref``.

    The sequence is cut into chunks of T tokens. A first pass runs the
    recurrence inside every chunk at once from a zero state (T vectorised steps
    over all chunks), a second carries the chunk-end states across chunks
    (l/T steps on (b d n)), and the carried state enters each token through the
    cumulative in-chunk decay exp(A * cumsum(decay_dt)), which never exceeds 1
    for non-negative steps and negative A (always so with delta_softplus), so
    nothing overflows whatever the step sizes.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, gap)
    u32, dt, decay_dt, A, B, C = _prepare(u, delta, A, B, C, D, z, delta_bias, gap, delta_softplus)
    b, d, l = u32.shape
    n = A.shape[1]
    if l == 0:
        return _finish(u32.new_zeros(b, d, 0), u32, D, z, u.dtype)
    T = chunk_length(l)
    nc = -(-l // T)
    pad = nc * T - l
    # Padding with zero steps and zero inputs leaves the state untouched.
    x = F.pad(dt * u32, (0, pad))
    decay_dt = F.pad(decay_dt, (0, pad))
    Bp = F.pad(B, (0, pad))
    Cp = F.pad(C, (0, pad))

    # Time-major chunk layout (T, b, d, nc, n), built from contiguous (b d l)-sized
    # pieces so the big tensors are contiguous and every step reads one block.
    dts = decay_dt.view(b, d, nc, T).permute(3, 0, 1, 2).contiguous()
    xs = x.view(b, d, nc, T).permute(3, 0, 1, 2).contiguous()
    Bt = Bp.view(b, n, nc, T).permute(3, 0, 2, 1).contiguous()  # (T, b, nc, n)
    Ct = Cp.view(b, n, nc, T).permute(3, 0, 2, 1).contiguous()
    A5 = A[None, None, :, None, :]
    decay = torch.exp(dts[..., None] * A5)
    inp = xs[..., None] * Bt[:, :, None]

    # Out-of-place steps over unbound slices keep the form differentiable (the
    # op's backward) without a full-size gradient buffer per indexed step.
    inps, decays = inp.unbind(0), decay.unbind(0)
    steps = [inps[0]]
    for t in range(1, T):
        steps.append(torch.addcmul(inps[t], decays[t], steps[-1]))
    states = torch.stack(steps)

    # Cumulative in-chunk decay from the chunk start to each token.
    cum = torch.exp(torch.cumsum(dts, dim=0)[..., None] * A5)
    ends, end_decays = steps[-1].unbind(2), cum[T - 1].unbind(2)
    carries = [states.new_zeros(b, d, n)]
    for c in range(1, nc):
        carries.append(ends[c - 1] + end_decays[c - 1] * carries[-1])
    states = torch.addcmul(states, cum, torch.stack(carries, dim=2)[None])

    y = (states * Ct[:, :, None]).sum(-1)  # (T, b, d, nc)
    y = y.permute(1, 2, 3, 0).reshape(b, d, nc * T)[:, :, :l]
    return _finish(y, u32, D, z, u.dtype)


@torch.library.custom_op(OP_NAME, mutates_args=())
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
) -> Tensor:
    """``ssmprune::selective_scan``: the scan as one op (contract above).

    u, delta, z: (b d l) fp32/fp16/bf16; A: (d n) fp32; B, C: (b n l);
    D, delta_bias: (d) fp32; gap: (b l) int32/int64 or None.
    Returns (b d l) in u's dtype.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, gap)
    if cpu_kernel.supports(u, A):
        return cpu_kernel.selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, gap,
                                               delta_softplus)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, gap, delta_softplus)


@selective_scan.register_fake
def _(u, delta, A, B, C, D=None, z=None, delta_bias=None, gap=None, delta_softplus=False):
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, gap)
    return torch.empty_like(u)


_SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _scan_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:9])
    ctx.delta_softplus = inputs[9]


def _scan_backward(ctx, grad_out):
    """Gradients from the fused C backward kernel where it runs, else by
    differentiating the chunked PyTorch form on the saved inputs. ``gap`` is an
    integer input and gets no gradient.
    """
    saved = ctx.saved_tensors
    if cpu_kernel.supports(saved[0], saved[2]):
        grads = cpu_kernel.selective_scan_fused_backward(grad_out, *saved, ctx.delta_softplus)
        return (*(g.to(t.dtype) if g is not None and need else None
                  for g, t, need in zip(grads, saved, ctx.needs_input_grad)), None, None)
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point() and need)
                  if t is not None else None
                  for t, need in zip(saved[:8], ctx.needs_input_grad[:8])]
        out = selective_scan_chunked(*leaves, saved[8], ctx.delta_softplus)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad_out) if wanted else ())
    result = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
    return (*result, None, None)


selective_scan.register_autograd(_scan_backward, setup_context=_scan_setup_context)
