"""One-node ONNX models around a custom op, to check or time a body alone."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import FunctionProto, helper

from ssmprune.exporter.schemas import DOMAIN, VERSION
from ssmprune.exporter.schemas import register as register_schemas

DEFAULT_OPSET = 20


def op_model(op_type: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
             attributes: dict, body: Callable[[int, dict], FunctionProto] | None,
             opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """A model with one ``ssmprune::<op_type>`` node, its inputs as graph inputs.

    ``body(opset, attributes)`` gives the model-local function ONNX Runtime
    runs for the node, which calls it by its overload; None leaves the node
    bare (for a runtime with its own plugin).
    Output types are left to shape inference.
    """
    register_schemas()
    node = helper.make_node(op_type, list(inputs), list(outputs), domain=DOMAIN, **attributes)
    function = body(opset, attributes) if body is not None else None
    node.overload = function.overload if function is not None else ""
    graph = helper.make_graph(
        [node], f"{op_type}_alone",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for name, a in inputs.items()],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)],
        functions=[function] if function is not None else [],
    )
    return onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)


def run_op_model(model: onnx.ModelProto, inputs: dict[str, np.ndarray],
                 threads: int = 1) -> list[np.ndarray]:
    """Run a model from ``op_model`` with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def body_node_count(function: FunctionProto) -> int:
    """Nodes of a body function, those of its subgraphs (a Scan's step) included."""
    return len(function.node) + sum(len(a.g.node) for n in function.node for a in n.attribute
                                    if a.type == onnx.AttributeProto.GRAPH)
