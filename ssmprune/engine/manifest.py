"""The engine manifest: what an engine file needs to be trusted, written next to it.

``vim_t.engine`` gets ``vim_t.engine.json``::

    {"kind": "ssmprune-engine", "format": 1,
     "engine": {"file": "vim_t.engine", "bytes": 123, "sha256": "..."},
     "tensorrt": {"flavour": "tensorrt_rtx", "version": "1.7.1.116"},
     "gpu": {"targets": ["sm_86"], "built_on": null,
             "hardware_compatible": false},
     "version_compatible": false,
     "precision": "fp32", "strongly_typed": true,
     "plugins": [{"name": "SelectiveScan", "version": "1", "namespace": "ssmprune"}],
     "plugin_form": "aot", "ptx_version": "8.4",
     "lowered_ops": {"ssmprune::SelectiveScan": 48},
     "onnx": {"file": "...", "sha256": "...", "inputs": [...], "outputs": [...]},
     "source": {...the export manifest, when there is one...},
     "tools": {"ssmprune": "0.1.0", "onnx": "1.23.2", ...},
     "build_seconds": 4.2}

``gpu.targets`` is None when TensorRT-RTX chose its default targets; with
full TensorRT the engine is for ``gpu.built_on`` (or, hardware-compatible,
for Ampere and later). ``plugin_form`` is the form of ssmprune's plugins the
engine holds (``v3``: Python IPluginV3 creators needed at run time; ``aot``:
kernels inside the engine, written in PTX ISA ``ptx_version``, which the
running driver must accept); both null without plugin layers.

Writes are atomic (a temporary file in the same folder, then rename), engine
first, manifest last: a manifest never describes a half-written engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ssmprune.engine.errors import EngineFileError
from ssmprune.exporter.manifest import sha256_file  # noqa: F401  (one sha256 helper; re-exported)

KIND = "ssmprune-engine"
FORMAT = 1
PathLike = Union[str, os.PathLike]


def write_atomic(path: PathLike, data: Union[bytes, memoryview]) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def manifest_path(engine_path: PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


@dataclass
class EngineManifest:
    """Everything recorded about one engine file (see the module docstring)."""

    engine: dict[str, Any]
    tensorrt: dict[str, str]
    gpu: dict[str, Any]
    precision: str
    strongly_typed: bool
    version_compatible: bool = False
    plugins: list[dict[str, str]] = field(default_factory=list)
    plugin_form: Optional[str] = None
    ptx_version: Optional[str] = None
    lowered_ops: dict[str, int] = field(default_factory=dict)
    onnx: dict[str, Any] = field(default_factory=dict)
    source: Optional[dict[str, Any]] = None
    tools: dict[str, str] = field(default_factory=dict)
    build_seconds: Optional[float] = None

    def to_json(self) -> str:
        return json.dumps({"kind": KIND, "format": FORMAT, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "EngineManifest":
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != KIND:
            raise EngineFileError(f"{where} is not an ssmprune engine manifest (kind {kind!r})")
        if data.get("format") != FORMAT:
            raise EngineFileError(f"{where} has manifest format {data.get('format')!r}; "
                                  f"this ssmprune reads format {FORMAT}: rebuild the engine")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as err:
            raise EngineFileError(f"{where} is missing manifest fields ({err})") from None


def write_engine(engine_path: PathLike, engine: Union[bytes, memoryview],
                 manifest: EngineManifest) -> tuple[Path, Path]:
    """Write the engine, then its manifest (both atomically); fills the engine's file fields."""
    engine_path = Path(engine_path)
    data = memoryview(engine).cast("B")
    write_atomic(engine_path, data)
    manifest.engine = {"file": engine_path.name, "bytes": data.nbytes,
                       "sha256": hashlib.sha256(data).hexdigest()}
    mpath = write_atomic(manifest_path(engine_path), manifest.to_json().encode())
    return engine_path, mpath


def read_manifest(engine_path: PathLike) -> EngineManifest:
    """The manifest next to ``engine_path``; ``EngineFileError`` when missing or unreadable."""
    mpath = manifest_path(engine_path)
    if not mpath.is_file():
        raise EngineFileError(f"no manifest {mpath.name} next to {engine_path}: an engine is "
                              "only trusted with the manifest `ssmprune build` writes")
    try:
        data = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EngineFileError(f"cannot read engine manifest {mpath}: {err}") from None
    return EngineManifest.from_dict(data, str(mpath))


def verify_engine_file(engine_path: PathLike, manifest: EngineManifest) -> None:
    """The engine file exists and has the size and sha256 its manifest records."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise EngineFileError(f"engine file {engine_path} does not exist")
    size, expected = engine_path.stat().st_size, int(manifest.engine.get("bytes", -1))
    if size < expected:
        raise EngineFileError(f"engine file {engine_path} is truncated: {size} bytes, "
                              f"its manifest records {expected}")
    if size != expected:
        raise EngineFileError(f"engine file {engine_path} has {size} bytes, its manifest "
                              f"records {expected}: not the engine this manifest describes")
    if sha256_file(engine_path) != manifest.engine.get("sha256"):
        raise EngineFileError(f"engine file {engine_path} does not match the sha256 in its "
                              "manifest: corrupted or replaced")
