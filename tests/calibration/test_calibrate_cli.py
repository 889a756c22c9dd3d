"""``ssmprune calibrate`` through click: a good run, and bad input as one line, exit 2,
nothing written."""

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from exporter.export_cases import exports  # noqa: F401  (session fixture)
from ssmprune.cli import SummaryGroup
from ssmprune.commands_calibrate import register


@click.group(cls=SummaryGroup)
def cli():
    """Test group with the calibrate command registered."""


register(cli)


@pytest.fixture(scope="module")
def source(exports):  # noqa: F811
    return exports.get("vim_pruned").directory


def _run(*args):
    return CliRunner().invoke(cli, ["calibrate", *map(str, args)])


def test_calibrate_folder(tmp_path, source):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(
            images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"nope")
    out, report = tmp_path / "int8", tmp_path / "report.json"
    result = _run(source, "--data", images, "-o", out, "--samples", 8, "--holdout", images,
                  "--report", report)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file(s)" in result.output
    assert "none in the scan or gather" in result.output
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    data = json.loads(report.read_text())
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


@pytest.mark.parametrize("kind", ["empty", "non_images", "no_resize", "other_model"])
def test_bad_input_one_line_exit_2_no_output(tmp_path, source, kind):
    data, extra = _make_bad(kind, tmp_path)
    out = tmp_path / "out"
    result = _run(source, "--data", data, "-o", out, "--holdout", "none", *extra)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_fp8_without_modelopt(tmp_path, source):
    pytest.importorskip  # noqa: B018
    import importlib.util

    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("nvidia-modelopt is installed here")
    result = _run(source, "--data", "skimage", "-o", tmp_path / "out", "--precision", "fp8")
    assert result.exit_code == 2 and "nvidia-modelopt" in result.output
    assert not (tmp_path / "out").exists()


def test_not_an_export(tmp_path):
    result = _run(tmp_path, "--data", "skimage", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "manifest.json" in result.output
