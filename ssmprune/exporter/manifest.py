"""The manifest next to every exported file, and atomic writing of both.

An export directory holds ``model.onnx`` and ``manifest.json``. The manifest
says what the file is (model name and config, prune config, weights, static
input shape, batch, precision, flavour, opset, custom ops, tool and library
versions) and the sha256 of every file, so a consumer rebuilds the reference
model from it and refuses a file that changed. Both are written into a
temporary directory first and renamed into place: a failed export leaves
nothing half-written, and the manifest lands last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from ssmprune.errors import BadInputFileError

FORMAT = "ssmprune-onnx"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# Written into the ONNX file's metadata_props, so a file is recognised without its manifest.
METADATA_FORMAT_KEY = "ssmprune.format"
LIBRARIES = ("ssmprune", "torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "polygraphy",
             "numpy")


@dataclass
class Manifest:
    """Everything needed to trust, rebuild and compare an exported model."""

    model: str
    family: str
    config: dict[str, Any]          # the full model config
    overrides: dict[str, Any]       # what create_model got beyond the name
    prune: Optional[dict[str, Any]]  # PruneConfig fields, or None for dense
    prune_preset: Optional[str]
    weights: dict[str, Any]         # {"seed": 0} or {"checkpoint": path, "sha256": ...}
    input: dict[str, Any]           # {"name", "shape", "dtype"}: "float32" at any precision
    outputs: list[dict[str, Any]]   # [{"name", "shape", "dtype"}]: "float32" at any precision
    batch: int
    precision: str                  # fp32 | fp16: the weights' and activations' type
    flavor: str
    opset: int
    custom_ops: list[dict[str, Any]]  # [{"domain", "name", "version", "count"}]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {sha256, bytes}
    versions: dict[str, str] = field(default_factory=dict)
    export_seconds: Optional[float] = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BadInputFileError(f"{source} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BadInputFileError(f"{source} is not an ssmprune export manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise BadInputFileError(f"{source} has manifest version {data.get('format_version')}, "
                                    f"this ssmprune reads version {FORMAT_VERSION}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in data and
                         cls.__dataclass_fields__[n].default is dataclasses.MISSING
                         and cls.__dataclass_fields__[n].default_factory is dataclasses.MISSING)
        if missing:
            raise BadInputFileError(f"{source} lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
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

    Everything is written into a temporary directory beside ``out_dir``. A
    new ``out_dir`` is that directory renamed; an existing one gets each
    file renamed into it, the manifest last, so a reader never sees a new
    manifest with an old file (and a new file with an old manifest fails its
    sha256). On any error the temporary directory is removed.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInputFileError(f"{out_dir} exists and is not a directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is not
        for name, data in files.items():
            (tmp / name).write_bytes(data)
            manifest.files[name] = {"sha256": sha256_file(tmp / name), "bytes": len(data)}
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())
        if not out_dir.exists():
            os.replace(tmp, out_dir)
            return out_dir
        for name in [*files, MANIFEST_FILE]:
            os.replace(tmp / name, out_dir / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_export(path: str | os.PathLike, verify: bool = True) -> tuple[Path, Manifest]:
    """The export directory and its manifest; ``path`` is the directory or its model.onnx.

    With ``verify`` every listed file must exist and match its sha256.
    Anything else is a one-line ``BadInputFileError``.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix != ".onnx":
            raise BadInputFileError(f"{path} is neither an export directory nor an .onnx file")
        directory = path.parent
    elif path.is_dir():
        directory = path
    else:
        raise BadInputFileError(f"{path} does not exist")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BadInputFileError(f"{directory} has no {MANIFEST_FILE}: not an ssmprune export "
                                "(write one with `ssmprune export`)")
    manifest = Manifest.from_json(manifest_path.read_text(), str(manifest_path))
    if path.is_file() and path.name not in manifest.files:
        raise BadInputFileError(f"{path.name} is not listed in {manifest_path}")
    if verify:
        for name, entry in manifest.files.items():
            file = directory / name
            if not file.is_file():
                raise BadInputFileError(f"{file} is listed in the manifest but missing")
            if sha256_file(file) != entry.get("sha256"):
                raise BadInputFileError(f"{file} does not match the sha256 in its manifest "
                                        "(changed after export); export it again")
    return directory, manifest


def verify_model_file(path: Path) -> None:
    """Refuse an ONNX file that ssmprune did not write (no format mark in its metadata)."""
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
