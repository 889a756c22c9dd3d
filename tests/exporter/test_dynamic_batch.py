"""Dynamic batch (`export --batch dynamic[:MAX]`): one ONNX file, any batch from 1 to MAX.

The reference is the PyTorch model itself, run at each batch; ONNX Runtime runs the one
file at batch 1, 3 and 8 (the parity runner and a plain session alike).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from cli_helpers import assert_one_line_error, invoke
from exporter.export_cases import DYNAMIC_MAX, dynamic_digits_export, exports  # noqa: F401
from ssmprune.exporter.manifest import read_export
from ssmprune.exporter.export import model_from_manifest
from ssmprune.parity.compare import run_parity
from ssmprune.parity.runners import CPU_PROVIDER, onnxrt_session

MAX = DYNAMIC_MAX
BATCHES = (1, 3, 8)
SMALL = ("vim_pruned", "plainmamba_pruned")  # small pruned vim_t and plainmamba_l1


@pytest.fixture(scope="module")
def dynamic_exports(exports, dynamic_digits_export):  # noqa: F811
    out = {case: exports.get(case, max_batch=MAX).directory for case in SMALL}
    return {**out, "vim_digits_top": dynamic_digits_export}


@pytest.mark.parametrize("name", [*SMALL, "vim_digits_top"])
def test_one_file_runs_every_batch(dynamic_exports, name):
    directory, manifest = read_export(dynamic_exports[name])
    assert manifest.max_batch == MAX and manifest.dynamic and manifest.batch == 1
    assert manifest.input["shape"][0] == "batch" and manifest.outputs[0]["shape"][0] == "batch"
    model = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    reference = model_from_manifest(manifest)
    session = onnxrt_session(directory / "model.onnx", 0, providers=[CPU_PROVIDER])
    generator = torch.Generator().manual_seed(3)
    for b in BATCHES:
        x = torch.randn((b, *manifest.input["shape"][1:]), generator=generator)
        with torch.inference_mode():
            expected = reference(x).numpy()
        (actual,) = session.run(None, {"images": x.numpy()})
        assert actual.shape == expected.shape == (b, manifest.outputs[0]["shape"][1])
        rel = np.abs(actual - expected).max() / np.abs(expected).max()
        assert rel <= 1e-4, (b, rel)


@pytest.mark.parametrize("batch", BATCHES)
def test_parity_at_several_batches(dynamic_exports, batch):
    report = run_parity(dynamic_exports["vim_digits_top"], runtimes=("torch", "onnxrt"),
                        samples=8, batch=batch)
    assert report.passed and report.batch == batch
    assert report.comparisons[0].max_rel <= 1e-4


def test_a_batch_past_the_maximum_is_one_line(dynamic_exports):
    result, _, stderr = invoke("parity", dynamic_exports["vim_digits_top"], "--batch", MAX + 1)
    assert_one_line_error(result, stderr, f"dynamic batch of 1 to {MAX}", f"not {MAX + 1}")


def test_run_takes_the_images_in_one_batch(dynamic_exports, tmp_path):
    from skimage import data
    from PIL import Image

    files = []
    for i, name in enumerate(("astronaut", "coffee", "chelsea")):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(getattr(data, name)()).save(files[-1])
    result, stdout, _ = invoke("run", dynamic_exports["vim_digits_top"], *files)
    assert result.exit_code == 0, result.output
    assert f"dynamic batch 1 to {MAX}" in stdout and "input (3, 3, 32, 32)" in stdout


@pytest.mark.parametrize("spec, fragment", [
    ("dynamic:1", "2..256"), ("dynamic:257", "2..256"), ("dynamic:x", "MAX in dynamic:MAX"),
    ("many", "a number or dynamic[:MAX]"), ("0", "out of range")])
def test_bad_batch_specs_are_one_line(tmp_path, spec, fragment):
    result, _, stderr = invoke("export", "vim_digits", "--batch", spec, "-o", tmp_path / "x")
    assert_one_line_error(result, stderr, fragment)
    assert not (tmp_path / "x").exists()


def test_the_manifest_must_agree_with_its_batch(dynamic_exports, tmp_path):
    directory = dynamic_exports["vim_digits_top"]
    data = json.loads((directory / "manifest.json").read_text())
    from ssmprune.exporter.manifest import Manifest
    from ssmprune.errors import BadInputFileError

    for change in ({"max_batch": None}, {"batch": MAX + 1}, {"max_batch": 1}):
        with pytest.raises(BadInputFileError):
            Manifest.from_dict({**data, **change}, "m")
