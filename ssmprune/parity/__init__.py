"""Parity: PyTorch vs ONNX Runtime (vs TensorRT) through Polygraphy's comparator.

    tolerances  the one tolerance table, ToleranceError
    runners     TorchRunner (Polygraphy runner around the reference model),
                ONNX Runtime sessions for Polygraphy's OnnxrtRunner
    compare     run_parity: inputs, runs, per-output metrics, verdict
    references  op references keyed by ONNX op name (bodies and plugins alone)
"""
