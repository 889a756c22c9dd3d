"""An int8 Q/DQ graph -> the same graph in fp8 (E4M3FN): same nodes, fp8 scales and values.

``ssmprune calibrate --precision fp8`` asks ONNX Runtime's quantizer for the
int8 graph (symmetric, weights kept as fp32 -> QuantizeLinear ->
DequantizeLinear) and rewrites it here, so fp8 gets exactly the int8
placement (and its check) and every ``--method``:

    activation Q/DQ  scale  amax / 448, amax = 127 * the int8 scale (ONNX
                            Runtime's symmetric int8 scale is amax / 127,
                            amax from the calibration method's range)
    weight           fp32 -> E4M3FN(w / scale), per output channel (or per
                            tensor), scale = max |w| / 448; the weight's
                            QuantizeLinear becomes an fp8 initializer
    zero points      0 of type float8e4m3fn, the symmetric, zero-point-free
                     form TensorRT takes

amax / 448 (448: E4M3FN's largest finite value) is the fp8 scale TensorRT
and NVIDIA ModelOpt use. ONNX Runtime's own float8 path accepts only its
Distribution calibration, whose scale is std / std(E4M3 values): anything
past about 4.5 standard deviations saturates at 448, outlier weights and
activations included; on vim_digits_top that gives 81 % held-out top-1
agreement with fp32, amax / 448 99 % (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ssmprune.calibration.qdq import QDQ_OPS, QdqPlacementError

E4M3_MAX = 448.0  # largest finite float8e4m3fn
INT8_SYMMETRIC_MAX = 127  # ONNX Runtime's symmetric int8 range is [-127, 127]
FP8_MIN_OPSET = 19  # QuantizeLinear / DequantizeLinear take float8 from opset 19


def _fp8_tensor(name: str, values: np.ndarray) -> onnx.TensorProto:
    """float32 values (already in E4M3FN's range) -> a float8e4m3fn initializer, round to
    nearest even, as QuantizeLinear(saturate=1) rounds."""
    from ml_dtypes import float8_e4m3fn  # onnx's own dependency

    q = np.clip(values, -E4M3_MAX, E4M3_MAX).astype(float8_e4m3fn)
    return onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT8E4M3FN,
                            dims=values.shape, raw_data=q.tobytes())


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def fp8_from_int8(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite the int8 Q/DQ nodes of ``model``'s main graph to fp8 E4M3FN, in place.

    The model must come from ONNX Runtime's QDQ quantizer with symmetric int8
    (zero points 0) and ``AddQDQPairToWeight`` (weights still fp32, read by a
    QuantizeLinear). Returns counts: rescaled scale tensors and the weights
    quantized to fp8. A zero point other than 0, or a DequantizeLinear of an
    int8 initializer, is a bug of the quantization step (``QdqPlacementError``).
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    rescaled: set[str] = set()
    zero_points: set[str] = set()
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            raise QdqPlacementError(f"{node.op_type} {node.name} has no zero-point initializer")
        scale_name, zp_name = node.input[1], node.input[2]
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            raise QdqPlacementError(f"{node.name} dequantizes the int8 initializer "
                                    f"{node.input[0]}: expected fp32 weights (AddQDQPairToWeight)")
        if zp_name not in zero_points:
            zp = numpy_helper.to_array(inits[zp_name])
            if zp.any():
                raise QdqPlacementError(f"{node.name}: zero point {zp_name} is not 0 (an "
                                        "asymmetric int8 range cannot become fp8)")
            inits[zp_name].CopyFrom(_fp8_tensor(zp_name, np.zeros(zp.shape, np.float32)))
            zero_points.add(zp_name)
        if scale_name not in rescaled:
            scale = numpy_helper.to_array(inits[scale_name]).astype(np.float64)
            fp8_scale = (scale * INT8_SYMMETRIC_MAX / E4M3_MAX).astype(np.float32)
            inits[scale_name].CopyFrom(numpy_helper.from_array(fp8_scale, scale_name))
            rescaled.add(scale_name)
    # Weights: fp32 -> QuantizeLinear becomes one fp8 initializer (what TensorRT parses).
    weights = 0
    for node in [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]:
        w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[node.input[1]])
        if scale.ndim == 1:  # per channel along the node's axis
            shape = [1] * w.ndim
            shape[_axis(node) % w.ndim] = -1
            scale = scale.reshape(shape)
        graph.initializer.append(_fp8_tensor(node.output[0], w / scale))
        graph.node.remove(node)
        weights += 1
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return {"scales": len(rescaled), "weights": weights}


def qdq_types(model: onnx.ModelProto) -> set[int]:
    """The element types of the main graph's Q/DQ zero points (the quantized types)."""
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return {inits[n.input[2]] for n in model.graph.node
            if n.op_type in QDQ_OPS and len(n.input) > 2 and n.input[2] in inits}
