"""A stand-in engine for an export: every check made before TensorRT loads an engine, without
TensorRT or a GPU. Shared by tests/parity and tests/test_run_cli.py
(``from parity.engine_cases import ...``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from ssmprune.engine import trt as trt_mod
from ssmprune.engine.manifest import EngineManifest, write_engine
from ssmprune.exporter.manifest import MODEL_FILE, read_export

ENGINE_BYTES = b"\x00not a real engine\xff" * 64
# The flavour the stand-in engine was "built" with; ``pretend_tensorrt`` installs it.
FLAVOUR = trt_mod.Flavour("tensorrt", SimpleNamespace(__name__="fake_tensorrt"), "10.13.0.35")


def fake_engine(export_dir: Path, path: Path, source: bool = True,
                onnx_sha256: Optional[str] = None, precision: str = "fp32") -> Path:
    """Write ``path`` and ``path.json`` as `ssmprune build` would from ``export_dir``.

    source: record the export manifest (False: built from a bare .onnx).
    onnx_sha256: the ONNX the engine was built from (default: the export's).
    """
    _, manifest = read_export(export_dir)
    onnx = {"file": MODEL_FILE,
            "sha256": onnx_sha256 or manifest.files[MODEL_FILE]["sha256"],
            "inputs": [{"name": manifest.input["name"], "shape": manifest.input["shape"],
                        "dtype": "FLOAT"}],
            "outputs": [{"name": o["name"], "shape": o["shape"], "dtype": "FLOAT"}
                        for o in manifest.outputs]}
    write_engine(path, ENGINE_BYTES, EngineManifest(
        engine={}, tensorrt={"flavour": FLAVOUR.name, "version": FLAVOUR.version},
        gpu={"targets": None, "built_on": None, "hardware_compatible": False},
        precision=precision, strongly_typed=True, onnx=onnx,
        source=dataclasses.asdict(manifest) if source else None))
    return path


def pretend_tensorrt(monkeypatch, installed: bool = True, gpu: Optional[str] = None) -> None:
    """This machine as the checks see it: ``FLAVOUR`` installed or no TensorRT, a GPU or none."""
    monkeypatch.setattr(trt_mod, "installed", lambda name=None: FLAVOUR if installed else None)
    monkeypatch.setattr(trt_mod, "current_gpu_arch", lambda: gpu)
