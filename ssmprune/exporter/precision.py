"""The precision an ONNX file carries, read from its weights and its Q/DQ nodes.

The export manifest is checked against it and ``ssmprune build`` builds at it,
so both read it here, one way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

import onnx

_FLOAT_NAMES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16",
                onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.DOUBLE: "fp64"}
_QUANT_NAMES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "int8",
                onnx.TensorProto.FLOAT8E4M3FN: "fp8", onnx.TensorProto.INT4: "int4"}

@dataclass(frozen=True)
class OnnxPrecision:
    """The precision an ONNX file carries: its dominant float type, and Q/DQ if any."""

    float_type: str
    quantized: Optional[str] = None

    @property
    def name(self) -> str:
        return self.quantized or self.float_type


def onnx_precision(model: onnx.ModelProto) -> OnnxPrecision:
    """Dominant float type of the initializers (by element count), and the Q/DQ type."""
    counts: Counter = Counter()
    inits = {i.name: i for i in model.graph.initializer}
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_NAMES:
            n = 1
            for d in init.dims:
                n *= d
            counts[_FLOAT_NAMES[init.data_type]] += n
    for node in model.graph.node:  # weights folded into Constant nodes count too
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_NAMES:
                    n = 1
                    for d in a.t.dims:
                        n *= d
                    counts[_FLOAT_NAMES[a.t.data_type]] += n
    if not counts:
        for vi in model.graph.input:
            t = vi.type.tensor_type.elem_type
            if t in _FLOAT_NAMES:
                counts[_FLOAT_NAMES[t]] += 1
    float_type = counts.most_common(1)[0][0] if counts else "fp32"
    quantized = None
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            quantized = _QUANT_NAMES.get(zp.data_type, "int8") if zp is not None else "int8"
            break
    return OnnxPrecision(float_type, quantized)
