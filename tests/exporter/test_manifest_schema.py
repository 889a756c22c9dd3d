"""Issue 15: one versioned schema for every manifest, checked on load.

The export manifest (``Manifest``, ``QuantizedManifest``) and the engine manifest
(``EngineManifest``): ``schema_version`` and what a manifest written before it reads as, the
file names confined to the manifest's folder with a mandatory sha256, bounded parsing, the
weights a manifest may point at, and fields checked against the ONNX file. The command-line
side of the same findings: ``test_tampered_exports_cli.py``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from exporter.export_cases import CASES, exports, vim_digits_export  # noqa: F401  (fixtures)

from ssmprune.engine.errors import EngineFileError
from ssmprune.engine.manifest import manifest_path, read_manifest
from ssmprune.errors import BadInputFileError
from ssmprune.exporter import ExportOptions, export, model_from_manifest, read_export
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE


def copy_with(source, target, edit=None):
    """A copy of the export folder ``source`` in ``target``, ``edit`` applied to its manifest."""
    shutil.copytree(source, target)
    if edit is not None:
        data = json.loads((target / MANIFEST_FILE).read_text())
        edit(data)
        (target / MANIFEST_FILE).write_text(json.dumps(data))
    return target


# ---- schema_version ------------------------------------------------------------------------

def test_export_writes_schema_version_1(vim_digits_export):  # noqa: F811
    data = json.loads((vim_digits_export / MANIFEST_FILE).read_text())
    assert data["format"] == "ssmprune-onnx" and data["schema_version"] == 1
    assert "format_version" not in data


def test_a_manifest_written_before_schema_version_reads_as_version_1(
        vim_digits_export, tmp_path):  # noqa: F811
    """Before issue 15 the key was ``format_version``; the fields were the same."""
    def legacy(m):
        m["format_version"] = m.pop("schema_version")

    directory, manifest = read_export(copy_with(vim_digits_export, tmp_path / "old", legacy))
    assert manifest.model == "vim_digits" and manifest.schema_version == 1

    def both(m):
        m["format_version"] = 2

    with pytest.raises(BadInputFileError, match="format_version 2.*schema_version 1"):
        read_export(copy_with(vim_digits_export, tmp_path / "both", both))


@pytest.mark.parametrize("version, message", [
    (2, "schema_version 2; this ssmprune reads schema_version 1: upgrade ssmprune"),
    (0, "schema_version 0"),
    ("1", "schema_version '1'"),
    (True, "schema_version True"),
])
def test_other_schema_versions_are_refused(vim_digits_export, tmp_path, version,  # noqa: F811
                                           message):
    target = copy_with(vim_digits_export, tmp_path / "v",
                       lambda m: m.update(schema_version=version))
    with pytest.raises(BadInputFileError, match=message):
        read_export(target)


# ---- files: inside the folder, sha256 mandatory ----------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../../etc/passwd", "sub/../../x", ".", "..",
                                  "", "a\\..\\b", "a\0b"])
def test_file_names_outside_the_folder_are_refused_unread(vim_digits_export, tmp_path,  # noqa: F811
                                                          name):
    def edit(m):
        m["files"][name] = {"sha256": "0" * 64, "bytes": 1}

    with pytest.raises(BadInputFileError, match="not a file name inside") as err:
        read_export(copy_with(vim_digits_export, tmp_path / "x", edit))
    assert "sha256" not in str(err.value)  # nothing was hashed: no oracle on other files


def test_a_symlink_inside_the_folder_is_followed_but_not_out_of_it(vim_digits_export,  # noqa: F811
                                                                   tmp_path):
    inside = copy_with(vim_digits_export, tmp_path / "inside")
    (inside / MODEL_FILE).rename(inside / "real.onnx")
    (inside / MODEL_FILE).symlink_to("real.onnx")
    assert read_export(inside)[0] == inside
    outside = copy_with(vim_digits_export, tmp_path / "outside")
    (outside / MODEL_FILE).rename(tmp_path / "model.onnx")
    (outside / MODEL_FILE).symlink_to(tmp_path / "model.onnx")
    with pytest.raises(BadInputFileError, match="outside"):
        read_export(outside)


@pytest.mark.parametrize("entry, message", [
    ({"bytes": 1490457}, "sha256"),
    ({"sha256": "0" * 63, "bytes": 1}, "sha256"),
    ({"sha256": "Z" * 64, "bytes": 1}, "sha256"),
    ({"sha256": "0" * 64, "bytes": "1"}, "bytes"),
    ({"sha256": "0" * 64, "bytes": 1, "skip_check": True}, "skip_check"),
])
def test_a_file_entry_needs_its_sha256_and_size(vim_digits_export, tmp_path, entry,  # noqa: F811
                                                message):
    target = copy_with(vim_digits_export, tmp_path / "e",
                       lambda m: m["files"].update({MODEL_FILE: entry}))
    with pytest.raises(BadInputFileError, match=message):
        read_export(target)


def test_a_file_of_another_size_is_refused_before_hashing(vim_digits_export,  # noqa: F811
                                                          tmp_path):
    target = copy_with(vim_digits_export, tmp_path / "s")
    with open(target / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BadInputFileError, match="bytes, not the .* its manifest records"):
        read_export(target)


# ---- bounded parsing -----------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00binary", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b'{"a": ' * 40 + b"1" + b"}" * 40, "nested"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": 1, "a": 2}', "twice"),
    (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),
    (b'{"a": "' + b"x" * (1 << 20) + b'"}', "larger than 1 MiB"),
])
def test_bounded_parsing(vim_digits_export, tmp_path, content, message):  # noqa: F811
    target = copy_with(vim_digits_export, tmp_path / "b")
    (target / MANIFEST_FILE).write_bytes(content)
    with pytest.raises(BadInputFileError, match=message):
        read_export(target)


# ---- fields checked against the ONNX file ------------------------------------------------

@pytest.mark.parametrize("precision, claimed", [("fp32", "fp16"), ("fp16", "fp32")])
def test_precision_must_be_the_one_the_onnx_carries(exports, tmp_path, precision,  # noqa: F811
                                                    claimed):
    source = exports.get("vim_dense", precision=precision).directory
    assert read_export(source)[1].precision == precision
    target = copy_with(source, tmp_path / "p", lambda m: m.update(precision=claimed))
    with pytest.raises(BadInputFileError,
                       match=f"precision {claimed}, but model.onnx carries {precision}"):
        read_export(target)


def test_input_shape_must_agree_with_config_and_batch(vim_digits_export, tmp_path):  # noqa: F811
    def edit(m):
        m["input"]["shape"] = [2, 3, 32, 32]

    with pytest.raises(BadInputFileError, match="batch 1"):
        read_export(copy_with(vim_digits_export, tmp_path / "i", edit))


# ---- weights: inside the folder, or the embedded weights by sha256 ---------------------------

def test_embedded_weights_are_found_by_sha256_wherever_they_were(vim_digits_export,  # noqa: F811
                                                                 tmp_path):
    """An export made by another install records that install's path: the embedded weights
    with the recorded sha256 are the ones this ssmprune ships."""
    def moved(m):
        m["weights"]["checkpoint"] = "/another/site-packages/ssmprune/assets/vim_digits.safetensors"

    target = copy_with(vim_digits_export, tmp_path / "w", moved)
    directory, manifest = read_export(target)
    assert model_from_manifest(manifest).config.num_classes == 10


def _checkpoint_export(tmp_path):
    from ssmprune.models import create_model, save_checkpoint

    c = CASES["vim_dense"]
    torch.manual_seed(3)
    ckpt = tmp_path / "ckpt.pth"
    save_checkpoint(create_model(c.model, **c.overrides), str(ckpt))
    return ckpt, export(ExportOptions(c.model, checkpoint=str(ckpt), overrides=c.overrides),
                        tmp_path / "out").directory


def test_a_checkpoint_inside_the_folder_is_used_one_outside_needs_checkpoint(tmp_path):
    from ssmprune.parity.compare import run_parity

    ckpt, directory = _checkpoint_export(tmp_path)
    with pytest.raises(BadInputFileError, match="outside the export folder.*--checkpoint"):
        run_parity(directory, samples=2)
    assert run_parity(directory, samples=2, checkpoint=str(ckpt)).passed
    shutil.copy(ckpt, directory / "weights.pth")
    data = json.loads((directory / MANIFEST_FILE).read_text())
    data["weights"]["checkpoint"] = "weights.pth"
    (directory / MANIFEST_FILE).write_text(json.dumps(data))
    assert run_parity(directory, samples=2).passed
    (directory / "weights.pth").unlink()
    (directory / "weights.pth").symlink_to(ckpt)  # the same bytes, outside the folder
    with pytest.raises(BadInputFileError, match="outside"):
        run_parity(directory, samples=2)


# ---- the engine manifest -----------------------------------------------------------------

@pytest.fixture
def engine(tmp_path, vim_digits_export):  # noqa: F811
    from parity.engine_cases import fake_engine

    return fake_engine(vim_digits_export, tmp_path / "m.engine")


def edit_engine_manifest(engine, edit):
    path = manifest_path(engine)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_engine_manifest_has_schema_version_1_and_reads_its_legacy_format(engine):
    data = json.loads(manifest_path(engine).read_text())
    assert data["kind"] == "ssmprune-engine" and data["schema_version"] == 1
    edit_engine_manifest(engine, lambda m: m.update(format=m.pop("schema_version")))
    assert read_manifest(engine).precision == "fp32"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(schema_version=2), "schema_version 2.*upgrade ssmprune"),
    (lambda m: m["engine"].pop("sha256"), "engine.sha256"),
    (lambda m: m["engine"].update(bytes="160"), "engine.bytes"),
    (lambda m: m["engine"].update(file="../m.engine"), "not a file name inside"),
    (lambda m: m["onnx"].update(file="/etc/passwd"), "not a file name inside"),
    (lambda m: m.update(gpu=None), "gpu"),
    (lambda m: m.update(plugins="SelectiveScan"), "plugins"),
    (lambda m: m.update(precision="int3"), "precision"),
    (lambda m: m["source"]["files"].pop(MODEL_FILE), "source"),
    (lambda m: m["source"].update(input=None), "source"),
    (lambda m: m["source"]["files"][MODEL_FILE].update(sha256="0" * 64),
     "source.*sha256.*onnx"),
    (lambda m: m["onnx"]["inputs"].append(dict(m["onnx"]["inputs"][0], name="extra")),
     "inputs and outputs .* are not its source export's"),
    (lambda m: m["onnx"]["outputs"][0].update(shape=[1, 11]), "not its source export's"),
])
def test_malformed_engine_manifest_is_one_error(engine, edit, message):
    edit_engine_manifest(engine, edit)
    with pytest.raises(EngineFileError, match=message):
        read_manifest(engine)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\xff\xff", "not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b" " * (1 << 20) + b"{}", "larger than 1 MiB"),
])
def test_engine_manifest_parsing_is_bounded(engine, content, message):
    manifest_path(engine).write_bytes(content)
    with pytest.raises(EngineFileError, match=message):
        read_manifest(engine)


def test_run_refuses_an_engine_whose_source_is_malformed(engine, monkeypatch):
    from parity.engine_cases import pretend_tensorrt

    from cli_helpers import assert_one_line_error, invoke

    pretend_tensorrt(monkeypatch, installed=True, gpu=None)
    edit_engine_manifest(engine, lambda m: m["source"]["config"].update(img_size="32"))
    result, _, stderr = invoke("run", engine)
    assert_one_line_error(result, stderr, "m.engine.json", "source", "config.img_size")

