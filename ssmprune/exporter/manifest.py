"""The manifest next to every exported file, and atomic writing of both.

An export directory holds ``model.onnx`` and ``manifest.json``. The manifest
says what the file is (model name and config, prune config, weights, static
input shape, batch, precision, flavour, opset, custom ops, tool and library
versions) and the sha256 of every file, so a consumer rebuilds the reference
model from it and refuses a file that changed. Both are written into a
temporary directory first and renamed into place: a failed export leaves
nothing half-written, and the manifest lands last.

Reading (``read_export``) trusts nothing the manifest says until it is
checked (``ssmprune.manifest_schema`` has the common rules): the schema; the
fields against each other (input shape against batch and config, overrides
against config); every listed file inside the folder with its size and
sha256, ``model.onnx`` listed; then ``model.onnx`` against the fields:
ssmprune's mark, its input and outputs (names, shapes, types) and the
precision it carries (``exporter.precision.onnx_precision``, the one the engine
builder reads). Only then do ``run``, ``parity``, ``build`` and
``calibrate`` use it.

Weights (``weights``): ``{"seed": N}`` (seeded random weights), or
``{"checkpoint": PATH, "sha256": ...}``. PATH is a file name of the export
folder, or the absolute path the checkpoint had at export, recorded for
information and never opened on the manifest's word
(``export.model_from_manifest``): a digits model's embedded weights are
found by their sha256, any other checkpoint is given again
(``parity --checkpoint``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import AfterValidator, Discriminator, Field, Tag, with_config
from typing_extensions import TypedDict

from ssmprune.errors import BadInputFileError, InputShapeError
from ssmprune.limits import MAX_BATCH
from ssmprune.manifest_schema import (
    SCHEMA_VERSION,
    STRICT,
    TOP_LEVEL,
    Count,
    ErrorType,
    FileEntry,
    FileName,
    PositiveInt,
    Seconds,
    Sha256,
    Text,
    check_file_name,
    file_inside,
    parse_json,
    read_json,
    schema_version,
    validate,
)
from ssmprune.outputs import atomic_dir

FORMAT = "ssmprune-onnx"
LEGACY_VERSION_KEY = "format_version"  # schema_version's name before issue 15
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# The symbolic batch of a dynamic-batch export: the ONNX dim_param and the manifest's shape[0].
BATCH_DIM = "batch"
# Written into the ONNX file's metadata_props, so a file is recognised without its manifest.
METADATA_FORMAT_KEY = "ssmprune.format"
LIBRARIES = ("ssmprune", "torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "polygraphy",
             "numpy")

Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@with_config(STRICT)
class TensorSpec(TypedDict):
    """A graph input or output: fp32 at any precision (the casts are inside the graph)."""

    name: Text
    # shape[0] is "batch" in a dynamic-batch export (``Manifest.check_fields``).
    shape: Annotated[list[Union[PositiveInt, Literal["batch"]]], Field(min_length=1)]
    dtype: Literal["float32"]


@with_config({**STRICT, "extra": "allow"})
class ModelConfig(TypedDict):
    """The model config: every field its family has; these are read to preprocess images."""

    img_size: PositiveInt
    in_chans: PositiveInt
    num_classes: PositiveInt
    mean: Annotated[list[float], Field(min_length=1)]
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]


KeepRatio = Annotated[float, Field(gt=0, le=1)]


@with_config(STRICT)
class PruneRecord(TypedDict):
    """``PruneConfig``'s fields (it checks their values when the model is rebuilt)."""

    keep_ratio: Union[KeepRatio, Annotated[list[KeepRatio], Field(min_length=1)]]
    prune_after: Annotated[list[Count], Field(min_length=1)]
    importance: Text
    alignment: Text


def _checkpoint_name(name: str) -> str:
    """A checkpoint is a file name of the export folder, or an absolute path recorded at
    export for information (never opened on the manifest's word)."""
    if not os.path.isabs(name):
        check_file_name(name)
    return name


@with_config(STRICT)
class SeedWeights(TypedDict):
    seed: int


@with_config(STRICT)
class CheckpointWeights(TypedDict):
    checkpoint: Annotated[Text, AfterValidator(_checkpoint_name)]
    sha256: Sha256


def _weights_kind(value: Any) -> str:
    return "checkpoint" if isinstance(value, dict) and "checkpoint" in value else "seed"


Weights = Annotated[Union[Annotated[SeedWeights, Tag("seed")],
                          Annotated[CheckpointWeights, Tag("checkpoint")]],
                    Discriminator(_weights_kind)]


@dataclass
class Manifest:
    """Everything needed to trust, rebuild and compare an exported model.

    The annotations are the schema of ``manifest.json`` (``manifest_schema``);
    ``from_dict`` checks a manifest against them and the fields against each other.
    """

    __pydantic_config__ = TOP_LEVEL

    model: Text
    family: Text
    config: ModelConfig             # the full model config
    overrides: dict[str, Any]       # what create_model got beyond the name
    prune: Optional[PruneRecord]    # PruneConfig fields, or None for dense
    prune_preset: Optional[str]
    weights: Weights                # {"seed": 0} or {"checkpoint": path, "sha256": ...}
    input: TensorSpec               # {"name", "shape", "dtype"}: "float32" at any precision
    outputs: Annotated[list[TensorSpec], Field(min_length=1)]  # "float32" at any precision
    batch: PositiveInt
    precision: Precision            # the weights' and activations' type; int8/fp8: Q/DQ
    flavor: Literal["plugins", "standard"]
    opset: PositiveInt
    custom_ops: list[dict[str, Any]]  # [{"domain", "name", "version", "nodes", ...}]
    # A dynamic-batch export runs any batch from 1 to max_batch (``batch``: the default one);
    # None: a static batch, ``batch``.
    max_batch: Optional[Annotated[int, Field(gt=1, le=MAX_BATCH)]] = None
    files: dict[FileName, FileEntry] = field(default_factory=dict)  # name -> {sha256, bytes}
    versions: dict[str, str] = field(default_factory=dict)
    export_seconds: Optional[Seconds] = None
    format: Literal["ssmprune-onnx"] = FORMAT
    schema_version: Annotated[int, Field(le=SCHEMA_VERSION)] = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @property
    def dynamic(self) -> bool:
        """Whether the export takes any batch from 1 to ``max_batch``."""
        return self.max_batch is not None

    def batch_range(self) -> tuple[int, int]:
        """(smallest, largest) batch the file runs: (b, b) for a static batch b."""
        return (1, self.max_batch) if self.max_batch is not None else (self.batch, self.batch)

    def check_batch(self, batch: int, what: str = "the export") -> int:
        """``batch`` if the file runs it, else a one-line ``InputShapeError``."""
        low, high = self.batch_range()
        if not low <= batch <= high:
            kind = (f"a dynamic batch of 1 to {high}" if self.dynamic
                    else f"a static batch of {self.batch}")
            raise InputShapeError(f"{what} takes {kind}, not {batch}")
        return batch

    def input_shape(self, batch: Optional[int] = None) -> tuple[int, ...]:
        """The input's (batch, c, h, w) at ``batch`` (default ``self.batch``), checked."""
        b = self.check_batch(self.batch if batch is None else batch)
        return (b, *self.input["shape"][1:])

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> "Manifest":
        """The manifest in ``text`` (``source`` names it in errors), checked: ``from_dict``."""
        return cls.from_dict(parse_json(text, source), source)

    @classmethod
    def from_dict(cls, data: Any, source: str,
                  error: ErrorType = BadInputFileError) -> "Manifest":
        """``data`` checked against the schema and its fields against each other; any
        problem is one line of ``error``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise error(f"{source} is not an ssmprune export manifest")
        schema_version(data, LEGACY_VERSION_KEY, source, error)
        data = {k: v for k, v in data.items() if k != LEGACY_VERSION_KEY}
        data.setdefault("schema_version", SCHEMA_VERSION)
        manifest = validate(cls, data, source, "ssmprune export manifest", error)
        manifest.check_fields(source, error)
        return manifest

    def check_fields(self, source: str, error: ErrorType = BadInputFileError) -> None:
        """What the schema cannot say alone: the fields agree with each other."""
        if MODEL_FILE not in self.files:
            raise error(f"{source} lists no sha256 for {MODEL_FILE}: an export is trusted "
                        "only with the sha256 of every file; export it again")
        cfg = self.config
        first = BATCH_DIM if self.dynamic else self.batch
        if self.dynamic and self.batch > self.max_batch:
            raise error(f"{source}: batch {self.batch} is above max_batch {self.max_batch}")
        expected = [first, cfg["in_chans"], cfg["img_size"], cfg["img_size"]]
        if self.input["shape"] != expected:
            raise error(f"{source}: input shape {self.input['shape']} is not (batch "
                        f"{first}, in_chans {cfg['in_chans']}, img_size "
                        f"{cfg['img_size']}, img_size {cfg['img_size']})")
        for out in self.outputs:
            if out["shape"][0] != first or BATCH_DIM in out["shape"][1:]:
                raise error(f"{source}: output {out['name']} has shape {out['shape']}, not "
                            f"batch {first} first")
        if not len(cfg["mean"]) == len(cfg["std"]) == cfg["in_chans"]:
            raise error(f"{source}: config mean and std need one value per channel "
                        f"(in_chans {cfg['in_chans']})")
        for key, value in self.overrides.items():
            if key not in cfg or cfg[key] != value or type(cfg[key]) is not type(value):
                raise error(f"{source}: overrides.{key[:60]} disagrees with config.{key[:60]}")


def sha256_file(path: Path) -> str:
    """The sha256 of the file at ``path`` (hex); ``BadInputFileError`` when it cannot be read
    (permission denied, an I/O error: the user's file, not a bug)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise BadInputFileError(f"cannot read {path}: {err.strerror or err}") from None
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries an export depends on."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_export(out_dir: Path, files: dict[str, bytes], manifest: Manifest) -> Path:
    """Write ``files`` and the manifest (with their sha256) into ``out_dir`` atomically.

    Everything is written into a temporary folder beside ``out_dir``
    (``outputs.atomic_dir``). A new ``out_dir`` is that folder renamed; an
    existing one gets each file renamed into it, the manifest last, so a
    reader never sees a new manifest with an old file (and a new file with an
    old manifest fails its sha256). On any error or interruption the
    temporary folder is removed.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputFileError(f"{out_dir} exists and is not a directory")
    with atomic_dir(out_dir) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            manifest.files[name] = {"sha256": sha256_file(tmp / name), "bytes": len(data)}
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())
    return out_dir


def read_export(path: str | os.PathLike, verify: bool = True) -> tuple[Path, Manifest]:
    """The export directory and its manifest; ``path`` is the directory or its model.onnx.

    The manifest is checked against its schema (``Manifest.from_dict``). With
    ``verify`` every listed file must lie inside the directory and match its
    size and sha256, and model.onnx must be what the manifest says
    (``verify_model_file``). Anything else is a one-line ``BadInputFileError``.
    """
    path = Path(path)
    # os.path's tests: Path's raise OSError for a name too long for the file system.
    if os.path.isfile(path):
        if path.suffix != ".onnx":
            raise BadInputFileError(f"{path} is neither an export directory nor an .onnx file")
        directory = path.parent
    elif os.path.isdir(path):
        directory = path
    else:
        raise BadInputFileError(f"{path} does not exist")
    manifest_path = directory / MANIFEST_FILE
    if not os.path.lexists(manifest_path):
        raise BadInputFileError(f"{directory} has no {MANIFEST_FILE}: not an ssmprune export "
                                "(write one with `ssmprune export`)")
    manifest = Manifest.from_dict(read_json(manifest_path), str(manifest_path))
    if path.is_file() and path.name not in manifest.files:
        raise BadInputFileError(f"{path.name} is not listed in {manifest_path}")
    if verify:
        for name, entry in manifest.files.items():
            verify_file(directory, name, entry)
        verify_model_file(directory / MODEL_FILE, manifest)
    return directory, manifest


def verify_file(directory: Path, name: str, entry: FileEntry,
                error: ErrorType = BadInputFileError) -> Path:
    """The file ``name`` of ``directory`` (inside it), of the size and sha256 of ``entry``."""
    real = file_inside(directory, name, error)
    size = real.stat().st_size
    if size != entry["bytes"]:
        raise error(f"{directory / name} has {size} bytes, not the {entry['bytes']} its manifest "
                    "records: it does not match the sha256 in its manifest (changed after "
                    "export); export it again")
    if sha256_file(real) != entry["sha256"]:
        raise error(f"{directory / name} does not match the sha256 in its manifest "
                    "(changed after export); export it again")
    return real


def checkpoint_in_export(directory: Path, manifest: Manifest) -> Optional[Path]:
    """The checkpoint file of the export folder that ``manifest.weights`` names, if it names
    one (a file name, not an absolute path), inside the folder; None otherwise."""
    name = manifest.weights.get("checkpoint")
    if name is None or os.path.isabs(name):
        return None
    return file_inside(directory, name)


def _graph_io(model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of the ONNX graph: name, shape (dim_param for a dynamic axis) and
    numpy dtype name; initializers listed as inputs are left out."""
    import onnx

    def spec(value) -> dict[str, Any]:
        t = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in t.shape.dim]
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        except (KeyError, ValueError, TypeError):
            dtype = f"ONNX type {t.elem_type}"
        return {"name": value.name, "shape": shape, "dtype": dtype}

    weights = {i.name for i in model.graph.initializer}
    return ([spec(v) for v in model.graph.input if v.name not in weights],
            [spec(v) for v in model.graph.output])


def _describe(spec: dict[str, Any]) -> str:
    return f"{spec['name']} {spec['shape']} {spec['dtype']}"


def check_model_against_manifest(model, manifest: Manifest, path: Path) -> None:
    """``model`` (the ONNX at ``path``) has the input, outputs and precision ``manifest``
    records; else one line. The precision is what ``exporter.precision.onnx_precision`` reads
    (the engine builder's own reading of it, imported here where it is needed)."""
    from ssmprune.exporter.precision import onnx_precision

    inputs, outputs = _graph_io(model)
    if len(inputs) != 1 or inputs[0] != manifest.input:
        found = ", ".join(map(_describe, inputs)) or "none"
        raise BadInputFileError(f"{path.name}'s input is {found}; its manifest says "
                                f"{_describe(manifest.input)}")
    for i, expected in enumerate(manifest.outputs):
        actual = outputs[i] if i < len(outputs) else None
        if actual is None or actual["name"] != expected["name"]:
            raise BadInputFileError(f"{path.name}'s outputs are "
                                    f"{', '.join(o['name'] for o in outputs)}; its manifest "
                                    f"says {', '.join(o['name'] for o in manifest.outputs)}")
        if actual != expected:
            raise BadInputFileError(f"{path.name}'s output {_describe(actual)} differs from its "
                                    f"manifest's {_describe(expected)}")
    if len(outputs) != len(manifest.outputs):
        raise BadInputFileError(f"{path.name} has {len(outputs)} outputs; its manifest lists "
                                f"{len(manifest.outputs)}")
    carried = onnx_precision(model).name
    if carried != manifest.precision:
        raise BadInputFileError(f"{path.parent / MANIFEST_FILE} says precision "
                                f"{manifest.precision}, but {path.name} carries {carried}")


def verify_model_file(path: Path, manifest: Optional[Manifest] = None) -> None:
    """Refuse an ONNX file that ssmprune did not write (no format mark in its metadata) and,
    given its ``manifest``, one whose input, outputs or precision differ from it."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises several types for a damaged file
        raise BadInputFileError(f"{path} is not a readable ONNX file ({type(err).__name__})") \
            from None
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(METADATA_FORMAT_KEY) != FORMAT:
        raise BadInputFileError(f"{path} was not written by `ssmprune export` "
                                f"(no {METADATA_FORMAT_KEY} mark)")
    if manifest is not None:
        check_model_against_manifest(model, manifest, path)
