"""Standard-op bodies of the custom ops, as model-local ONNX functions.

ONNX Runtime runs a node ``ssmprune::SelectiveScan`` by inlining the
model-local function with the same domain and name (and overload, from 1.27);
so does onnx's inliner (``--no-plugins`` builds, the ``standard`` flavour),
and TensorRT's parser, by name alone, when no plugin is registered under it.
Each function is shape-generic (one function serves every node, whatever its
sequence length) and uses only standard ops of the model's opset (18 or
later).

The selective scan's ``delta_softplus`` and ``has_z`` are fixed per node, and
every scan of a model shares them (softplus and the silu(z) gate in Vim,
softplus alone in PlainMamba, which gates outside the scan). So its body is
built for those values and named by them (the function's and the nodes'
``overload``, ONNX IR 10) instead of choosing at run time with ``Where``
nodes that ONNX Runtime does not fold away: 37 nodes instead of 44 for Vim
(34 for PlainMamba). A model whose scans differ gets the body that reads the
attributes (no overload; ``stages.attach_bodies`` says why).
``check_overloads`` holds a node to the body its attributes name.

The selective scan body is a per-token ``Scan`` whose decays are computed
ahead of it, in token-major layout:

* softplus, the gap of pruned tokens and delta u: elementwise passes
  over (l b d) before the Scan; exp(delta_t A) for every token at once,
  (l b d n), in one broadcast ``Mul`` and ``Exp``;
* the step is ``h = exp(delta A)_t * h + (delta u)_t B_t`` and
  ``y_t = h C_t``: four small nodes, both products ``MatMul`` ((b d 1) by
  (b 1 n), then (b d n) by (b n 1)), which ONNX Runtime runs faster than a
  broadcast ``Mul`` (2x) or an ``Einsum`` (10 % of the model); the Scan
  writes y in the (b d l) layout (``scan_output_axes``), where the D skip is
  added;
* the silu(z) gate multiplies that output, in the inputs' own type (z as it
  comes, no transpose).

37 nodes in all with softplus and gate, subgraphs included, against 404 for
the chunked form with an unrolled recurrence that this replaced
(benchmarks/RESULTS.md, "ONNX scan body"): a TensorRT build and an ONNX
Runtime session pay for every node, 48 times in Vim-S. It is also the
oracle's own recurrence, so a non-finite value at token t reaches no output
before t. On a GPU the plugins are the fast path; TensorRT runs the Scan as a
loop.

Dimension glossary: b batch, d d_inner, l tokens, n d_state, m tokens before a
gather, k' tokens after it.
"""

from __future__ import annotations

from typing import Callable, Mapping

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


def _scan_values(attributes: Mapping[str, int]) -> dict[str, int]:
    """{attribute: 0 or 1} of a SelectiveScan node: omitted ones take the schema's
    defaults, any nonzero value is on."""
    values = {**SCAN_ATTRIBUTES, **attributes}
    return {name: int(bool(values[name])) for name in SCAN_ATTRIBUTES}


def scan_overload(attributes: Mapping[str, int]) -> str:
    """The overload naming the SelectiveScan body for a node's ``attributes``."""
    return ",".join(f"{name}={value}" for name, value in _scan_values(attributes).items())


def _switch(f: FunctionBuilder, values: Mapping[str, int] | None, attribute: str,
            on: Callable[[], list[str]], off: list[str]) -> list[str]:
    """``on()`` or ``off`` as ``values[attribute]`` says; with no ``values``, a ``Where`` on
    the function's attribute chooses between them at run time."""
    if values is not None:
        return on() if values[attribute] else off
    flag = f.op("Cast", f.attr(attribute), to=TensorProto.BOOL)
    return [f.op("Where", flag, a, b) for a, b in zip(on(), off)]


def selective_scan_function(opset: int, attributes: Mapping[str, int] | None = None
                            ) -> FunctionProto:
    """The body of ``ssmprune::SelectiveScan``: a per-token ``Scan`` over precomputed
    decays (module docstring).

    Specialized to the nodes with ``attributes`` (overload ``scan_overload``); with
    None, the body of every node, which reads the attributes at run time (no overload).
    """
    values = None if attributes is None else _scan_values(attributes)
    overload = "" if attributes is None else scan_overload(attributes)
    f = FunctionBuilder(DOMAIN, SELECTIVE_SCAN, SCAN_INPUTS, SCAN_ATTRIBUTES, opset,
                        doc=f"Selective scan ({overload or 'any attributes'}): a per-token "
                            "Scan over the precomputed exp(delta A).")
    # u and delta (b d l) in one cast and one transpose to token-major (l b d), where
    # delta_bias and D (d) broadcast as they are; B and C (b n l) in one cast and unsqueeze,
    # then B to (l b 1 n) and C to (l b n 1) for the step's two MatMuls. (The Scan could
    # read C along l as it is, but ONNX Runtime 1.32 dies of SIGFPE on a sequence of length
    # 0 scanned along an axis other than 0.)
    ud = f.op("Transpose", f.op("Cast", f.op("Concat", "u", "delta", axis=0), to=FLOAT),
              perm=[2, 0, 1])
    u, delta = f.op("Split", ud, axis=1, num_outputs=2, outputs=2)
    last = f.ints(3)
    bc = f.op("Unsqueeze", f.op("Cast", f.op("Concat", "B", "C", axis=0), to=FLOAT), last)
    B, C = f.op("Split", bc, axis=0, num_outputs=2, outputs=2)  # (b n l 1)
    B, C = f.op("Transpose", B, perm=[2, 0, 3, 1]), f.op("Transpose", C, perm=[2, 0, 1, 3])
    raw = f.op("Add", delta, "delta_bias")  # and "delta_bias" for a pruned token (delta 0)
    dt, dt0 = _switch(f, values, "delta_softplus",
                      lambda: [f.op("Softplus", raw), f.op("Softplus", "delta_bias")],
                      [raw, "delta_bias"])
    decay = f.op("Add", dt, f.op("Einsum", f.op("Cast", "gap", to=FLOAT), dt0,
                                 equation="bl,d->lbd"))
    dA = f.op("Exp", f.op("Mul", f.op("Unsqueeze", decay, last), "A"))  # (l b d n)
    h0 = f.op("ConstantOfShape", f.op("Shape", dA, start=1))  # zeros (b d n)
    step = helper.make_graph(
        [helper.make_node("Mul", ["dA_t", "h"], ["decayed"]),
         helper.make_node("MatMul", ["x_t", "B_t"], ["xB_t"]),  # (b d 1) (b 1 n)
         helper.make_node("Add", ["decayed", "xB_t"], ["h_next"]),
         helper.make_node("MatMul", ["h_next", "C_t"], ["y_t"])],  # (b d n) (b n 1)
        "selective_scan_step",
        [helper.make_tensor_value_info(n, FLOAT, None) for n in ("h", "dA_t", "x_t", "B_t", "C_t")],
        [helper.make_tensor_value_info(n, FLOAT, None) for n in ("h_next", "y_t")])
    x = f.op("Unsqueeze", f.op("Mul", dt, u), last)  # (l b d 1)
    _, y = f.op("Scan", h0, dA, x, B, C, outputs=2, body=step, num_scan_inputs=4,
                scan_output_axes=[2])  # (b d l 1)
    y = f.op("Add", f.op("Squeeze", y, last),
             f.op("Transpose", f.op("Mul", "D", u), perm=[1, 2, 0]))  # + D u, (b d l)
    y = f.op("CastLike", y, "u")
    y, = _switch(f, values, "has_z",
                 lambda: [f.op("Mul", y, f.op("Mul", "z", f.op("Sigmoid", "z")))], [y])
    function = f.function([y], SCAN_OUTPUTS)
    function.overload = overload
    return function


def token_gather_function(opset: int, attributes: Mapping[str, int] | None = None
                          ) -> FunctionProto:
    """The body of ``ssmprune::TokenGather`` (every node's: it reads its attributes):
    TopK, index sort, protected token, GatherND.

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


BodyFactory = Callable[[int, Mapping[str, int]], FunctionProto]
BODIES: dict[str, BodyFactory] = {SELECTIVE_SCAN: selective_scan_function,
                                  TOKEN_GATHER: token_gather_function}
OVERLOADS: dict[str, Callable[[Mapping[str, int]], str]] = {SELECTIVE_SCAN: scan_overload}


def node_attributes(node: onnx.NodeProto) -> dict[str, object]:
    """{name: value} of a node's attributes."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def specialized_overload(node: onnx.NodeProto) -> str:
    """The overload of the body specialized to ``node``'s attributes ("" for an op whose
    one body serves every node)."""
    overload = OVERLOADS.get(node.op_type)
    return "" if overload is None else overload(node_attributes(node))


def check_overloads(model: onnx.ModelProto) -> list[str]:
    """One line per ``ssmprune`` node that calls a specialized body its attributes do not
    name (a file edited by hand: the body would compute what the plugin does not)."""
    return [f"{node.op_type} node {node.name or node.output[0]!r} calls the body for "
            f"{node.overload!r} but its attributes are {specialized_overload(node)!r}"
            for node in model.graph.node
            if node.domain == DOMAIN and node.overload
            and node.overload != specialized_overload(node)]
