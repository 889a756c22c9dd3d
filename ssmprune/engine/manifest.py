"""The engine manifest: what an engine file needs to be trusted, written next to it.

``vim_t.engine`` gets ``vim_t.engine.json``::

    {"kind": "ssmprune-engine", "schema_version": 1,
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

Reading checks the manifest before anything in it is used: bounded parsing,
``schema_version`` (a manifest written before it has ``format`` 1 instead,
read as version 1) and the schema (``ssmprune.manifest_schema``); file names
are plain names of the engine's folder, the engine's sha256 is mandatory;
``source`` must be a valid export manifest whose ``model.onnx`` sha256 is the
one the engine was built from, with the engine's inputs and outputs (names,
shapes).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, Field, with_config
from typing_extensions import TypedDict

from ssmprune.engine.errors import EngineFileError
from ssmprune.outputs import atomic_file, atomic_files
from ssmprune.exporter.manifest import BATCH_DIM, PRECISIONS, Manifest
from ssmprune.limits import MAX_BATCH
from ssmprune.exporter.manifest import sha256_file  # noqa: F401  (one sha256 helper; re-exported)
from ssmprune.manifest_schema import (
    SCHEMA_VERSION,
    STRICT,
    TOP_LEVEL,
    Count,
    FileName,
    Seconds,
    Sha256,
    Text,
    read_json,
    schema_version,
    validate,
)

KIND = "ssmprune-engine"
LEGACY_VERSION_KEY = "format"  # schema_version's name (then always 1) before issue 15
PathLike = Union[str, os.PathLike]


def write_atomic(path: PathLike, data: Union[bytes, memoryview]) -> Path:
    """Write ``data`` to ``path`` whole or not at all (``outputs.atomic_file``)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def manifest_path(engine_path: PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


@with_config(STRICT)
class EngineFile(TypedDict):
    file: FileName
    bytes: Count
    sha256: Sha256


@with_config(STRICT)
class TensorRTInfo(TypedDict):
    flavour: Literal["tensorrt", "tensorrt_rtx"]
    version: Text


@with_config(STRICT)
class GpuInfo(TypedDict):
    targets: Optional[list[Text]]
    built_on: Optional[Text]
    hardware_compatible: bool


@with_config(STRICT)
class PluginInfo(TypedDict):
    name: Text
    version: Text
    namespace: Text


@with_config(STRICT)
class EngineTensor(TypedDict):
    name: Text
    shape: list[int]  # -1 for a dynamic axis
    dtype: Text


BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]


@with_config(STRICT)
class OnnxInfo(TypedDict):
    """The ONNX the engine was built from (``file``: its name then, for information)."""

    file: FileName
    sha256: Sha256
    inputs: Annotated[list[EngineTensor], Field(min_length=1)]
    outputs: Annotated[list[EngineTensor], Field(min_length=1)]


def _precision(value: str) -> str:
    """fp32 | fp16 | bf16 | int8 | fp8, or a combination such as ``int8+fp16``."""
    if not all(part in PRECISIONS for part in value.split("+")):
        raise ValueError(f"not a precision ssmprune knows ({', '.join(PRECISIONS)}, "
                         "or a combination such as int8+fp16)")
    return value


@dataclass
class EngineManifest:
    """Everything recorded about one engine file (see the module docstring); the annotations
    are the schema of the manifest (``manifest_schema``)."""

    __pydantic_config__ = TOP_LEVEL

    engine: EngineFile
    tensorrt: TensorRTInfo
    gpu: GpuInfo
    precision: Annotated[str, AfterValidator(_precision)]
    strongly_typed: bool
    version_compatible: bool = False
    plugins: list[PluginInfo] = field(default_factory=list)
    plugin_form: Optional[Literal["v3", "aot"]] = None
    ptx_version: Optional[str] = None
    lowered_ops: dict[str, Count] = field(default_factory=dict)
    # (min, opt, max) of the optimisation profile of a dynamic-batch engine; None: static.
    batch_range: Optional[Annotated[list[BatchSize], Field(min_length=3, max_length=3)]] = None
    onnx: OnnxInfo = field(default_factory=dict)  # type: ignore[assignment]  (set by the builder)
    source: Optional[dict[str, Any]] = None  # the export manifest (``Manifest.from_dict``)
    tools: dict[str, str] = field(default_factory=dict)
    build_seconds: Optional[Seconds] = None

    def to_json(self) -> str:
        return json.dumps({"kind": KIND, "schema_version": SCHEMA_VERSION, **asdict(self)},
                          indent=2) + "\n"

    def batch_limits(self) -> tuple[int, int]:
        """(smallest, largest) batch the engine runs: (b, b) for a static batch b, the
        profile's min and max for a dynamic one (``Manifest.batch_range``'s twin)."""
        if self.batch_range is None:
            static = self.onnx["inputs"][0]["shape"][0]
            return static, static
        return self.batch_range[0], self.batch_range[2]

    def input_shape(self, batch: Optional[int], name: str) -> tuple[int, ...]:
        """The engine input's shape at ``batch`` (None: its static batch, or the profile's
        smallest); a batch outside the built range is a one-line ``EngineFileError``."""
        (first,) = self.onnx["inputs"]
        low, high = self.batch_limits()
        if self.batch_range is None:
            if batch is not None and batch != low:
                raise EngineFileError(f"engine {name} was built for batch {low}, not {batch}")
            return tuple(first["shape"])
        b = low if batch is None else batch
        if not low <= b <= high:
            raise EngineFileError(f"engine {name} was built for batches {low} to {high} "
                                  f"(--batch-range), not {b}: build it again with a range "
                                  f"that holds {b}")
        return (b, *first["shape"][1:])

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "EngineManifest":
        """``data`` checked (schema, version, its source export); else ``EngineFileError``."""
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != KIND:
            raise EngineFileError(f"{where} is not an ssmprune engine manifest "
                                  f"(kind {str(kind)[:40]!r})")
        schema_version(data, LEGACY_VERSION_KEY, where, EngineFileError)
        fields = {k: v for k, v in data.items() if k not in ("kind", LEGACY_VERSION_KEY)}
        manifest = validate(cls, fields, where, "ssmprune engine manifest", EngineFileError)
        manifest.check_batch_range(where)
        if manifest.source is not None:
            source = Manifest.from_dict(manifest.source, f"{where} (its source export)",
                                        EngineFileError)
            built_from = manifest.onnx["sha256"]
            listed = source.files.get(manifest.onnx["file"], {}).get("sha256")
            if listed != built_from:
                raise EngineFileError(
                    f"{where}: its source export lists sha256 {str(listed)[:12]}... for "
                    f"{manifest.onnx['file']}, but the engine was built from an onnx with "
                    f"sha256 {built_from[:12]}...: not the export this engine was built from")
            bindings = [[(t["name"], t["shape"]) for t in manifest.onnx[k]]
                        for k in ("inputs", "outputs")]
            # TensorRT writes a dynamic axis as -1, the export as its dim_param "batch".
            exported = [[(t["name"], [-1 if d == BATCH_DIM else d for d in t["shape"]])
                         for t in ts] for ts in ([source.input], source.outputs)]
            if bindings != exported:
                raise EngineFileError(f"{where}: the engine's inputs and outputs {bindings} are "
                                      f"not its source export's {exported}")
        return manifest

    def check_batch_range(self, where: str) -> None:
        """A batch range is ordered and goes with a dynamic input batch (-1), and only then."""
        dynamic = any(t["shape"][:1] == [-1] for t in self.onnx.get("inputs", []))
        if self.batch_range is None:
            if dynamic:
                raise EngineFileError(f"{where}: a dynamic-batch engine without batch_range")
            return
        low, opt, high = self.batch_range
        if not dynamic or not low <= opt <= high:
            raise EngineFileError(f"{where}: batch_range {self.batch_range} is not min <= opt "
                                  "<= max of a dynamic-batch input")


def write_engine(engine_path: PathLike, engine: Union[bytes, memoryview],
                 manifest: EngineManifest) -> tuple[Path, Path]:
    """Write the engine and its manifest as a pair; fills the engine's file fields.

    Both temporaries are written and synced before either is renamed, and
    both renames happen in one stretch no signal cuts
    (``outputs.atomic_files``), the engine first: an interruption leaves the
    old pair or the new one, never a new engine beside the old manifest (a
    working pair broken by a Ctrl-C during a rebuild).
    """
    engine_path = Path(engine_path)
    data = memoryview(engine).cast("B")
    manifest.engine = {"file": engine_path.name, "bytes": data.nbytes,
                       "sha256": hashlib.sha256(data).hexdigest()}
    mpath = manifest_path(engine_path)
    with atomic_files(engine_path, mpath) as (engine_tmp, manifest_tmp):
        engine_tmp.write_bytes(data)
        manifest_tmp.write_text(manifest.to_json())
    return engine_path, mpath


def read_manifest(engine_path: PathLike) -> EngineManifest:
    """The manifest next to ``engine_path``, checked; ``EngineFileError`` when missing,
    unreadable or invalid."""
    mpath = manifest_path(engine_path)
    if not os.path.lexists(mpath):
        raise EngineFileError(f"no manifest {mpath.name} next to {engine_path}: an engine is "
                              "only trusted with the manifest `ssmprune build` writes")
    return EngineManifest.from_dict(read_json(mpath, EngineFileError), str(mpath))


def verify_engine_file(engine_path: PathLike, manifest: EngineManifest) -> None:
    """The engine file exists and has the size and sha256 its manifest records."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise EngineFileError(f"engine file {engine_path} does not exist")
    size, expected = engine_path.stat().st_size, manifest.engine["bytes"]
    if size < expected:
        raise EngineFileError(f"engine file {engine_path} is truncated: {size} bytes, "
                              f"its manifest records {expected}")
    if size != expected:
        raise EngineFileError(f"engine file {engine_path} has {size} bytes, its manifest "
                              f"records {expected}: not the engine this manifest describes")
    if sha256_file(engine_path) != manifest.engine["sha256"]:
        raise EngineFileError(f"engine file {engine_path} does not match the sha256 in its "
                              "manifest: corrupted or replaced")
