"""A small recorder of ONNX nodes for writing function bodies in Python.

The bodies are written node by node, with attribute references to the
function's own attributes (``attr``) and a hand-made ``Scan`` step graph; this
builder is that, and nothing more: each call appends one node and returns the
names of its outputs.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import onnx
from onnx import AttributeProto, FunctionProto, helper, numpy_helper

Value = str
Attr = Union[int, float, str, Sequence[int], Sequence[float], onnx.TensorProto]


class FunctionBuilder:
    """Records the nodes of one ONNX function (standard domain ops only).

    ``inputs`` are the function's formal inputs, ``attributes`` its attribute
    parameters with their defaults (None: required). Values are plain names.
    """

    def __init__(self, domain: str, name: str, inputs: Sequence[str],
                 attributes: dict[str, Attr | None], opset: int, doc: str = ""):
        self.domain, self.name, self.opset, self.doc = domain, name, opset, doc
        self.inputs = list(inputs)
        self.attributes = dict(attributes)
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def _fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: Value | None, outputs: int = 1, name: str = "",
           **attrs: Attr) -> Value | list[Value]:
        """Append ``op_type(*inputs, **attrs)``; returns one name, or a list when outputs > 1.

        A None input is a missing optional input.
        """
        outs = [self._fresh(name or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(
            op_type, ["" if i is None else i for i in inputs], outs, **attrs))
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=None, name: str = "c") -> Value:
        """A Constant node holding ``value`` (a number or nested list), as an array."""
        array = np.asarray(value, dtype=dtype)
        return self.op("Constant", value=numpy_helper.from_array(array), name=name)

    def ints(self, *values: int) -> Value:
        """A 1-D int64 constant, for shapes, axes and pads."""
        return self.const(list(values), np.int64, name="ints")

    def attr(self, attribute: str, kind: int = AttributeProto.INT) -> Value:
        """A scalar Constant whose value is the function attribute ``attribute``."""
        field = {AttributeProto.INT: "value_int", AttributeProto.FLOAT: "value_float"}[kind]
        out = self._fresh(attribute)
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(helper.make_attribute_ref(field, kind, ref_attr_name=attribute))
        self.nodes.append(node)
        return out

    def function(self, outputs: Sequence[Value], output_names: Sequence[str]) -> FunctionProto:
        """The FunctionProto, with its outputs renamed to ``output_names``."""
        for value, final in zip(outputs, output_names):
            self.op_rename(value, final)
        protos = [helper.make_attribute(k, v) for k, v in self.attributes.items()
                  if v is not None]
        required = [k for k, v in self.attributes.items() if v is None]
        return helper.make_function(
            self.domain, self.name, self.inputs, list(output_names), self.nodes,
            [helper.make_opsetid("", self.opset)], attributes=required,
            attribute_protos=protos, doc_string=self.doc)

    def op_rename(self, value: Value, final: str) -> None:
        """Make the node that produces ``value`` produce ``final`` instead."""
        if value == final:
            return
        if value in self.inputs:  # an output that is an input needs a node of its own
            self.nodes.append(helper.make_node("Identity", [value], [final]))
            return
        for node in self.nodes:
            for i, out in enumerate(node.output):
                if out == value:
                    node.output[i] = final
            for i, inp in enumerate(node.input):
                if inp == value:
                    node.input[i] = final
