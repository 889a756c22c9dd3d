"""Standard-op bodies of the custom ops, as model-local ONNX functions.

ONNX Runtime runs a node ``ssmprune::SelectiveScan`` by inlining the
model-local function with the same domain and name; so does TensorRT's parser
when no plugin is registered under that name. Each function is shape-generic
(one function serves every node, whatever its sequence length) and uses only
standard ops of the model's opset (18 or later).

The selective scan body is chunked and vectorised, the ONNX form of
``ssmprune.ops.selective_scan.selective_scan_chunked``, with no Loop or Scan:

* the sequence is padded to ``nc * T`` tokens (zero steps and zero inputs
  leave the state unchanged) and laid out as (nc, T, b, ., d): chunks
  outermost, d innermost (every broadcast then runs over contiguous rows of
  d), reached with single-axis transposes, which ONNX Runtime does fast;
* pass 1 runs the recurrence inside every chunk at once from a zero state,
  unrolled over the T static steps, to get each chunk's end state;
* the state carried into chunk c is
  ``sum_{c' < c} exp(A * sum_{c' < j < c} S_j) * end_{c'}``, S_j the sum of
  the decay steps over chunk j: one masked (nc x nc) decay matrix from an
  exclusive cumulative sum of S (no subtraction of large partial sums, so no
  cancellation) and one reduction, instead of a loop over chunks;
* pass 2 reruns the unrolled recurrence from the carried states and reads
  y_t = C_t . h_t at every step (a MatMul over the state axis).

Cost: about nine elementwise passes over b*d*l*n values. ONNX has no fused
scan, so on a CPU this runs several times slower than the fused C kernel of
the PyTorch op, and at about the speed of a per-token ``Scan`` (measured in
benchmarks/RESULTS.md); the TensorRT plugin is the fast path.

``selective_scan_loop_function`` is the per-token ``Scan`` form, kept only
to measure against (benchmarks/bench_onnx.py).

Dimension glossary: b batch, d d_inner, l tokens, n d_state, T chunk length,
nc chunks, m tokens before a gather, k' tokens after it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import FunctionProto, TensorProto, helper

from ssmprune.exporter.builder import FunctionBuilder
from ssmprune.exporter.schemas import (
    DOMAIN,
    GATHER_ATTRIBUTES,
    GATHER_INPUTS,
    GATHER_OUTPUTS,
    SCAN_ATTRIBUTES,
    SCAN_INPUTS,
    SCAN_OUTPUTS,
    SELECTIVE_SCAN,
    TOKEN_GATHER,
)

FLOAT = TensorProto.FLOAT
DEFAULT_CHUNK = 32  # chosen by benchmarks/bench_onnx.py (see RESULTS.md)


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


def selective_scan_function(opset: int, chunk: int = DEFAULT_CHUNK) -> FunctionProto:
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


def selective_scan_loop_function(opset: int) -> FunctionProto:
    """The per-token ``Scan`` body of ``ssmprune::SelectiveScan``, for benchmarks only."""
    f = FunctionBuilder(DOMAIN, SELECTIVE_SCAN, SCAN_INPUTS, SCAN_ATTRIBUTES, opset,
                        doc="Per-token Scan selective scan (benchmark baseline).")
    u, x, decay, A, B, C = _scan_prologue(f)
    h0 = f.op("Expand", f.const(0.0, np.float32),
              f.op("Concat", f.op("Shape", "u", start=0, end=2),
                   f.op("Shape", "A", start=1, end=2), axis=0))  # zeros (b d n)
    step = helper.make_graph(
        [helper.make_node("Unsqueeze", ["dec_t", "ax_last"], ["dec3"]),
         helper.make_node("Mul", ["dec3", "A_outer"], ["dA"]),
         helper.make_node("Exp", ["dA"], ["e"]),
         helper.make_node("Mul", ["e", "h_in"], ["eh"]),
         helper.make_node("Unsqueeze", ["x_t", "ax_last"], ["x3"]),
         helper.make_node("Unsqueeze", ["B_t", "ax_mid"], ["B3"]),
         helper.make_node("Mul", ["x3", "B3"], ["xb"]),
         helper.make_node("Add", ["eh", "xb"], ["h_out"]),
         helper.make_node("Unsqueeze", ["C_t", "ax_mid"], ["C3"]),
         helper.make_node("Mul", ["h_out", "C3"], ["hc"]),
         helper.make_node("ReduceSum", ["hc", "ax_last"], ["y_t"], keepdims=0)],
        "scan_step",
        [helper.make_tensor_value_info(n, FLOAT, None) for n in ("h_in", "dec_t", "x_t", "B_t",
                                                                 "C_t")],
        [helper.make_tensor_value_info(n, FLOAT, None) for n in ("h_out", "y_t")],
        initializer=[onnx.numpy_helper.from_array(np.array([2], np.int64), "ax_last"),
                     onnx.numpy_helper.from_array(np.array([1], np.int64), "ax_mid")],
    )
    # The step graph reads A from the enclosing scope under a fixed name.
    f.nodes.append(helper.make_node("Identity", [A], ["A_outer"]))
    _, y = f.op("Scan", h0, decay, x, B, C, outputs=2, body=step, num_scan_inputs=4,
                scan_input_axes=[2, 2, 2, 2], scan_output_axes=[2])
    return f.function([_scan_epilogue(f, y, u)], SCAN_OUTPUTS)


def token_gather_function(opset: int) -> FunctionProto:
    """The body of ``ssmprune::TokenGather``: TopK, index sort, protected token, GatherND.

    TopK returns equal scores lowest index first (ONNX TopK-11+), the
    reference's tie rule. Only the free tokens are ranked: the protected
    column p is cut out (p = m when nothing is protected), the kept indices
    are shifted past it, and it is re-inserted at ``insert_at`` by
    concatenating a slice of width 1 (protect >= 0) or 0 (protect = -1).
    """
    f = FunctionBuilder(DOMAIN, TOKEN_GATHER, GATHER_INPUTS, GATHER_ATTRIBUTES, opset,
                        doc="Top-k token gather in original order.")
    scores = f.op("Cast", "scores", to=FLOAT)
    m = f.op("Shape", "scores", start=1, end=2)
    protect = f.op("Reshape", f.attr("protect"), f.ints(1))
    k = f.op("Reshape", f.attr("k"), f.ints(1))
    width = f.op("Cast", f.op("Greater", protect, f.ints(-1)), to=TensorProto.INT64)  # 1 or 0
    cut = f.op("Where", f.op("Cast", width, to=TensorProto.BOOL), protect, m)  # p, or m
    free = f.op("Concat", f.op("Slice", scores, f.ints(0), cut, f.ints(1)),
                f.op("Slice", scores, f.op("Add", cut, f.ints(1)), m, f.ints(1)), axis=1)
    _, best = f.op("TopK", free, k, axis=1, largest=1, sorted=1, outputs=2)
    kept, _ = f.op("TopK", best, k, axis=1, largest=0, sorted=1, outputs=2)  # original order
    kept = f.op("Add", kept, f.op("Cast", f.op("GreaterOrEqual", kept, cut),
                                  to=TensorProto.INT64))  # free index -> token index
    at = f.op("Reshape", f.attr("insert_at"), f.ints(1))
    cls = f.op("Slice", f.op("Expand", f.op("Reshape", protect, f.ints(1, 1)),
                             f.op("Concat", f.op("Shape", "scores", start=0, end=1),
                                  f.ints(1), axis=0)),
               f.ints(0), width, f.ints(1))
    index = f.op("Concat", f.op("Slice", kept, f.ints(0), at, f.ints(1)), cls,
                 f.op("Slice", kept, at, k, f.ints(1)), axis=1)  # (b k')
    index = f.op("Unsqueeze", index, f.ints(2))
    positions = f.op("GatherND", "positions", index, batch_dims=1)
    gathered = f.op("GatherND", "x", index, batch_dims=1)
    return f.function([positions, gathered], GATHER_OUTPUTS)


BODIES = {SELECTIVE_SCAN: selective_scan_function, TOKEN_GATHER: token_gather_function}
