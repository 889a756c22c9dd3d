"""Fuzz: mutated export and engine manifests (types, keys, nesting, encodings, truncation) over
every command that reads them: run, parity, build, calibrate."""

from __future__ import annotations

import pytest
from fuzzing import fuzz_settings, run_checked
from hypothesis import given
from hypothesis import strategies as st
from mutations import mutated_json
from parity.engine_cases import fake_engine

from ssmprune.exporter.manifest import MANIFEST_FILE

MODELS = st.sampled_from(["vim_digits", "plainmamba_digits"])


def _args(command: str, ws, export_dir):
    """The command line of ``command`` on a mutated export. build asks for bf16, which
    TensorRT-RTX refuses for an fp32 ONNX after the export has been read and checked, and
    calibrate names missing data, refused after the same: a manifest that passes costs no
    build or calibration (those run whole in test_fuzz_options)."""
    return {
        "run": ["run", export_dir, "--repeats", 1],
        "parity": ["parity", export_dir, "--samples", 1],
        "build": ["build", export_dir, "--no-plugins", "--precision", "bf16",
                  "-o", ws.root / "e.engine"],
        "calibrate": ["calibrate", export_dir, "--data", ws.root / "missing", "-o",
                      ws.root / "int8"],
    }[command]


def _ok(command: str):
    return {
        "run": lambda r: "top-5 classes" in r.stdout,
        "parity": lambda r: "runtimes:" in r.stdout,
    }.get(command)


@pytest.mark.parametrize("command, examples", [("run", 30), ("parity", 20), ("build", 20),
                                               ("calibrate", 20)])
def test_mutated_export_manifest(command, examples, digits_exports, workspace):
    @fuzz_settings(examples)
    @given(model=MODELS, data=st.data())
    def check(model, data):
        with workspace() as ws:
            export_dir = ws.copy_export(digits_exports[model])
            manifest = export_dir / MANIFEST_FILE
            manifest.write_bytes(data.draw(mutated_json(manifest.read_bytes(), ws.fill)))
            run_checked(ws, _args(command, ws, export_dir), ok=_ok(command),
                        env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"})

    check()


@pytest.mark.parametrize("command, examples", [("run", 20), ("parity", 15)])
def test_mutated_engine_manifest(command, examples, digits_exports, workspace):
    """An engine (a stand-in: every check made before TensorRT loads one) whose manifest is
    mutated; with no GPU here, a manifest that passes ends at "needs a GPU", one line."""
    @fuzz_settings(examples)
    @given(data=st.data())
    def check(data):
        with workspace() as ws:
            export_dir = ws.copy_export(digits_exports["vim_digits"])
            engine = fake_engine(export_dir, ws.root / "vim.engine")
            manifest = ws.root / "vim.engine.json"
            manifest.write_bytes(data.draw(mutated_json(manifest.read_bytes(), ws.fill)))
            args = (["run", engine, "--repeats", 1] if command == "run" else
                    ["parity", export_dir, "--engine", engine, "--runtimes", "torch,trt",
                     "--samples", 1])
            run_checked(ws, args)

    check()
