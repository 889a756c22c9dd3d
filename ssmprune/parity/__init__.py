"""Parity: PyTorch vs ONNX Runtime (vs TensorRT) through Polygraphy's comparator.

    tolerances  the one tolerance table, ToleranceError
    runners     TorchRunner (Polygraphy runner around the reference model),
                ONNX Runtime sessions (CUDA or CPU provider) for Polygraphy's
                OnnxrtRunner, TrtRunner around an engine; the --runtimes registry
    compare     run_parity: inputs, runs, per-output metrics, verdict
    references  op references keyed by ONNX op name (bodies and plugins alone)
"""
