"""``ssmprune calibrate`` through click: a good run, and bad input as one line, exit 2,
nothing written."""

import dataclasses
import json

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from exporter.export_cases import exports  # noqa: F401  (session fixture)
from ssmprune.cli import SummaryGroup
from ssmprune.cli.calibrate import register


@click.group(cls=SummaryGroup)
def cli():
    """Test group with the calibrate command registered."""


register(cli)


@pytest.fixture(scope="module")
def source(exports):  # noqa: F811
    return exports.get("vim_pruned").directory


def _run(*args):
    return CliRunner().invoke(cli, ["calibrate", *map(str, args)])


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_calibrate_folder(tmp_path, source, precision):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"nope")
    out, report = tmp_path / precision, tmp_path / "report.json"
    result = _run(source, "--data", images, "-o", out, "--samples", 8, "--holdout", images,
                  "--report", report, "--precision", precision, "--method", "minmax",
                  "--allow-miss")
    assert result.exit_code == 0, result.output
    assert f"({precision}, minmax, 4 samples" in result.output
    assert "skipped 1 unreadable file(s)" in result.output
    assert "none in the scan or gather" in result.output
    assert f"acc {precision}" in result.output
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["precision"] == precision
    data = json.loads(report.read_text())
    assert data["precision"] == precision
    assert data["calibration"]["outputs"]["logits"]["samples"] == 4
    assert data["calibration"]["skipped"] == 1


def _make_bad(kind, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    if kind == "empty":
        return folder, []
    if kind == "non_images":
        (folder / "a.txt").write_text("text")
        (folder / "b.jpg").write_bytes(b"not an image")
        return folder, []
    if kind == "no_resize":
        Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(folder / "a.png")
        return folder, ["--no-resize"]
    if kind == "other_model":
        np.savez(folder / "cal.npz", images=np.zeros((4, 3, 64, 64), np.float32))
        return folder / "cal.npz", []
    raise AssertionError(kind)


def _assert_one_line_error(result, tmp_path, out, *fragments):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize("precision", ["int8", "fp8"])
@pytest.mark.parametrize("kind", ["empty", "non_images", "no_resize", "other_model"])
def test_bad_input_one_line_exit_2_no_output(tmp_path, source, kind, precision):
    data, extra = _make_bad(kind, tmp_path)
    out = tmp_path / "out"
    result = _run(source, "--data", data, "-o", out, "--holdout", "none",
                  "--precision", precision, *extra)
    _assert_one_line_error(result, tmp_path, out)


def test_selection_of_another_precision(tmp_path, source):
    out = tmp_path / "out"
    result = _run(source, "--data", "skimage", "-o", out, "--precision", "fp8",
                  "--selection", "int8")
    _assert_one_line_error(result, tmp_path, out, "--selection fp32 or fp8")


def test_fp8_needs_opset_19(tmp_path, exports):  # noqa: F811
    out = tmp_path / "out"
    result = _run(exports.get("vim_pruned", opset=18).directory, "--data", "skimage",
                  "-o", out, "--precision", "fp8", "--samples", 2)
    _assert_one_line_error(result, tmp_path, out, "opset 18", "--opset 19")


def test_not_an_export(tmp_path):
    result = _run(tmp_path, "--data", "skimage", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "manifest.json" in result.output


@pytest.fixture
def impossible_tolerance(monkeypatch):
    """Every verdict misses: top-1 agreement above 100 % (the mechanism, not a model)."""
    from ssmprune.parity import tolerances

    real = tolerances.tolerance_for
    monkeypatch.setattr(tolerances, "tolerance_for", lambda precision, output: dataclasses.replace(
        real(precision, output), top1=1.01))


def test_a_missed_verdict_writes_nothing(tmp_path, source, impossible_tolerance):
    out, report = tmp_path / "int8", tmp_path / "report.json"
    result = _run(source, "--data", "skimage", "--samples", 4, "--holdout-samples", 4,
                  "-o", out, "--report", report)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "misses its tolerance on the held_out set" in errors[0]
    assert "on 4 samples" in errors[0] and "--allow-miss" in errors[0]
    assert "Traceback" not in result.output
    assert not out.exists() and not report.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_allow_miss_writes_and_warns(tmp_path, source, impossible_tolerance):
    out = tmp_path / "int8"
    result = _run(source, "--data", "skimage", "--samples", 4, "--holdout-samples", 4,
                  "-o", out, "--allow-miss")
    assert result.exit_code == 0, result.output
    assert "[EXCEEDED]" in result.output and "written anyway (--allow-miss)" in result.stderr
    assert json.loads((out / "manifest.json").read_text())["precision"] == "int8"


def test_the_default_method_is_the_measured_best(tmp_path, source):
    from ssmprune.defaults import CALIBRATION_METHOD

    assert CALIBRATION_METHOD == "percentile"
    out = tmp_path / "int8"
    result = _run(source, "--data", "skimage", "--samples", 4, "--holdout-samples", 4,
                  "-o", out, "--allow-miss")
    assert result.exit_code == 0, result.output
    assert "(int8, percentile, 4 samples" in result.output
