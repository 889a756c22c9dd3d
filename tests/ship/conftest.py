"""Shared by the shipping tests: one export of vim_digits, one bundle built from it with
TensorRT-RTX (the only TensorRT build, a few seconds), stand-in engines for what cannot
be built here (full TensorRT), photos in several modes, and a clean interpreter for the
bundle's run.py (neither torch nor ssmprune importable)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from exporter.export_cases import exports  # noqa: F401  (session fixture)
from PIL import Image

from ssmprune.engine import trt as trt_mod
from ssmprune.engine.manifest import EngineManifest, write_engine
from ssmprune.exporter.manifest import MODEL_FILE, read_export

RTX = trt_mod.installed("tensorrt_rtx")
needs_rtx = pytest.mark.skipif(
    RTX is None, reason="TensorRT-RTX (tensorrt_rtx_bindings) is not installed: `make setup`")
TARGET = "sm_86"
ENGINE_BYTES = b"\x00a stand-in engine, never deserialized\xff" * 64
TRT_MODULES = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings", "tensorrt_bindings")

# Runs a script with some top-level modules made unimportable (argv[1], comma-separated):
# a finder first on sys.meta_path refuses them, whatever sys.path holds (the venv has an
# editable ssmprune and torch). Then argv[2] runs as __main__ with the remaining arguments.
HARNESS = """\
import importlib.abc, runpy, sys
BLOCKED = set(filter(None, sys.argv[1].split(",")))
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None
sys.meta_path.insert(0, Blocked())
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    leaked = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "ssmprune"))
    if leaked:
        print("LEAKED", leaked, file=sys.stderr)
"""


def run_clean(script: Path, *args, blocked=("torch", "ssmprune"), cwd: Optional[Path] = None
              ) -> subprocess.CompletedProcess:
    """``python -I script ARGS`` with ``blocked`` unimportable and a bare environment."""
    harness = Path(cwd or script.parent).parent / "harness.py"
    harness.write_text(HARNESS)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(harness.parent)}
    return subprocess.run([sys.executable, "-I", str(harness), ",".join(blocked), str(script),
                           *map(str, args)], cwd=cwd or script.parent, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def digits_export(exports) -> Path:  # noqa: F811
    """vim_digits with its shipped weights, pruned by its preset, exported at batch 1."""
    return exports.shipped_digits("vim_digits", "vim_digits_top")


@pytest.fixture(scope="session")
def built_bundle(digits_export, tmp_path_factory) -> Path:
    """`ssmprune bundle EXPORT --target sm_86 --no-plugins` (TensorRT-RTX, on the CPU);
    tests copy it before changing anything."""
    if RTX is None:
        pytest.skip("TensorRT-RTX (tensorrt_rtx_bindings) is not installed: `make setup`")
    from click.testing import CliRunner

    from ssmprune.cli import main

    out = tmp_path_factory.mktemp("bundles") / "vim_digits_bundle"
    result = CliRunner().invoke(main, ["bundle", str(digits_export), "--target", TARGET,
                                       "--no-plugins", "--opt-level", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def bundle_copy(built_bundle, tmp_path) -> Path:
    """A copy of the bundle in its own folder, as a device would receive it."""
    return Path(shutil.copytree(built_bundle, tmp_path / "device" / "bundle"))


def stand_in_engine(export_dir: Path, path: Path, *, flavour: str = "tensorrt",
                    version: str = "10.13.0.35", plugin_form: Optional[str] = "aot",
                    targets: Optional[list[str]] = None, built_on: Optional[str] = "sm_90",
                    source: bool = True, version_compatible: bool = False) -> Path:
    """``path`` and ``path.json`` as `ssmprune build` writes them from ``export_dir``, with
    made-up engine bytes: what full TensorRT (not installable here) would write."""
    _, manifest = read_export(export_dir)
    onnx = {"file": MODEL_FILE, "sha256": manifest.files[MODEL_FILE]["sha256"],
            "inputs": [{"name": manifest.input["name"], "shape": manifest.input["shape"],
                        "dtype": "FLOAT"}],
            "outputs": [{"name": o["name"], "shape": o["shape"], "dtype": "FLOAT"}
                        for o in manifest.outputs]}
    plugins = ([{"name": n, "version": "1", "namespace": "ssmprune"}
                for n in ("SelectiveScan", "TokenGather")] if plugin_form else [])
    write_engine(path, ENGINE_BYTES, EngineManifest(
        engine={}, tensorrt={"flavour": flavour, "version": version},
        gpu={"targets": targets, "built_on": built_on, "hardware_compatible": False},
        precision="fp32", strongly_typed=True, version_compatible=version_compatible,
        plugins=plugins, plugin_form=plugin_form,
        ptx_version="8.4" if plugin_form == "aot" else None, onnx=onnx,
        source=dataclasses.asdict(manifest) if source else None))
    return path


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    """Real photos (scikit-image's) in the modes and formats people have: RGB PNG, JPEG
    with an EXIF rotation, 8-bit grey, 16-bit grey, a palette with transparency."""
    from ssmprune.images import sample_photo

    folder = tmp_path_factory.mktemp("photos")
    cat, coffee = sample_photo("chelsea"), sample_photo("coffee")
    paths = {"cat.png": cat, "grey.png": coffee.convert("L"),
             "palette.png": cat.convert("P", palette=Image.ADAPTIVE)}
    for name, img in paths.items():
        if name == "palette.png":
            img.info["transparency"] = 0
            img.save(folder / name, transparency=0)
        else:
            img.save(folder / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show it upright
    coffee.save(folder / "rotated.jpg", exif=exif, quality=90)
    deep = (np.asarray(coffee.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(deep).save(folder / "deep.png")  # mode I;16
    return sorted(folder.iterdir())


def sums_of(folder: Path) -> dict[str, str]:
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    return {line[66:]: line[:64] for line in lines}


def engine_json(folder: Path) -> dict:
    (path,) = folder.glob("*.engine.json")
    return json.loads(path.read_text())
