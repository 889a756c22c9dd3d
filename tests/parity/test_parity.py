"""Parity of ONNX Runtime with PyTorch through the same function the CLI runs."""

import json

import numpy as np
import pytest
from exporter.export_cases import CASES, exports  # noqa: F401  (fixture)

from ssmprune.errors import ConfigError, InputShapeError
from ssmprune.exporter import ExportOptions, export
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE
from ssmprune.parity.compare import _compare, parity_samples, run_parity
from ssmprune.parity.tolerances import TOLERANCES, ToleranceError, tolerance_for


def assert_fp32_parity(report, samples):
    assert report.passed, report.to_dict()
    assert len(report.comparisons) == 1
    c = report.comparisons[0]
    assert (c.runtime, c.reference, c.output) == ("onnxrt", "torch", "logits")
    assert c.samples == samples
    assert c.max_rel <= 1e-4
    assert c.top1_agreement == 1.0


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnxrt_matches_torch(case, exports):
    report = run_parity(exports.get(case).directory, samples=4)
    assert_fp32_parity(report, 4)
    assert report.inputs == {"real": 2, "random": 2}


def test_standard_flavor_matches_torch(exports):
    assert_fp32_parity(run_parity(exports.get("plainmamba_pruned", flavor="standard").directory,
                                  samples=2), 2)


def test_batches_are_filled_and_images_used(exports, tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 50), (200, 10, 10)).save(tmp_path / "red.png")
    result = exports.get("vim_pruned", batch=3)
    report = run_parity(result.directory, images=[str(tmp_path)], samples=4)
    assert_fp32_parity(report, 6)  # 4 rounded up to two batches of 3
    assert report.inputs == {"real": 1, "random": 5}
    assert report.sources == [str(tmp_path / "red.png")]


def test_wrong_reference_weights_fail(exports, tmp_path):
    """A manifest that rebuilds other weights than the file's: the comparison fails."""
    result = exports.get("vim_dense")
    target = tmp_path / "tampered"
    target.mkdir()
    (target / MODEL_FILE).write_bytes((result.directory / MODEL_FILE).read_bytes())
    data = json.loads((result.directory / MANIFEST_FILE).read_text())
    data["weights"] = {"seed": 1}
    (target / MANIFEST_FILE).write_text(json.dumps(data))
    report = run_parity(target, samples=2)
    assert not report.passed
    assert report.comparisons[0].max_rel > 1e-4
    assert report.to_dict()["passed"] is False


def test_batch_the_file_was_not_exported_for(exports):
    with pytest.raises(InputShapeError, match="exported for batch 1, not 8"):
        run_parity(exports.get("vim_dense").directory, batch=8)


@pytest.mark.parametrize("runtimes", [("torch",), ("torch", "tensorflow"), ("torch", "torch")])
def test_bad_runtimes(exports, runtimes):
    with pytest.raises(ConfigError, match="--runtimes"):
        run_parity(exports.get("vim_dense").directory, runtimes=runtimes)


def test_onnxrt_as_reference(exports):
    report = run_parity(exports.get("vim_dense").directory, runtimes=("onnxrt", "torch"),
                        samples=2)
    assert report.passed and report.comparisons[0].reference == "onnxrt"


def test_tolerance_table():
    assert tolerance_for("fp32", "logits").max_rel == 1e-4
    assert tolerance_for("fp16", "logits").max_rel == 1e-2
    assert tolerance_for("bf16", "anything").max_rel == 1e-2
    assert tolerance_for("int8", "logits").top1 == 0.99
    assert tolerance_for("fp8", "logits").top1 == 0.99
    assert set(TOLERANCES) == {"fp32", "fp16", "bf16", "int8", "fp8"}
    with pytest.raises(ToleranceError):
        tolerance_for("int4", "logits")
    assert tolerance_for("int8+fp16", "logits") == tolerance_for("int8", "logits")


@pytest.mark.parametrize("outliers, precision, passed", [
    (0, "fp32", True), (1, "fp32", False), (1, "fp16", True), (2, "fp16", False)])
def test_share_of_samples_within_max_rel(outliers, precision, passed):
    """fp16 lets one sample in ten past max_rel (a pruned model's near-tied token
    choice); fp32 none; a non-finite output always fails."""
    rng = np.random.default_rng(0)
    expected = rng.standard_normal((10, 5))
    expected[:, 0] += 10  # class 0 wins clearly, so top-1 agrees throughout
    actual = expected * (1 + 1e-5)
    actual[:outliers, 1:] += 1.0
    c = _compare("onnxrt", "torch", "logits", actual, expected, precision)
    assert c.passed == passed and c.top1_agreement == 1.0
    actual[5, 0] = np.nan
    assert not _compare("onnxrt", "torch", "logits", actual, expected, "fp16").passed


def test_default_samples_mix_photos_and_random(exports):
    from ssmprune.exporter import read_export

    _, manifest = read_export(exports.get("vim_dense").directory)
    x, counts, names = parity_samples(manifest, samples=16)
    assert x.shape == (16, 3, 32, 32)
    assert counts == {"real": 8, "random": 8}
    assert len(set(names)) == 8 and all(n.startswith("skimage:") for n in names)


REAL_SIZE = [("vim_s", "vim_s_paper"), ("plainmamba_l1", "plainmamba_l1_paper")]


@pytest.mark.slow
@pytest.mark.parametrize("model, preset", REAL_SIZE)
def test_real_size_pruned_parity(model, preset, tmp_path):
    """Must show: pruned vim_s and plainmamba_l1 at 224 px, seeded weights, 16 inputs
    (8 photos, 8 random): max relative error on logits <= 1e-4, top-1 agreement 100 %."""
    result = export(ExportOptions(model, prune=preset), tmp_path / model)
    assert result.seconds < 120
    assert result.file_bytes <= 1.05 * result.weight_bytes
    report = run_parity(result.directory, samples=16)
    assert_fp32_parity(report, 16)
    assert report.inputs == {"real": 8, "random": 8}
