"""`ssmprune run` on exported files: an export folder or .onnx in ONNX Runtime (fp32 and int8),
a TensorRT engine (GPU only), and their one-line errors."""

import numpy as np
import pytest
from exporter.export_cases import exports  # noqa: F401  (session fixture)
from parity.engine_cases import fake_engine, pretend_tensorrt
from PIL import Image

from cli_helpers import assert_one_line_error, invoke, tampered_copy
from ssmprune.engine import trt as trt_mod
from ssmprune.exporter.manifest import MODEL_FILE
from ssmprune.models.digits import embedded_weights

DIGITS = ["--checkpoint", str(embedded_weights("vim_digits")), "--prune", "vim_digits_top"]
needs_gpu = pytest.mark.skipif(
    trt_mod.current_gpu_arch() is None or trt_mod.installed() is None,
    reason="running an engine needs an NVIDIA GPU and TensorRT (or TensorRT-RTX)")


@pytest.fixture(scope="module")
def digits_export(exports):  # noqa: F811
    """vim_digits with its shipped weights, pruned by its preset, exported at batch 1."""
    return exports.shipped_digits("vim_digits", "vim_digits_top")


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    """Three real scans of scikit-learn digits (0, 1, 2) as 32 px PNGs."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i, scan in enumerate(load_digits().images[:3]):
        path = folder / f"digit{i}.png"
        Image.fromarray((scan / 16 * 255).astype(np.uint8)).convert("RGB").resize(
            (32, 32), Image.BILINEAR).save(path)
        paths.append(str(path))
    return paths


def predictions(stdout: str) -> dict[str, list[tuple[int, float]]]:
    """``NAME: top-5 classes c: p, ...`` lines -> {NAME: [(class, probability), ...]}."""
    out = {}
    for line in stdout.splitlines():
        name, sep, rest = line.partition(": top-5 classes ")
        if sep:
            out[name] = [(int(c), float(p)) for c, p in (pair.split(": ")
                                                          for pair in rest.split(", "))]
    return out


def assert_same_predictions(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys() and expected
    for name, preds in expected.items():
        assert actual[name][0][0] == preds[0][0], name  # top-1
        got = dict(actual[name])
        for c, p in preds:
            assert got.get(c, -1) == pytest.approx(p, abs=1e-4), (name, c)


def test_onnxrt_run_matches_pytorch_run(digits_export, digit_images):
    import onnxruntime as ort

    result, out, err = invoke("run", "vim_digits", *digit_images, *DIGITS, "--repeats", 1)
    assert result.exit_code == 0, err
    reference = predictions(out)
    assert [p[0][0] for p in reference.values()] == [0, 1, 2]  # the digits themselves
    for target in (digits_export, digits_export / MODEL_FILE):
        result, out, err = invoke("run", target, *digit_images, "--repeats", 2)
        assert result.exit_code == 0, err
        assert_same_predictions(predictions(out), reference)
        assert out.startswith(f"{target}: vim_digits pruned (vim_digits_top), fp32, static "
                              "batch 1, weights from ")
        assert f"runtime ONNX Runtime {ort.__version__}, " in out
        assert "ExecutionProvider" in out.splitlines()[-1]
        assert "3 image(s) in 3 batch(es) of 1 (the static batch); reported" in out
        assert "latency " in out and " ms per batch of 1 (median of 2, ONNX Runtime" in out
        assert err.splitlines()[-1].startswith("PASSED | Runtime:")


def test_static_batch_is_padded_and_only_real_images_reported(exports, tmp_path):
    directory = exports.get("vim_dense", batch=2).directory
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.new("RGB", (40, 36), (i * 90, 20, 200 - i * 60)).save(paths[-1])
    result, out, err = invoke("run", directory, *paths, "--repeats", 1)
    assert result.exit_code == 0, err
    assert "input (2, 3, 32, 32) -> output (2, 100) float32" in out
    assert "3 image(s) in 2 batch(es) of 2 (the static batch), the last padded" in out
    together = predictions(out)
    assert list(together) == [str(p) for p in paths]
    result, out, err = invoke("run", directory, paths[2], "--repeats", 1)  # padded to a pair
    assert result.exit_code == 0, err
    assert_same_predictions(predictions(out), {str(paths[2]): together[str(paths[2])]})


def test_calibrated_export_runs(exports, tmp_path):
    from ssmprune.calibration import CalibrateOptions, PhotoCropsData, calibrate
    from ssmprune.exporter import read_export

    source = exports.get("vim_dense").directory
    config = read_export(source)[1].config
    out_dir = calibrate(source, PhotoCropsData(config, count=4), CalibrateOptions(samples=4),
                        tmp_path / "int8").directory
    result, out, err = invoke("run", out_dir, "--repeats", 1)
    assert result.exit_code == 0, err
    assert ", int8, static batch 1" in out.splitlines()[0]
    assert len(predictions(out)) == 1 and "latency" in out


@pytest.mark.parametrize("args, flags", [
    (["--checkpoint", "w.pth"], "--checkpoint"),
    (["--prune", "vim_t_paper", "--seed", "3"], "--seed, --prune"),
    (["--img-size", "64", "--keep-ratio", "0.5", "--prune-after", "1"],
     "--img-size, --keep-ratio, --prune-after"),
])
def test_model_options_are_refused_for_a_file(exports, args, flags):
    result, _, err = invoke("run", exports.get("vim_dense").directory, *args)
    assert_one_line_error(result, err, f"{flags} build a model by name", "fixed")


def test_folder_without_manifest(exports, tmp_path):
    (tmp_path / MODEL_FILE).write_bytes((exports.get("vim_dense").directory / MODEL_FILE)
                                        .read_bytes())
    for target in (tmp_path, tmp_path / MODEL_FILE):
        result, _, err = invoke("run", target)
        assert_one_line_error(result, err, "no manifest.json")


def test_sha256_mismatch(exports, tmp_path):
    result, _, err = invoke("run", tampered_copy(exports.get("vim_dense").directory, tmp_path))
    assert_one_line_error(result, err, "does not match the sha256")


def test_missing_path_and_unknown_model(tmp_path):
    result, _, err = invoke("run", tmp_path / "nowhere" / "model.onnx")
    assert_one_line_error(result, err, "does not exist")
    result, _, err = invoke("run", "vim_xl")
    assert_one_line_error(result, err, "unknown model 'vim_xl'")


def test_truncated_engine(exports, tmp_path):
    engine = fake_engine(exports.get("vim_dense").directory, tmp_path / "m.engine")
    engine.write_bytes(engine.read_bytes()[:100])
    result, _, err = invoke("run", engine)
    assert_one_line_error(result, err, "m.engine is truncated: 100 bytes")


@pytest.mark.parametrize("installed, message", [
    (True, "needs an NVIDIA GPU (torch sees no CUDA device): not found"),
    (False, "needs an NVIDIA GPU (torch sees no CUDA device) and TensorRT"),
])
def test_engine_without_gpu_or_tensorrt(exports, tmp_path, monkeypatch, installed, message):
    pretend_tensorrt(monkeypatch, installed=installed, gpu=None)
    engine = fake_engine(exports.get("vim_dense").directory, tmp_path / "m.engine")
    result, _, err = invoke("run", engine)
    assert_one_line_error(result, err, f"running engine m.engine {message}")


def test_engine_of_a_bare_onnx_cannot_preprocess(exports, tmp_path, monkeypatch):
    pretend_tensorrt(monkeypatch, installed=True, gpu=None)
    engine = fake_engine(exports.get("vim_dense").directory, tmp_path / "m.engine", source=False)
    result, _, err = invoke("run", engine)
    assert_one_line_error(result, err, "built from a bare .onnx file")


@needs_gpu
def test_engine_run_matches_onnxrt_run(exports, digit_images, tmp_path):
    from ssmprune.engine.build import BuildOptions
    from ssmprune.engine.save import build_to_file

    flavour, gpu = trt_mod.installed(), trt_mod.current_gpu_arch()
    if flavour.is_rtx and gpu not in flavour.supported_targets():
        pytest.skip(f"{flavour.display} does not support this GPU ({gpu})")
    directory = exports.get("vim_dense").directory
    _, engine, _ = build_to_file(directory, tmp_path / "m.engine", BuildOptions(plugins=False))
    result, out, err = invoke("run", engine, *digit_images, "--repeats", 2)
    assert result.exit_code == 0, err
    assert f"runtime {flavour.display} on {gpu}" in out
    result, reference, err = invoke("run", directory, *digit_images, "--repeats", 1)
    assert result.exit_code == 0, err
    assert_same_predictions(predictions(out), predictions(reference))
