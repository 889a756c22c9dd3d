"""Fuzz: mutated export and engine manifests (types, keys, nesting, encodings, truncation) over
every command that reads them: run, parity, build, calibrate."""

from __future__ import annotations

import json

import pytest
from fuzzing import INTEGRITY, fuzz_settings, run_checked
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


# Free-form by the schemas' design (tool name -> version; custom_ops: list[dict[str, Any]],
# a description): a key added, renamed or retyped there is no tampering.
FREE_FORM = {"versions", "tools", "custom_ops"}
# Known loose (reported on issue 15, not fixed here): an export's ``config`` is checked only
# where a command uses it (``"patch_size": null`` passes ``run``, ``build`` and ``calibrate``'s
# manifest checks). Remove it from this set once the schema types the config per family.
KNOWN_LOOSE = {"config"}


def _defaults() -> dict[str, object]:
    """Top-level fields the schemas give a default: leaving out one whose value was that
    default says the same thing."""
    import dataclasses

    from ssmprune.engine.manifest import EngineManifest
    from ssmprune.exporter.manifest import Manifest

    out = {}
    for cls in (Manifest, EngineManifest):
        for f in dataclasses.fields(cls):
            if f.name in ("format", "schema_version"):  # checked before the schema
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
    return out


DEFAULTS = _defaults()


def _shape(data, prefix=()) -> dict[tuple, str]:
    """Every key / index path of a JSON value and its JSON type (int and float are one)."""
    kind = {bool: "bool", int: "number", float: "number", str: "string", type(None): "null",
            list: "list", dict: "object"}[type(data)]
    out = {prefix: kind}
    if prefix and prefix[-1] in FREE_FORM | KNOWN_LOOSE:  # at any depth (an engine's source)
        return out
    items = data.items() if isinstance(data, dict) else enumerate(data) \
        if isinstance(data, list) else ()
    for k, v in items:
        out.update(_shape(v, (*prefix, k)))
    return out


def tampered(mutated: bytes, original: bytes) -> bool:
    """``mutated`` is not JSON, or has a key or list item missing or added, or a value of
    another JSON type: what a schema check must refuse. (A same-typed value changed,
    ``"model": "vim_zzz"``, may pass the schema: a manifest holds no sha256 of itself.)
    A key added at the top level is no tampering either (see below)."""
    try:
        parsed, before, after = json.loads(original), None, _shape(json.loads(mutated))
    except (ValueError, RecursionError):  # not JSON (or not UTF-8) at all
        return True
    before = _shape(parsed)
    # A key left out whose value was its schema default says the same (see DEFAULTS).
    for key, value in parsed.items():
        if (key,) not in after and key in DEFAULTS and DEFAULTS[key] == value:
            before = {k: v for k, v in before.items() if k[:1] != (key,)}
    # A key added at the top level is ignored by design (manifest_schema.TOP_LEVEL).
    added = {k[0] for k in after if len(k) == 1 and k not in before and after[()] == "object"}
    return {k: v for k, v in after.items() if not (k[:1] and k[0] in added)} != before


@pytest.mark.parametrize("command, examples", [("run", 30), ("parity", 20), ("build", 20),
                                               ("calibrate", 20)])
def test_mutated_export_manifest(command, examples, digits_exports, workspace):
    @fuzz_settings(examples)
    @given(model=MODELS, data=st.data())
    def check(model, data):
        with workspace() as ws:
            export_dir = ws.copy_export(digits_exports[model])
            manifest = export_dir / MANIFEST_FILE
            original = manifest.read_bytes()
            mutated = data.draw(mutated_json(original, ws.fill))
            manifest.write_bytes(mutated)
            run_checked(ws, _args(command, ws, export_dir), ok=_ok(command),
                        env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"},
                        refused_by=INTEGRITY if tampered(mutated, original) else None)

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
            original = manifest.read_bytes()
            mutated = data.draw(mutated_json(original, ws.fill))
            manifest.write_bytes(mutated)
            args = (["run", engine, "--repeats", 1] if command == "run" else
                    ["parity", export_dir, "--engine", engine, "--runtimes", "torch,trt",
                     "--samples", 1])
            run_checked(ws, args, refused_by=INTEGRITY if tampered(mutated, original) else None)

    check()
