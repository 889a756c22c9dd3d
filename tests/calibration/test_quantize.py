"""Q/DQ from an export: placement (projections only, nothing in the scan or gather bodies,
int8 and fp8 alike), the int8 manifest, and int8 agreement with fp32 on the digits models
(fp8's own checks: test_fp8.py)."""

import collections

import numpy as np
import onnx
import pytest

from calibration.calibrated_cases import calibrated  # noqa: F401  (session fixture)
from exporter.export_cases import CASES, exports  # noqa: F401  (session fixture)
from ssmprune.calibration import CalibrateOptions, DigitsData, calibrate
from ssmprune.calibration.qdq import QdqPlacementError, qdq_placement, selection_nodes
from ssmprune.calibration.quantize import QuantizedManifest
from ssmprune.exporter import read_export
from ssmprune.exporter.manifest import MODEL_FILE, verify_model_file


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("case", ["vim_pruned", "plainmamba_pruned", "vim_dense"])
def test_qdq_only_around_projections(calibrated, case, precision):  # noqa: F811
    src, result = calibrated.get(case, precision)
    model = onnx.load(str(result.directory / MODEL_FILE))
    placement = qdq_placement(model)  # raises on any misplaced Q/DQ
    ops = collections.Counter(n.op_type for n in model.graph.node)
    projections = ops["MatMul"] + ops["Conv"] + ops["Gemm"]
    original = onnx.load(str(src / MODEL_FILE))
    # Pruned: the projections the token choice depends on stay fp32 (--selection fp32).
    kept_fp32 = set(selection_nodes(original))
    assert bool(kept_fp32) == (CASES[case].gathers > 0)
    assert placement["quantized_nodes"] == projections - len(kept_fp32) > 0
    dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    quantized_names = {n.name for n in model.graph.node if dq_outputs & set(n.input)}
    assert not quantized_names & kept_fp32
    assert placement["QuantizeLinear"] > 0 and placement["DequantizeLinear"] > 0
    # The custom nodes and their bodies are those of the fp32 export, untouched.
    assert [f.SerializeToString() for f in model.functions] == \
        [f.SerializeToString() for f in original.functions]
    custom = [n for n in model.graph.node if n.domain == "ssmprune"]
    assert len(custom) == CASES[case].scans + CASES[case].gathers
    assert [n.overload for n in custom] == [n.overload for n in original.graph.node
                                            if n.domain == "ssmprune"]
    for node in model.graph.node:
        if node.domain == "ssmprune":
            assert not any("DequantizeLinear" in i for i in node.input)


def test_placement_check_catches_qdq_in_a_body(calibrated):  # noqa: F811
    _, result = calibrated.get("vim_pruned")
    model = onnx.load(str(result.directory / MODEL_FILE))
    body = model.functions[0]
    body.node.append(onnx.helper.make_node("QuantizeLinear", ["a", "s"], ["b"]))
    with pytest.raises(QdqPlacementError, match="inside the body"):
        qdq_placement(model)


def test_quantized_manifest(calibrated):  # noqa: F811
    src, result = calibrated.get("vim_pruned")
    directory, manifest = read_export(result.directory)  # sha256 verified
    verify_model_file(directory / MODEL_FILE)
    assert manifest.precision == "int8"
    full = QuantizedManifest.from_json((directory / "manifest.json").read_text(), "m")
    q = full.quantization
    assert q["method"] == "minmax" and q["samples"] == 8
    assert q["token_selection"].startswith("fp32: the projections upstream of a TokenGather")
    assert q["fp32_source"]["files"][MODEL_FILE] == read_export(src)[1].files[MODEL_FILE]["sha256"]
    assert set(result.report) >= {"calibration", "held_out", "verdict", "passed"}
    logits = result.report["held_out"]["outputs"]["logits"]
    assert logits["samples"] == 4 and logits["finite"]


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_onnxruntime_runs_the_quantized_file(calibrated, precision):  # noqa: F811
    from ssmprune.parity.runners import CPU_PROVIDER, onnxrt_session

    _, result = calibrated.get("plainmamba_pruned", precision)
    session = onnxrt_session(result.directory / MODEL_FILE, providers=[CPU_PROVIDER])
    shape = result.manifest.input["shape"]
    out = session.run(None, {"images": np.zeros(shape, np.float32)})[0]
    assert out.shape == (shape[0], 100) and np.isfinite(out).all()


def _embedded(name):
    import ssmprune.models.digits as digits

    return digits.embedded_weights(name)


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
@pytest.mark.parametrize("name", ["vim_digits", "plainmamba_digits"])
def test_int8_matches_fp32_on_digits(tmp_path, name, pruned, exports):  # noqa: F811
    weights = _embedded(name)
    if weights is None:
        pytest.skip(f"no embedded weights for {name} in ssmprune/assets "
                    "(experiments/digits.py train writes them)")
    src = exports.shipped_digits(name, f"{name}_top" if pruned else None)
    config = read_export(src)[1].config
    # Pruned: percentile ranges from 256 scans (benchmarks/RESULTS.md, int8 on digits).
    options = (CalibrateOptions(method="percentile", samples=256) if pruned
               else CalibrateOptions(method="minmax", samples=64))
    result = calibrate(src, DigitsData(config, "train"), options,
                       tmp_path / "int8", holdout=DigitsData(config, "held_out"))
    held = result.report["held_out"]["outputs"]["logits"]
    assert held["samples"] == 360
    assert held["top1"] >= 0.99
    assert abs(held["accuracy_quantized"] - held["accuracy_fp32"]) <= 0.01
    assert result.report["passed"]
