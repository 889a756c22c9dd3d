"""A Q/DQ MatMul whose int8 products overflow int16 in pairs; a runner for it in a child process.

``saturating_matmul`` is the graph ``calibrate`` writes around a projection
(symmetric int8 activations, per-channel symmetric int8 weights, zero points
0, fp32 output) at its worst case for ONNX Runtime's x86 int8 kernel: it
turns the int8 activations into u8 (zero point 128), so a full-scale input
is 255, and 255 * 127 + 255 * 127 = 64770 does not fit the int16 that a CPU
without VNNI adds each pair of products in (vpmaddubsw saturates at 32767).

    python tests/calibration/int8_cases.py MODEL X OUT [KEY=VALUE ...]

runs MODEL (.onnx) on X (.npy) in ONNX Runtime's CPU provider with the given
session config entries and saves the output to OUT (.npy). It imports only
numpy and onnxruntime, so it starts quickly under an emulator (``qemu-x86_64
-cpu Haswell``, an AVX2 CPU without VNNI).

Dimension glossary: m rows of activations, k inputs, n outputs.
"""

from __future__ import annotations

import sys

import numpy as np

K, N = 64, 8
ACT_SCALE = 1 / 127  # activations in [-1, 1]: +-1 quantizes to +-127


def saturating_matmul():
    """(model, x, expected): the Q/DQ MatMul, x (m, k) float32, and its exact result (m, n).

    The weights are +-127 in every row, alternating in sign over the columns;
    the rows of x are +1, -1, 0 and a ramp. ``expected`` is "dequantize, then
    compute exactly" (float64), what TensorRT's int32 accumulation gives.
    """
    from onnx import TensorProto, helper, numpy_helper

    w_q = np.where(np.arange(N) % 2 == 0, 127, -127).astype(np.int8)[None].repeat(K, 0)
    w_scale = np.linspace(0.01, 0.02, N, dtype=np.float32)
    x = np.stack([np.ones(K), -np.ones(K), np.zeros(K), np.linspace(-1, 1, K)]).astype(np.float32)
    inits = [numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(np.zeros(N, np.int8), "w_zero"),
             numpy_helper.from_array(np.array(ACT_SCALE, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=1),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"])]
    graph = helper.make_graph(
        nodes, "saturating_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.shape[0], N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x_q = np.clip(np.rint(x / ACT_SCALE), -127, 127)
    expected = (x_q * ACT_SCALE) @ (w_q.astype(np.float64) * w_scale)
    return model, x, expected


def _run(model_path: str, x_path: str, out_path: str, entries: list[str]) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for entry in entries:
        key, _, value = entry.partition("=")
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    np.save(out_path, session.run(None, {"x": np.load(x_path)})[0])


if __name__ == "__main__":
    _run(*sys.argv[1:4], sys.argv[4:])
