"""Issue 15: tampered and malformed export manifests on the command line.

Every command that reads an export (`run`, `parity`, `build`, `calibrate`) refuses a tampered
or malformed one in one ``error:`` line, exit 2, writing nothing: a model.onnx whose sha256
entry (or the whole ``files`` map) was removed, an edited ``format`` or ``schema_version``, a
file name outside the export folder, fields that disagree with the ONNX file, and manifests of
the wrong shape (wrong types, missing keys, binary, huge, deeply nested).
"""

from __future__ import annotations

import json
import math
import os

import pytest
from exporter.export_cases import vim_digits_export  # noqa: F401  (session fixture)

from cli_helpers import assert_one_line_error, invoke, tampered_copy
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE


def _command(name: str, directory, out) -> list:
    """The command line of ``name`` on ``directory``; whatever it writes goes under ``out``."""
    return {
        "run": ["run", directory, "--repeats", 1],
        "parity": ["parity", directory, "--samples", 2],
        "build": ["build", directory, "--no-plugins", "--target", "sm_86", "--opt-level", 0,
                  "-o", out / "model.engine"],
        "calibrate": ["calibrate", directory, "--data", "skimage", "--samples", 2,
                      "--holdout", "none", "-o", out / "int8"],
    }[name]


COMMANDS = ("run", "parity", "build", "calibrate")


def refused(command: str, directory, tmp_path, monkeypatch, *fragments) -> None:
    """``command`` on ``directory`` fails in one line holding ``fragments``, writing nothing."""
    monkeypatch.setenv("SSMPRUNE_TENSORRT", "tensorrt_rtx")
    out = tmp_path / "out"
    before = sorted(os.listdir(directory))
    result, _, stderr = invoke(*_command(command, directory, out))
    assert_one_line_error(result, stderr, *fragments)
    assert not out.exists()
    assert sorted(os.listdir(directory)) == before


def _drop_model_entry(m):
    del m["files"][MODEL_FILE]


def _drop_files(m):
    del m["files"]


def _edit_format(m):
    m["format"] = "ssmprune-onnx-but-trust-me"


def _newer_schema(m):
    m["schema_version"] = 99


def _no_schema_version(m):
    m.pop("schema_version", None)
    m.pop("format_version", None)


def _absolute_name(m):
    m["files"]["/etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}


def _dotdot_name(m):
    m["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}


# model.onnx has a weight bit flipped in every case: before issue 15, run and parity passed
# on it and build built an engine from it, for the first two edits and (build) the third.
TAMPERED = {
    "files_entry_removed": (_drop_model_entry, ("lists no sha256 for model.onnx",)),
    "files_removed": (_drop_files, ("lists no sha256 for model.onnx",)),
    "format_edited": (_edit_format, ("not an ssmprune export manifest",)),
    "newer_schema_version": (_newer_schema, ("schema_version 99", "upgrade ssmprune")),
    "no_schema_version": (_no_schema_version, ("no schema_version",)),
    "absolute_file_name": (_absolute_name, ("/etc/passwd", "not a file name inside")),
    "dotdot_file_name": (_dotdot_name, ("../../etc/passwd", "not a file name inside")),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", list(TAMPERED))
def test_tampered_export_is_refused(vim_digits_export, tmp_path, monkeypatch, kind,  # noqa: F811
                                    command):
    edit, fragments = TAMPERED[kind]
    directory = tampered_copy(vim_digits_export, tmp_path / "tampered", edit=edit)
    refused(command, directory, tmp_path, monkeypatch, "manifest.json", *fragments)


@pytest.mark.parametrize("command", COMMANDS)
def test_model_file_linked_from_outside_is_refused(vim_digits_export, tmp_path,  # noqa: F811
                                                   monkeypatch, command):
    """model.onnx is a symlink to the very file (its sha256 matches) in another folder."""
    directory = tampered_copy(vim_digits_export, tmp_path / "linked", flip=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (directory / MODEL_FILE).rename(elsewhere / MODEL_FILE)
    (directory / MODEL_FILE).symlink_to(elsewhere / MODEL_FILE)
    refused(command, directory, tmp_path, monkeypatch, "model.onnx", "outside")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("edit, fragments", [
    # parity judged an fp32 file by the loose int8 row and passed it
    (lambda m: m.update(precision="int8"), ("precision int8", "fp32")),
    # parity: a broadcast ValueError traceback
    (lambda m: m["outputs"][0].update(shape=[1, 11]), ("logits", "[1, 10]", "[1, 11]")),
    (lambda m: m["input"].update(name="pixels"), ("images", "pixels")),
])
def test_fields_that_disagree_with_the_onnx_are_refused(vim_digits_export, tmp_path,  # noqa: F811
                                                       monkeypatch, command, edit, fragments):
    directory = tampered_copy(vim_digits_export, tmp_path / "edited", edit=edit, flip=False)
    refused(command, directory, tmp_path, monkeypatch, "model.onnx", *fragments)


@pytest.mark.parametrize("checkpoint", ["/etc/passwd", "../../etc/passwd"])
def test_parity_reads_no_checkpoint_outside_the_export(vim_digits_export, tmp_path,  # noqa: F811
                                                       monkeypatch, checkpoint):
    """Before issue 15 parity read and hashed /etc/passwd as the checkpoint ("does not match
    the sha256"): a guess of its contents was confirmed or denied."""
    def edit(m):
        m["weights"] = {"checkpoint": checkpoint, "sha256": "0" * 64}

    directory = tampered_copy(vim_digits_export, tmp_path / "weights", edit=edit, flip=False)
    monkeypatch.setenv("SSMPRUNE_TENSORRT", "tensorrt_rtx")
    result, _, stderr = invoke("parity", directory, "--samples", 2)
    assert_one_line_error(result, stderr, "etc/passwd")
    assert "does not match" not in stderr  # the file was not read
    if checkpoint.startswith("/"):  # recorded for information; only --checkpoint replaces it
        assert "--checkpoint" in stderr


def _nested(depth: int):
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def _set_config(key, value):
    return lambda m: m["config"].update({key: value})


MALFORMED = {
    "files_list": lambda m: m.update(files=[MODEL_FILE]),
    "files_string": lambda m: m.update(files=MODEL_FILE),
    "input_null": lambda m: m.update(input=None),
    "input_without_name": lambda m: m["input"].pop("name"),
    "img_size_string": _set_config("img_size", "32"),
    "img_size_negative": _set_config("img_size", -32),
    "mean_empty": _set_config("mean", []),
    "mean_nan": _set_config("mean", [math.nan] * 3),
    "batch_string": lambda m: m.update(batch="1"),
    "prune_string": lambda m: m.update(prune="vim_digits_top"),
    "prune_list": lambda m: m.update(prune=[0.9, [2, 3, 5]]),
    "overrides_list": lambda m: m.update(overrides=[["depth", 8]]),
    "overrides_disagree": lambda m: m.update(overrides={"depth": "8"}),
    "weights_string": lambda m: m.update(weights="embedded"),
    "weights_seed_and_checkpoint": lambda m: m["weights"].update(seed=3),
    "nested_value": _set_config("notes", _nested(64)),
    "too_large": lambda m: m.update(notes="x" * (1 << 20)),
}
RAW = {
    "binary": bytes(range(256)) * 8,
    "deeply_nested": b"[" * 100_000 + b"]" * 100_000,
    "not_an_object": b"[1, 2, 3]\n",
    "duplicate_keys": None,  # filled from the real manifest in the test
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", [*MALFORMED, *RAW])
def test_malformed_manifest_is_one_line(vim_digits_export, tmp_path, monkeypatch,  # noqa: F811
                                        kind, command):
    raw = RAW.get(kind)
    if kind == "duplicate_keys":  # a second "precision" after the first: which one is real?
        text = (vim_digits_export / MANIFEST_FILE).read_text().rstrip()
        raw = (text[:-1] + ', "precision": "int8"}\n').encode()
    directory = tampered_copy(vim_digits_export, tmp_path / kind, edit=MALFORMED.get(kind),
                              manifest_bytes=raw, flip=False)
    refused(command, directory, tmp_path, monkeypatch, "manifest.json")


def test_untampered_digits_export_passes(vim_digits_export):  # noqa: F811
    """The legitimate case keeps working: the embedded weights, recorded by path and sha256."""
    data = json.loads((vim_digits_export / MANIFEST_FILE).read_text())
    assert data["weights"]["checkpoint"].endswith("vim_digits.safetensors")
    assert len(data["weights"]["sha256"]) == 64
    result, stdout, stderr = invoke("parity", vim_digits_export, "--samples", 2)
    assert result.exit_code == 0, stderr
    assert "[ok]" in stdout
