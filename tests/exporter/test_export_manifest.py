"""The manifest: contents, sha256 checks, atomic writing, rebuilding the model from it."""

import json

import numpy as np
import onnx
import pytest
import torch
from exporter.export_cases import CASES, exports  # noqa: F401  (fixture)

from ssmprune.errors import BadInputFileError, ConfigError, SsmpruneError
from ssmprune.exporter import ExportOptions, export, model_from_manifest, read_export
from ssmprune.exporter import manifest as manifest_mod
from ssmprune.exporter.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    sha256_file,
    verify_model_file,
    write_export,
)
from ssmprune.models import create_model
from ssmprune.parity.runners import onnxrt_session


def test_manifest_records_the_export(exports):
    result = exports.get("vim_pruned")
    data = json.loads((result.directory / MANIFEST_FILE).read_text())
    assert data["format"] == "ssmprune-onnx" and data["schema_version"] == 1
    assert data["model"] == "vim_t" and data["family"] == "vim"
    assert data["config"]["embed_dim"] == 32 and data["overrides"]["depth"] == 3
    assert data["prune"] == {"keep_ratio": 0.7, "prune_after": [1, 2], "importance": "clip",
                             "alignment": "gap"}
    assert data["weights"] == {"seed": 0}
    assert data["input"] == {"name": "images", "shape": [1, 3, 32, 32], "dtype": "float32"}
    assert data["outputs"] == [{"name": "logits", "shape": [1, 100], "dtype": "float32"}]
    assert (data["batch"], data["precision"], data["flavor"], data["opset"]) == (
        1, "fp32", "plugins", 20)
    assert [(o["domain"], o["name"], o["version"], o["nodes"]) for o in data["custom_ops"]] == [
        ("ssmprune", "SelectiveScan", 1, 6), ("ssmprune", "TokenGather", 1, 2)]
    for lib in ("torch", "onnx", "onnxruntime", "onnxscript", "python", "ssmprune"):
        assert data["versions"][lib]
    assert data["files"][MODEL_FILE]["sha256"] == sha256_file(result.directory / MODEL_FILE)
    assert data["files"][MODEL_FILE]["bytes"] == result.file_bytes
    props = {p.key: p.value for p in onnx.load(str(result.directory / MODEL_FILE)).metadata_props}
    assert props["ssmprune.format"] == "ssmprune-onnx"


def test_read_export_accepts_the_directory_or_its_file(exports):
    result = exports.get("vim_pruned")
    for path in (result.directory, result.directory / MODEL_FILE):
        directory, manifest = read_export(path)
        assert directory == result.directory and manifest.model == "vim_t"


def copy_export(result, tmp_path):
    target = tmp_path / "copy"
    target.mkdir()
    for name in (MODEL_FILE, MANIFEST_FILE):
        (target / name).write_bytes((result.directory / name).read_bytes())
    return target


def test_sha256_mismatch_is_refused(exports, tmp_path):
    target = copy_export(exports.get("vim_pruned"), tmp_path)
    data = bytearray((target / MODEL_FILE).read_bytes())
    data[-1] ^= 0xFF
    (target / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BadInputFileError, match="does not match the sha256"):
        read_export(target)


@pytest.mark.parametrize("content, message", [
    (None, "has no manifest.json"),
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "something-else"}), "not an ssmprune export manifest"),
    (json.dumps({"format": "ssmprune-onnx", "schema_version": 99}), "schema_version 99"),
])
def test_bad_manifests_are_refused(exports, tmp_path, content, message):
    target = copy_export(exports.get("vim_pruned"), tmp_path)
    if content is None:
        (target / MANIFEST_FILE).unlink()
    else:
        (target / MANIFEST_FILE).write_text(content)
    with pytest.raises(BadInputFileError, match=message):
        read_export(target)


def test_foreign_onnx_file_is_refused(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    path = tmp_path / MODEL_FILE
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(BadInputFileError, match="not written by `ssmprune export`"):
        verify_model_file(path)
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(BadInputFileError, match="not a readable ONNX file"):
        verify_model_file(path)


def small_manifest() -> Manifest:
    return Manifest(model="m", family="f", config={}, overrides={}, prune=None,
                    prune_preset=None, weights={"seed": 0}, input={}, outputs=[], batch=1,
                    precision="fp32", flavor="plugins", opset=20, custom_ops=[])


def test_write_export_failure_leaves_nothing(tmp_path, monkeypatch):
    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(manifest_mod, "sha256_file", broken)
    with pytest.raises(OSError):
        write_export(tmp_path / "out", {MODEL_FILE: b"abc"}, small_manifest())
    assert list(tmp_path.iterdir()) == []


def test_write_export_replaces_files_of_an_existing_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MODEL_FILE).write_bytes(b"old")
    (out / "notes.txt").write_text("kept")
    write_export(out, {MODEL_FILE: b"new"}, small_manifest())
    assert (out / MODEL_FILE).read_bytes() == b"new"
    assert (out / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left
    assert json.loads((out / MANIFEST_FILE).read_text())["files"][MODEL_FILE]["bytes"] == 3


def test_write_export_refuses_a_file_as_directory(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(BadInputFileError, match="not a directory"):
        write_export(tmp_path / "out", {MODEL_FILE: b"x"}, small_manifest())


@pytest.mark.parametrize("options, message", [
    (dict(batch=0), "--batch"),
    (dict(opset=17), "--opset"),
    (dict(precision="bf16"), "--dtype must be one of fp32, fp16"),
    (dict(flavor="fancy"), "--flavor"),
    (dict(prune="plainmamba_l1_paper"), "is for plainmamba_l1, not vim_t"),
    (dict(checkpoint="/nonexistent/ckpt.pth"), "ckpt.pth"),
])
def test_bad_export_options_write_nothing(tmp_path, options, message):
    c = CASES["vim_pruned"]
    base = dict(prune=c.prune, overrides=c.overrides)
    with pytest.raises(SsmpruneError, match=message):
        export(ExportOptions(c.model, **{**base, **options}), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["vim_pruned", "plainmamba_dense"])
def test_model_from_manifest_rebuilds_the_exported_model(exports, case):
    result = exports.get(case)
    _, manifest = read_export(result.directory)
    rebuilt = model_from_manifest(manifest)
    c = CASES[case]
    torch.manual_seed(0)
    original = create_model(c.model, prune=c.prune, **c.overrides)
    for (name, a), b in zip(original.state_dict().items(), rebuilt.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randn(manifest.input["shape"])
    with torch.inference_mode():
        expected = rebuilt(x).numpy()
    actual = onnxrt_session(result.directory / MODEL_FILE, 1).run(None, {"images": x.numpy()})[0]
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_manifest_config_drift_is_refused(exports):
    _, manifest = read_export(exports.get("vim_pruned").directory)
    manifest.config = {**manifest.config, "embed_dim": 64}
    with pytest.raises(BadInputFileError, match="config differs"):
        model_from_manifest(manifest)


def test_checkpoint_weights_are_recorded_and_checked(tmp_path):
    from ssmprune.models import save_checkpoint

    c = CASES["vim_dense"]
    torch.manual_seed(3)
    model = create_model(c.model, **c.overrides)
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint(model, str(ckpt))
    result = export(ExportOptions(c.model, checkpoint=str(ckpt), overrides=c.overrides),
                    tmp_path / "out")
    assert result.manifest.weights == {"checkpoint": str(ckpt.resolve()),
                                       "sha256": sha256_file(ckpt)}
    # The recorded path lies outside the export: it is given again, never opened on the
    # manifest's word (issue 15).
    with pytest.raises(BadInputFileError, match="outside the export folder.*--checkpoint"):
        model_from_manifest(result.manifest)
    rebuilt = model_from_manifest(result.manifest, str(ckpt))
    assert torch.equal(rebuilt.head.weight, model.head.weight)
    moved = tmp_path / "moved.pth"
    ckpt.rename(moved)
    with pytest.raises(BadInputFileError, match="missing"):
        model_from_manifest(result.manifest, str(ckpt))
    assert torch.equal(model_from_manifest(result.manifest, str(moved)).head.weight,
                       model.head.weight)
    moved.write_bytes(moved.read_bytes() + b"\0")
    with pytest.raises(BadInputFileError, match="does not match the sha256"):
        model_from_manifest(result.manifest, str(moved))


def test_config_errors_are_config_errors():
    assert issubclass(ConfigError, SsmpruneError)
