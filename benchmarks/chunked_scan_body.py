"""The chunked ONNX body of ``ssmprune::SelectiveScan`` that ssmprune exported until
2026-11-30, kept only to measure the per-token ``Scan`` body against
(``bench_scan_body.py``).

The sequence in chunks of T tokens, each chunk's recurrence unrolled into plain
nodes (two passes of T steps), the state carried between chunks by one masked
(nc x nc) decay matrix: 404 nodes at T = 32, the same value as the oracle.
"""

from __future__ import annotations

import numpy as np
from onnx import FunctionProto, TensorProto

from ssmprune.exporter.builder import FunctionBuilder
from ssmprune.exporter.schemas import (DOMAIN, SCAN_ATTRIBUTES, SCAN_INPUTS, SCAN_OUTPUTS,
                                       SELECTIVE_SCAN)

FLOAT = TensorProto.FLOAT
CHUNK = 32


def _softplus(f: FunctionBuilder, x: str) -> str:
    """relu(x) + log(1 + exp(-|x|)): ONNX Runtime's Softplus kernel is scalar and
    about 5x slower on the CPU than these vectorised ops (same values to 3e-7)."""
    tail = f.op("Log", f.op("Add", f.op("Exp", f.op("Neg", f.op("Abs", x))),
                            f.const(1.0, np.float32)))
    return f.op("Add", f.op("Relu", x), tail)


def _scan_prologue(f: FunctionBuilder):
    """Upcast and compute the steps: returns u, x = dt*u, decay steps (b d l) fp32,
    A (d n), B, C (b n l) fp32."""
    u, delta, A, B, C = (f.op("Cast", name, to=FLOAT) for name in ("u", "delta", "A", "B", "C"))
    bias = f.op("Unsqueeze", f.op("Cast", "delta_bias", to=FLOAT), f.ints(0, 2))  # (1 d 1)
    softplus = f.op("Cast", f.attr("delta_softplus"), to=TensorProto.BOOL)
    raw = f.op("Add", delta, bias)
    dt = f.op("Where", softplus, _softplus(f, raw), raw)
    dt0 = f.op("Where", softplus, _softplus(f, bias), bias)  # step of a pruned token
    gap = f.op("Unsqueeze", f.op("Cast", "gap", to=FLOAT), f.ints(1))  # (b 1 l)
    decay = f.op("Add", dt, f.op("Mul", gap, dt0))
    return u, f.op("Mul", dt, u), decay, A, B, C


def _scan_epilogue(f: FunctionBuilder, y: str, u: str) -> str:
    """y += D * u; y *= silu(z) when has_z; cast to u's type."""
    D = f.op("Unsqueeze", f.op("Cast", "D", to=FLOAT), f.ints(0, 2))
    y = f.op("Add", y, f.op("Mul", D, u))
    z = f.op("Cast", "z", to=FLOAT)
    gated = f.op("Mul", y, f.op("Mul", z, f.op("Sigmoid", z)))
    y = f.op("Where", f.op("Cast", f.attr("has_z"), to=TensorProto.BOOL), gated, y)
    return f.op("CastLike", y, "u")


def chunked_selective_scan_function(opset: int, chunk: int = CHUNK) -> FunctionProto:
    """The chunked, loop-free body of ``ssmprune::SelectiveScan`` (module docstring)."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    f = FunctionBuilder(DOMAIN, SELECTIVE_SCAN, SCAN_INPUTS, SCAN_ATTRIBUTES, opset,
                        doc=f"Chunked selective scan, chunk length {chunk}.")
    u, x, decay, A, B, C = _scan_prologue(f)
    b = f.op("Shape", "u", start=0, end=1)
    length = f.op("Shape", "u", start=2, end=3)
    T = f.ints(chunk)
    nc = f.op("Div", f.op("Add", length, f.ints(chunk - 1)), T)
    pads = f.op("Concat", f.ints(0, 0, 0, 0, 0), f.op("Sub", f.op("Mul", nc, T), length), axis=0)

    # Layout (nc 1 b n d): chunks outermost, then the step, then the state;
    # d, the widest axis, innermost, so every broadcast runs over contiguous
    # rows of d (ONNX Runtime's fast path). Each input takes one transpose
    # that moves a single axis (fast) and one split along a leading axis
    # (contiguous copies); no per-step reshapes.
    def steps(t: str, tail: list[int]) -> list[str]:
        """(b w l) -> (l b w) -> T step slices (nc 1 b *tail)."""
        t = f.op("Transpose", f.op("Pad", t, pads), perm=[2, 0, 1])
        t = f.op("Reshape", t, f.op("Concat", nc, T, b, f.ints(*tail), axis=0))
        return f.op("Split", t, axis=1, num_outputs=chunk, outputs=chunk) if chunk > 1 else [t]

    decay_steps = steps(decay, [1, -1])  # each (nc 1 b 1 d)
    xs = steps(x, [1, -1])
    Bs = steps(B, [-1, 1])  # each (nc 1 b n 1)
    Cs = steps(C, [1, -1])  # each (nc 1 b 1 n), the left factor of y_t = C_t @ h_t
    A_nd = f.op("Transpose", A, perm=[1, 0])  # (n d)
    decays = [f.op("Exp", f.op("Mul", s, A_nd)) for s in decay_steps]  # (nc 1 b n d)
    inputs = [f.op("Mul", xt, Bt) for xt, Bt in zip(xs, Bs)]

    # Pass 1: chunk-local recurrence from zero; its last step is each chunk's end state.
    h = inputs[0]
    for t in range(1, chunk):
        h = f.op("Add", f.op("Mul", decays[t], h), inputs[t])
    ends = h  # (nc 1 b n d)

    # Carry: M[c, c'] = exp(A * sum_{c' < j < c} S_j) for c' < c, else 0.
    S = decay_steps[0]
    for s in decay_steps[1:]:
        S = f.op("Add", S, s)  # (nc 1 b 1 d): sum of the decay steps of each chunk
    idx = f.op("Range", f.const(0, np.int64), f.op("Squeeze", nc, f.ints(0)), f.const(1, np.int64))
    later = f.op("Greater", f.op("Unsqueeze", idx, f.ints(1)), f.op("Unsqueeze", idx, f.ints(0)))
    later = f.op("Unsqueeze", later, f.ints(2, 3, 4))  # (nc nc 1 1 1): j > c'
    masked = f.op("Where", later, S, f.const(0.0, np.float32))  # (nc nc b 1 d): S_j if j > c'
    segment = f.op("CumSum", masked, f.const(0, np.int64), exclusive=1)  # (nc nc b 1 d)
    # Masked-out entries have segment 0, so exp() is finite before the 0/1 mask.
    factors = f.op("Mul", f.op("Exp", f.op("Mul", segment, A_nd)),
                   f.op("Cast", later, to=FLOAT))  # (nc nc b n d)
    carry = f.op("ReduceSum", f.op("Mul", factors, f.op("Reshape", ends, f.op(
        "Concat", f.ints(1), nc, f.ints(0, 0, 0), axis=0))),
                 f.ints(1), keepdims=1)  # (nc 1 b n d)

    # Pass 2: the recurrence from the carried states, reading y_t = C_t . h_t.
    h = carry
    ys = []
    for t in range(chunk):
        h = f.op("Add", f.op("Mul", decays[t], h), inputs[t])
        ys.append(f.op("MatMul", Cs[t], h))  # (nc 1 b 1 d)
    y = f.op("Concat", *ys, axis=1) if chunk > 1 else ys[0]  # (nc T b 1 d)
    y = f.op("Reshape", y, f.op("Concat", f.op("Mul", nc, T), b, f.ints(-1), axis=0))  # (l' b d)
    y = f.op("Transpose", f.op("Slice", y, f.ints(0), length, f.ints(0)), perm=[1, 2, 0])
    return f.function([_scan_epilogue(f, y, u)], SCAN_OUTPUTS)
