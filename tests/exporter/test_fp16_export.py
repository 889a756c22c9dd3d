"""fp16 exports (``--dtype fp16``): fp16 weights and activations behind an fp32 input and
fp32 logits, the custom nodes unchanged, ONNX Runtime against the fp32 PyTorch model by
the fp16 row of the tolerance table, and a strongly typed TensorRT-RTX build."""

import json

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import invoke
from exporter.export_cases import CASES, assert_custom_nodes, exports  # noqa: F401  (fixture)
from onnx import TensorProto

from ssmprune.data.digits import held_out_for_model
from ssmprune.engine import trt as trt_mod
from ssmprune.exporter import ExportOptions, export, model_from_manifest, stages
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE
from ssmprune.exporter.schemas import SELECTIVE_SCAN
from ssmprune.models.digits import embedded_weights
from ssmprune.parity.runners import onnxrt_session
from ssmprune.parity.tolerances import tolerance_for

FP16 = tolerance_for("fp16", stages.OUTPUT_NAME)
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")
needs_rtx = pytest.mark.skipif(
    trt_mod.installed("tensorrt_rtx") is None,
    reason="TensorRT-RTX (tensorrt_rtx_bindings) is not installed: `make setup`")


def load(result) -> onnx.ModelProto:
    return onnx.load(str(result.directory / MODEL_FILE))


def relative_errors(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per sample, max |actual - expected| / max |expected| (the parity metric): (n,)."""
    diff = np.abs(actual.astype(np.float64) - expected).max(axis=1)
    return diff / np.abs(expected).max(axis=1)


def fp16_and_fp32_logits(result, reference: torch.nn.Module,
                         x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime on the fp16 file, ``reference``: the fp32 PyTorch model it was made
    from) on x, (n, classes) each, run a batch of the export's size at a time."""
    session = onnxrt_session(result.directory / MODEL_FILE, threads=1)
    b = result.manifest.batch
    with torch.inference_mode():
        expected = torch.cat([reference(x[i:i + b]) for i in range(0, len(x), b)]).numpy()
    actual = np.concatenate([session.run(None, {stages.INPUT_NAME: x[i:i + b].numpy()})[0]
                             for i in range(0, len(x), b)])
    assert actual.dtype == np.float32
    return actual, expected


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp16_export_has_the_custom_nodes_fp16_weights_and_fp32_io(case, exports):
    result = exports.get(case, precision="fp16")
    model = load(result)
    assert_custom_nodes(case, result, model)
    stages.check_onnx(model)  # checker (full) and strict shape inference

    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    # fp32 interface: one Cast to fp16 after the input, one Cast to fp32 before the output.
    assert types[stages.INPUT_NAME] == types[stages.OUTPUT_NAME] == TensorProto.FLOAT
    first = [n for n in graph.node if stages.INPUT_NAME in n.input]
    last = [n for n in graph.node if stages.OUTPUT_NAME in n.output]
    assert [(n.op_type, n.attribute[0].i) for n in first] == [("Cast", TensorProto.FLOAT16)]
    assert [(n.op_type, n.attribute[0].i) for n in last] == [("Cast", TensorProto.FLOAT)]
    # fp16 weights and activations; the scan's A, D and dt bias fp32, as the schema says.
    initializers = {init.name for init in graph.initializer}
    weights = [i for n in graph.node if n.op_type in WEIGHT_OPS for i in n.input[1:]
               if i in initializers]
    assert weights and all(types[w] == TensorProto.FLOAT16 for w in weights)
    for node in graph.node:
        if node.op_type == SELECTIVE_SCAN:
            ins = dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), node.input))
            assert [types[ins[k]] for k in ("u", "delta", "B", "C", "z")] == [
                TensorProto.FLOAT16] * 5
            assert [types[ins[k]] for k in ("A", "D", "delta_bias")] == [TensorProto.FLOAT] * 3
            assert types[node.output[0]] == TensorProto.FLOAT16
    elements = {TensorProto.FLOAT: 0, TensorProto.FLOAT16: 0}
    for init in graph.initializer:
        if init.data_type in elements:
            elements[init.data_type] += int(np.prod(init.dims, dtype=np.int64))
    # fp32 left: what feeds the scans' A, D and dt bias (folded constants), norm weights.
    assert elements[TensorProto.FLOAT16] >= 0.95 * sum(elements.values()), elements


def test_fp16_manifest_and_file_size(exports):
    result = exports.get("vim_dense", precision="fp16")
    data = json.loads((result.directory / MANIFEST_FILE).read_text())
    assert data["precision"] == "fp16"
    assert data["input"] == {"name": "images", "shape": [1, 3, 32, 32], "dtype": "float32"}
    assert data["outputs"] == [{"name": "logits", "shape": [1, 100], "dtype": "float32"}]
    fp32 = exports.get("vim_dense")
    assert result.weight_bytes * 2 == fp32.weight_bytes
    # Half the fp32 file, give or take the graph, the fp32 A of every scan and the norms.
    assert result.file_bytes - result.weight_bytes < 100_000


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp16_onnxrt_matches_the_fp32_model(case, exports):
    result = exports.get(case, precision="fp16")
    shape = result.manifest.input["shape"]
    x = torch.randn((4, *shape[1:]), generator=torch.Generator().manual_seed(0))
    actual, expected = fp16_and_fp32_logits(result, model_from_manifest(result.manifest), x)
    assert relative_errors(actual, expected).max() <= FP16.max_rel
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= FP16.top1


def test_fp16_standard_flavor_matches_the_plugins_flavor(exports):
    plugins = exports.get("vim_pruned", precision="fp16")
    standard = exports.get("vim_pruned", precision="fp16", flavor="standard")
    assert standard.custom_nodes == {}
    stages.check_onnx(load(standard))
    x = np.random.default_rng(0).standard_normal(plugins.manifest.input["shape"]).astype(
        np.float32)
    run = [onnxrt_session(r.directory / MODEL_FILE, 1).run(None, {stages.INPUT_NAME: x})[0]
           for r in (plugins, standard)]
    np.testing.assert_allclose(run[1], run[0], rtol=0, atol=1e-3 * np.abs(run[0]).max())


@pytest.mark.parametrize("model, prune", [
    ("vim_digits", None), ("vim_digits", "vim_digits_top"),
    ("plainmamba_digits", "plainmamba_digits_top"),  # dense PlainMamba: the small cases
])
def test_fp16_digits_models_agree_with_fp32_on_held_out(model, prune, tmp_path):
    """The trained digits models on the 360 held-out scans: top-1 agreement by the fp16 row;
    max_rel by the row for dense models. A pruned model can keep another token where two
    importance scores tie within fp16 noise, which moves that sample's logits well past
    max_rel (ssmprune.parity.tolerances): allowed on at most 2 % of the scans."""
    result = export(ExportOptions(model, checkpoint=str(embedded_weights(model)), prune=prune,
                                  batch=8, precision="fp16"), tmp_path / "export")
    reference = model_from_manifest(result.manifest)
    x, _ = held_out_for_model(reference.config)
    actual, expected = fp16_and_fp32_logits(result, reference, x)
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= FP16.top1
    within = relative_errors(actual, expected) <= FP16.max_rel
    assert within.all() if prune is None else within.mean() >= 0.98, np.flatnonzero(~within)


def test_cli_exports_fp16(tmp_path):
    result, stdout, stderr = invoke("export", "vim_digits", "--dtype", "fp16",
                                    "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "fp16" in stdout and stderr.splitlines()[-1].startswith("PASSED")
    data = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert data["precision"] == "fp16" and data["input"]["dtype"] == "float32"


@needs_rtx
@pytest.mark.parametrize("case", ["vim_pruned", "plainmamba_pruned"])
def test_rtx_builds_fp16_exports_strongly_typed(case, exports, tmp_path, monkeypatch):
    """TensorRT-RTX takes the precision from the file: an fp16 engine, fp32 bindings."""
    from ssmprune.engine.manifest import read_manifest, verify_engine_file

    monkeypatch.setenv("SSMPRUNE_TENSORRT", "tensorrt_rtx")
    out = tmp_path / "model.engine"
    result, _, _ = invoke("build", exports.get(case, precision="fp16").directory,
                          "--no-plugins", "--target", "sm_86", "--opt-level", "0", "-o", out)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    verify_engine_file(out, manifest)
    assert manifest.precision == "fp16" and manifest.strongly_typed
    assert manifest.source["precision"] == "fp16"
    assert [t["dtype"] for t in manifest.onnx["inputs"] + manifest.onnx["outputs"]] == [
        "FLOAT", "FLOAT"]
