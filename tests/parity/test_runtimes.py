"""The runtimes parity compares: ONNX Runtime's provider choice, the trt runtime's checks
(without a GPU: each refusal is one line), the precision a comparison is judged by, and,
on a GPU, PyTorch vs ONNX Runtime vs TensorRT."""

import copy

import numpy as np
import onnxruntime
import pytest
import torch
from exporter.export_cases import exports  # noqa: F401  (session fixture)
from onnx import TensorProto, helper
from parity.engine_cases import fake_engine, pretend_tensorrt

from ssmprune.engine import trt as trt_mod
from ssmprune.engine.errors import EngineFileError, NoGpuError, TensorRTUnavailableError
from ssmprune.errors import BadInputFileError, ConfigError
from ssmprune.parity import runners
from ssmprune.parity.compare import _judged_precision, run_parity

CUDA, CPU = runners.CUDA_PROVIDER, runners.CPU_PROVIDER
needs_gpu = pytest.mark.skipif(
    trt_mod.current_gpu_arch() is None or trt_mod.installed() is None,
    reason="running an engine needs an NVIDIA GPU and TensorRT (or TensorRT-RTX)")


@pytest.mark.parametrize("available, gpu, expected", [
    ([CUDA, CPU], True, [(CUDA, {"use_tf32": "0"}), CPU]),
    ([CUDA, CPU], False, [CPU]),  # onnxruntime-gpu on a machine without a GPU
    (["AzureExecutionProvider", CPU], True, [CPU]),  # the CPU onnxruntime
])
def test_provider_choice(monkeypatch, available, gpu, expected):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert runners.onnxrt_providers() == expected


def test_sessions_ask_for_the_chosen_providers(monkeypatch):
    asked = []
    monkeypatch.setattr(runners, "onnxrt_providers", lambda: ["chosen"])
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda model, options, providers: asked.append(providers))
    runners.onnxrt_session(b"model")
    assert asked == [["chosen"]]


def test_a_model_that_loads_and_cannot_run_is_a_bad_input_file():
    # A Reshape whose target shape does not fit its input: ONNX Runtime loads the graph
    # (the shape is an input) and fails at run time, as a re-hashed, byte-flipped file can.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    session = runners.onnxrt_session(model.SerializeToString(), threads=1)
    x = np.ones((2, 3), np.float32)
    assert session.run(None, {"x": x, "shape": np.array([3, 2])})[0].shape == (3, 2)
    assert session.get_inputs()[0].name == "x"  # the rest is the session's own
    with pytest.raises(BadInputFileError, match="ONNX Runtime cannot run the ONNX model: "):
        session.run(None, {"x": x, "shape": np.array([4, 2])})
    assert copy.copy(session).get_inputs()[0].name == "x"


def test_running_out_of_memory_is_not_the_files_fault(monkeypatch):
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    class Exhausted:
        def run(self, *args):
            raise ort_errors.Fail("bfc_arena.cc:359 AllocateRawInternal Failed to allocate "
                                  "memory for requested buffer of size 1073741824")

    with pytest.raises(ort_errors.Fail, match="Failed to allocate"):
        runners.CheckedSession(Exhausted(), "m.onnx").run(None, {})


def test_report_names_what_ran_each_runtime(exports):
    report = run_parity(exports.get("vim_dense").directory, samples=1)
    assert report.providers["torch"] == "cpu" and report.providers["onnxrt"] in (CUDA, CPU)
    assert report.to_dict()["providers"] == report.providers
    assert report.comparisons[0].precision == "fp32"


FP16_ENGINE = {"torch": "fp32", "onnxrt": "fp32", "trt": "fp16"}


@pytest.mark.parametrize("precisions, export, runtime, reference, expected", [
    ({"torch": "int8", "onnxrt": "int8"}, "int8", "onnxrt", "torch", "int8"),  # calibrated
    (FP16_ENGINE, "fp32", "onnxrt", "torch", "fp32"),
    (FP16_ENGINE, "fp32", "trt", "torch", "fp16"),  # an engine built with fp16 flags
    (FP16_ENGINE, "fp32", "torch", "trt", "fp16"),  # ... as the reference
])
def test_judged_precision(precisions, export, runtime, reference, expected):
    assert _judged_precision(runtime, reference, precisions, export) == expected


def test_trt_needs_an_engine_and_an_engine_needs_trt(exports, tmp_path):
    directory = exports.get("vim_dense").directory
    with pytest.raises(ConfigError, match="the trt runtime needs --engine ENGINE"):
        run_parity(directory, runtimes=("torch", "trt"))
    with pytest.raises(ConfigError, match="--engine is run by the trt runtime"):
        run_parity(directory, engine=tmp_path / "m.engine")


def test_engine_of_another_onnx(exports, tmp_path, monkeypatch):
    pretend_tensorrt(monkeypatch, installed=True, gpu=None)
    directory = exports.get("vim_dense").directory
    # No source export: one that lists the export's sha256 would contradict onnx_sha256, which
    # reading the engine manifest refuses before parity compares the two (issue 15).
    engine = fake_engine(directory, tmp_path / "m.engine", onnx_sha256="ab" * 32, source=False)
    with pytest.raises(EngineFileError, match=r"built from another ONNX \(sha256 abababababab"):
        run_parity(directory, runtimes=("torch", "trt"), engine=engine)


@pytest.mark.parametrize("installed, error, message", [
    (True, NoGpuError, r"needs an NVIDIA GPU \(torch sees no CUDA device\): not found"),
    (False, NoGpuError, "needs an NVIDIA GPU .* and TensorRT"),
])
def test_trt_without_gpu(exports, tmp_path, monkeypatch, installed, error, message):
    pretend_tensorrt(monkeypatch, installed=installed, gpu=None)
    directory = exports.get("vim_dense").directory
    engine = fake_engine(directory, tmp_path / "m.engine")
    with pytest.raises(error, match=message):
        run_parity(directory, runtimes=("torch", "onnxrt", "trt"), engine=engine)


def test_trt_without_tensorrt_on_a_gpu(monkeypatch, tmp_path):
    pretend_tensorrt(monkeypatch, installed=False, gpu="sm_90")
    with pytest.raises(TensorRTUnavailableError, match="m.engine needs TensorRT"):
        runners.require_engine_runtime(tmp_path / "m.engine")


@needs_gpu
def test_torch_onnxrt_and_trt_agree(exports, tmp_path):
    from ssmprune.engine.build import BuildOptions
    from ssmprune.engine.save import build_to_file

    flavour, gpu = trt_mod.installed(), trt_mod.current_gpu_arch()
    if flavour.is_rtx and gpu not in flavour.supported_targets():
        pytest.skip(f"{flavour.display} does not support this GPU ({gpu})")
    directory = exports.get("vim_pruned").directory
    _, engine, _ = build_to_file(directory, tmp_path / "m.engine", BuildOptions(plugins=False))
    report = run_parity(directory, runtimes=("torch", "onnxrt", "trt"), engine=engine, samples=4)
    assert report.passed, report.to_dict()
    assert [c.runtime for c in report.comparisons] == ["onnxrt", "trt"]
    assert report.providers["trt"] == f"{flavour.display} on {gpu}"
