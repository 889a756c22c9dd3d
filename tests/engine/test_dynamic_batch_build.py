"""Dynamic-batch engines: `build --batch-range MIN:OPT:MAX` (an optimisation profile).

TensorRT-RTX builds them ahead of time on this CPU; running them needs a GPU, so the
run-time batch check is tested on the engine's manifest, which is what refuses a batch
outside the built range before anything is loaded.
"""

from __future__ import annotations

import onnx
import pytest

from cli_helpers import assert_one_line_error, invoke
from ssmprune.engine import trt as trt_mod
from ssmprune.engine.build import batch_profile
from ssmprune.engine.errors import EngineFileError, UnsupportedBuildOptionError
from ssmprune.engine.runtime import check_engine
from ssmprune.exporter import ExportOptions, export
from ssmprune.parity.runners import engine_runtime
from exporter.export_cases import DYNAMIC_MAX, dynamic_digits_export  # noqa: F401

needs_rtx = pytest.mark.skipif(trt_mod.installed("tensorrt_rtx") is None,
                               reason="TensorRT-RTX (tensorrt_rtx_bindings) is not installed")
MAX = DYNAMIC_MAX


@pytest.fixture(scope="module")
def digits_exports(tmp_path_factory, dynamic_digits_export):  # noqa: F811
    static = export(ExportOptions("vim_digits", batch=2),
                    tmp_path_factory.mktemp("static") / "vim_digits").directory
    return dynamic_digits_export, static


@pytest.fixture(scope="module")
def engine(digits_exports, tmp_path_factory):
    path = tmp_path_factory.mktemp("dynamic-engine") / "vd.engine"
    result, stdout, stderr = invoke("build", digits_exports[0], "--no-plugins", "--target",
                                    "sm_86", "--opt-level", "0", "--batch-range", "1:4:12",
                                    "-o", path)
    assert result.exit_code == 0, stderr
    assert "dynamic batch: 1 to 12, tuned at 4" in stdout
    return path


@needs_rtx
def test_the_profile_is_built_and_recorded(engine):
    manifest = check_engine(engine)
    assert manifest.batch_range == [1, 4, 12]
    assert manifest.onnx["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert manifest.input_shape(None, "e") == (1, 3, 32, 32)
    assert manifest.input_shape(12, "e") == (12, 3, 32, 32)


@needs_rtx
@pytest.mark.parametrize("batch", [0, 13])
def test_a_batch_outside_the_range_is_refused_before_loading(engine, batch):
    with pytest.raises(EngineFileError, match="built for batches 1 to 12"):
        engine_runtime(engine, check_engine(engine), batch)


@needs_rtx
def test_the_default_range_comes_from_the_export(digits_exports, tmp_path):
    result, stdout, stderr = invoke("build", digits_exports[0], "--no-plugins", "--target",
                                    "sm_86", "--opt-level", "0", "-o", tmp_path / "e.engine")
    assert result.exit_code == 0, stderr
    assert check_engine(tmp_path / "e.engine").batch_range == [1, 8, MAX]


@pytest.mark.parametrize("which, spec, fragment", [
    (0, "8:2:4", "not 1 <= MIN <= OPT <= MAX"),
    (0, "1:8:32", "past the export's largest batch, 16"),
    (0, "1:8", "give MIN:OPT:MAX"),
    (1, "1:2:4", "static batch of 2"),
])
def test_bad_ranges_are_one_line(digits_exports, tmp_path, which, spec, fragment):
    out = tmp_path / "e.engine"
    result, _, stderr = invoke("build", digits_exports[which], "--no-plugins", "--target",
                               "sm_86", "--batch-range", spec, "-o", out)
    assert_one_line_error(result, stderr, fragment)
    assert not out.exists()


def test_a_bare_dynamic_onnx_needs_a_range(digits_exports):
    model = onnx.load(str(digits_exports[0] / "model.onnx"), load_external_data=False)
    with pytest.raises(UnsupportedBuildOptionError, match="give --batch-range"):
        batch_profile(model, None, None)
    assert batch_profile(model, (2, 3, 5), None) == (2, 3, 5)
