"""`ssmprune export` and `ssmprune parity` on the command line: outputs, errors, exit codes."""

import json

import pytest
from exporter.export_cases import exports  # noqa: F401  (fixture)
from parity.engine_cases import fake_engine, pretend_tensorrt

from cli_helpers import assert_one_line_error, invoke, tampered_copy
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE


def test_help_is_fast_and_lists_commands():
    result, out, _ = invoke("--help")
    assert result.exit_code == 0
    assert "export" in out and "parity" in out
    for command in ("export", "parity"):
        result, out, _ = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage" in out


def test_export_then_parity(tmp_path):
    out = tmp_path / "vim"
    result, stdout, stderr = invoke("export", "vim_t", "--img-size", 32, "--keep-ratio", "0.5",
                                    "--prune-after", "12", "--flavor", "standard", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, MODEL_FILE]
    assert "wrote" in stdout and "custom nodes: none" in stdout
    assert "nodes by op type:" in stdout and "export time" in stdout
    assert "torch.export" in stderr and stderr.splitlines()[-1].startswith("PASSED | Runtime:")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["flavor"] == "standard" and manifest["prune"]["keep_ratio"] == 0.5

    result, stdout, stderr = invoke("parity", out, "--samples", 2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(stdout)
    assert report["passed"] is True
    (c,) = report["comparisons"]
    assert set(c) >= {"runtime", "reference", "output", "max_abs", "mean_abs", "max_rel",
                      "top1_agreement"}
    assert c["max_rel"] <= 1e-4 and c["top1_agreement"] == 1.0


def test_parity_table(exports):
    result, stdout, _ = invoke("parity", exports.get("plainmamba_pruned").directory,
                               "--samples", 2)
    assert result.exit_code == 0, result.output
    assert "onnxrt" in stdout and "logits" in stdout and "[ok]" in stdout
    assert "runtimes: torch (cpu), onnxrt (" in stdout and "fp32: max_rel <= 0.0001" in stdout


def test_parity_failure_exits_nonzero_with_json(exports, tmp_path):
    source = exports.get("vim_dense").directory
    target = tmp_path / "tampered"
    target.mkdir()
    (target / MODEL_FILE).write_bytes((source / MODEL_FILE).read_bytes())
    data = json.loads((source / MANIFEST_FILE).read_text())
    data["weights"] = {"seed": 7}
    (target / MANIFEST_FILE).write_text(json.dumps(data))
    result, stdout, stderr = invoke("parity", target, "--samples", 2, "--json")
    assert json.loads(stdout)["passed"] is False
    assert_one_line_error(result, stderr, "onnxrt logits: max_rel")


def test_export_preset_for_another_model(tmp_path):
    result, _, stderr = invoke("export", "vim_t", "--prune", "plainmamba_l1_paper",
                               "-o", tmp_path / "out")
    assert_one_line_error(result, stderr, "plainmamba_l1_paper", "vim_t")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, fragment", [
    (["--batch", "0"], "--batch"),
    (["--opset", "12"], "--opset"),
    (["--checkpoint", "missing.pth"], "missing.pth"),
])
def test_export_bad_options(tmp_path, args, fragment):
    result, _, stderr = invoke("export", "vim_t", "-o", tmp_path / "out", *args)
    assert_one_line_error(result, stderr, fragment)
    assert list(tmp_path.iterdir()) == []


def test_parity_without_manifest(tmp_path, exports):
    (tmp_path / MODEL_FILE).write_bytes(
        (exports.get("vim_dense").directory / MODEL_FILE).read_bytes())
    result, _, stderr = invoke("parity", tmp_path)
    assert_one_line_error(result, stderr, "no manifest.json")
    result, _, stderr = invoke("parity", tmp_path / MODEL_FILE)
    assert_one_line_error(result, stderr, "no manifest.json")


def test_parity_foreign_onnx_with_manifest(tmp_path, exports):
    """A manifest whose listed file is a valid ONNX model that ssmprune did not write."""
    import hashlib

    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    data = onnx.helper.make_model(graph).SerializeToString()
    (tmp_path / MODEL_FILE).write_bytes(data)
    manifest = json.loads((exports.get("vim_dense").directory / MANIFEST_FILE).read_text())
    manifest["files"][MODEL_FILE] = {"sha256": hashlib.sha256(data).hexdigest(),
                                     "bytes": len(data)}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    result, _, stderr = invoke("parity", tmp_path)
    assert_one_line_error(result, stderr, "not written by `ssmprune export`")


def test_parity_sha_mismatch(tmp_path, exports):
    result, _, stderr = invoke("parity", tampered_copy(exports.get("vim_dense").directory,
                                                       tmp_path))
    assert_one_line_error(result, stderr, "does not match the sha256")


def test_parity_wrong_batch(exports):
    result, _, stderr = invoke("parity", exports.get("vim_dense").directory, "--batch", 4)
    assert_one_line_error(result, stderr, "exported for batch 1, not 4", "--batch 4")


def test_parity_missing_directory(tmp_path):
    result, _, stderr = invoke("parity", tmp_path / "nowhere")
    assert_one_line_error(result, stderr, "does not exist")


def test_parity_bad_image(tmp_path, exports):
    (tmp_path / "fake.png").write_text("not an image")
    result, _, stderr = invoke("parity", exports.get("vim_dense").directory,
                               "--images", tmp_path / "fake.png")
    assert_one_line_error(result, stderr, "not a readable image")


def test_parity_trt_without_engine(exports):
    result, _, stderr = invoke("parity", exports.get("vim_dense").directory,
                               "--runtimes", "torch,onnxrt,trt")
    assert_one_line_error(result, stderr, "the trt runtime needs --engine ENGINE")


def test_parity_trt_without_gpu(exports, tmp_path, monkeypatch):
    pretend_tensorrt(monkeypatch, installed=True, gpu=None)
    directory = exports.get("vim_dense").directory
    engine = fake_engine(directory, tmp_path / "m.engine")
    result, stdout, stderr = invoke("parity", directory, "--runtimes", "torch,onnxrt,trt",
                                    "--engine", engine, "--json")
    assert_one_line_error(result, stderr, "running engine m.engine needs an NVIDIA GPU")
    assert stdout == ""
