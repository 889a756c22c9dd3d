"""Where Q/DQ nodes may sit in a quantized ssmprune graph, and the check of it.

The projections (MatMul / Conv / Gemm of the main graph) take int8 or fp8
inputs through QuantizeLinear -> DequantizeLinear pairs; everything else (the
SelectiveScan and TokenGather nodes and their model-local bodies, the
norms, softplus, exp) stays fp32. ``confine_qdq`` enforces the rule on what
the quantizer wrote (ONNX Runtime's QDQ quantizer shares a DequantizeLinear
between a quantized consumer and an fp32 one, e.g. a Slice that flips the
sequence or a Clip); ``qdq_placement`` checks it and counts.
"""

from __future__ import annotations

import collections

import onnx

QUANTIZED_OPS = ("MatMul", "Conv", "Gemm")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class QdqPlacementError(RuntimeError):
    """A Q/DQ node where none may be: a bug in the quantization step, not a user error."""


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    return consumers


def selection_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's MatMul / Conv / Gemm nodes upstream of a TokenGather.

    Their outputs decide which tokens a pruned model keeps: int8 noise there
    flips near-tied importance scores, and a different token set changes the
    prediction far more than the rounding itself (benchmarks/RESULTS.md).
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    seen, stack = set(), [n for n in model.graph.node if n.op_type == "TokenGather"]
    while stack:
        node = stack.pop()
        for name in node.input:
            parent = producers.get(name)
            if parent is not None and id(parent) not in seen:
                seen.add(id(parent))
                stack.append(parent)
    return [n.name for n in model.graph.node
            if id(n) in seen and n.op_type in QUANTIZED_OPS]


def confine_qdq(model: onnx.ModelProto) -> int:
    """Rewire every fp32 consumer of an activation's Q -> DQ pair to the fp32 tensor.

    Returns how many node inputs were rewired. A DequantizeLinear whose
    output nobody reads any more is removed (with its QuantizeLinear when
    that one is left unread too).
    """
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    rewired = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue  # a weight's DQ: checked by qdq_placement
        for node in consumers[dq.output[0]]:
            if node.op_type in QUANTIZED_OPS:
                continue
            for i, name in enumerate(node.input):
                if name == dq.output[0]:
                    node.input[i] = q.input[0]
                    rewired += 1
    # Drop pairs left without readers.
    graph_outputs = {o.name for o in graph.output}
    while True:
        consumers = _consumers(graph)
        dead = [n for n in graph.node if n.op_type in QDQ_OPS
                and not any(consumers[o] or o in graph_outputs for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    return rewired


def qdq_placement(model: onnx.ModelProto) -> dict[str, int]:
    """Check the placement rule; returns counts of Q, DQ and quantized nodes.

    Raises ``QdqPlacementError`` for a Q/DQ inside a model-local function
    (the scan and gather bodies), a DequantizeLinear read by anything but
    MatMul / Conv / Gemm, or a QuantizeLinear read by anything but a
    DequantizeLinear.
    """
    for function in model.functions:
        inside = [n.op_type for n in function.node if n.op_type in QDQ_OPS]
        if inside:
            raise QdqPlacementError(f"{len(inside)} Q/DQ node(s) inside the body of "
                                    f"{function.domain}::{function.name}")
    consumers = _consumers(model.graph)
    counts = collections.Counter()
    quantized = set()
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        counts[node.op_type] += 1
        readers = consumers[node.output[0]]
        allowed = QUANTIZED_OPS if node.op_type == "DequantizeLinear" else ("DequantizeLinear",)
        wrong = [r for r in readers if r.op_type not in allowed]
        if wrong:
            raise QdqPlacementError(
                f"{node.op_type} {node.name} feeds {', '.join(f'{r.domain}::{r.op_type}' if r.domain else r.op_type for r in wrong)}"
                f" (only {', '.join(allowed)} may read it)")
        if node.op_type == "DequantizeLinear":
            quantized.update(r.name for r in readers)
    return {"QuantizeLinear": counts["QuantizeLinear"],
            "DequantizeLinear": counts["DequantizeLinear"], "quantized_nodes": len(quantized)}
