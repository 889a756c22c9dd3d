"""The SOURCE arguments of ``bundle`` and ``triton-repo``: exports and engines, checked.

A SOURCE is an export folder (or its ``model.onnx``) or an engine file next to its
``ENGINE.json``, optionally named ``NAME=PATH`` (the model's name in a Triton
repository). Each is read through the readers that check it, and nothing is
used before they have:

- an export: ``read_export`` (schema, every listed file's size and sha256, the
  ONNX against the manifest);
- an engine: ``read_manifest`` (schema, its source export) and
  ``verify_engine_file`` (size, sha256). ``runtime.check_engine`` is not used:
  it also checks this machine's TensorRT and GPU, and a shipped engine is for
  another machine.

Also here: the batch of an artifact (``batch_of``: static, or dynamic up to a
largest batch) and class labels (``read_labels``).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

from ssmprune.errors import BadInputFileError, ConfigError
from ssmprune.limits import Bound
from ssmprune.ship.errors import LabelsError

if TYPE_CHECKING:
    from ssmprune.engine.manifest import EngineManifest
    from ssmprune.exporter.manifest import Manifest

#: SOURCE arguments of one command: far more models than a bundle or a server holds.
SOURCES = Bound(1, 64, "sources in one bundle or repository (ssmprune.ship.sources.SOURCES)")
#: A labels file: one name per class; 1 MiB holds 20,000 classes of 50 characters.
MAX_LABELS_BYTES = 1 << 20
MAX_LABEL_CHARS = 200
#: The name of the labels file wherever ssmprune writes or finds one (an export may list it).
LABELS_FILE = "labels.txt"
#: What a model name may hold: it becomes a folder (Triton's model name) and a file name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class ExportSource:
    """An export folder, checked. ``name``: the model's name (NAME= or the folder's)."""

    name: str
    given: str
    directory: Path
    manifest: Manifest


@dataclass(frozen=True)
class EngineSource:
    """An engine file with its manifest, checked. ``export``: the manifest of the export it
    was built from (None: built from a bare .onnx)."""

    name: str
    given: str
    path: Path
    manifest: EngineManifest
    export: Optional[Manifest]

    @property
    def manifest_path(self) -> Path:
        from ssmprune.engine.manifest import manifest_path

        return manifest_path(self.path)


Source = Union[ExportSource, EngineSource]


def split_name(text: str) -> tuple[Optional[str], str]:
    """``NAME=PATH`` -> (NAME, PATH); a plain path (one that exists as written) -> (None, it)."""
    name, sep, rest = text.partition("=")
    if not sep or os.path.lexists(text) or not name or "/" in name:
        return None, text
    return name, rest


def check_name(name: str, given: str) -> str:
    """``name`` if it can be a model folder's name; else one line."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(f"model name {name[:60]!r} (from {given[:80]}) is not usable as a "
                          "folder name: letters, digits, '_', '.', '-', starting with a letter "
                          "or digit, at most 100 characters; name it with NAME=PATH")
    return name


def read_source(text: str) -> Source:
    """One SOURCE argument, read and checked (module docstring)."""
    name, path_text = split_name(str(text))
    path = Path(path_text)
    if not path.exists():
        raise BadInputFileError(f"{path} does not exist (expected an export folder, its "
                                "model.onnx, or an engine file from `ssmprune build`)")
    if path.is_dir() or path.suffix == ".onnx":
        from ssmprune.exporter.manifest import read_export

        directory, manifest = read_export(path, verify=True)
        default = directory.resolve().name
        return ExportSource(check_name(name or default, str(text)), str(text), directory,
                            manifest)
    from ssmprune.engine.manifest import read_manifest, verify_engine_file
    from ssmprune.exporter.manifest import Manifest

    manifest = read_manifest(path)
    verify_engine_file(path, manifest)
    export = (Manifest.from_dict(manifest.source, f"{path}.json (its source export)")
              if manifest.source is not None else None)
    default = path.name.removesuffix(".engine").removesuffix(".plan")
    return EngineSource(check_name(name or default, str(text)), str(text), path, manifest,
                        export)


def new_output_folder(output: Union[str, Path], sources: Sequence[str], what: str) -> Path:
    """``-o`` of ``bundle`` and ``triton-repo``, checked before any work: a valid output
    (``outputs.prepare_output``: not one of the sources, ...) that does not exist yet,
    since ``what`` (a bundle, a model repository) is written into a new folder."""
    from ssmprune.errors import OutputPathError
    from ssmprune.outputs import prepare_output

    out = prepare_output(output, "dir", inputs=[split_name(str(s))[1] for s in sources],
                         option="-o")
    if out.exists():
        raise OutputPathError(f"-o {out} exists: {what} is written into a new folder; remove "
                              "it or give another path")
    return out


def read_sources(texts: Sequence[str]) -> list[Source]:
    """Every SOURCE, checked, in order; at most ``SOURCES.high``; model names unique."""
    SOURCES.check("SOURCE arguments", len(texts))
    sources = [read_source(t) for t in texts]
    seen: dict[str, str] = {}
    for s in sources:
        if s.name in seen:
            raise ConfigError(f"{seen[s.name]} and {s.given} both give the model name "
                              f"{s.name!r}: name one of them with NAME=PATH")
        seen[s.name] = s.given
    return sources


@dataclass(frozen=True)
class Batch:
    """An artifact's batch: ``static`` b (every input has batch b), or dynamic from
    ``low`` to ``high`` (``high`` None: not recorded)."""

    dynamic: bool
    low: int
    high: Optional[int]

    @property
    def static(self) -> Optional[int]:
        return None if self.dynamic else self.low


def batch_of(source: Source) -> Batch:
    """The batch an export or engine takes: the one place that reads it from a manifest.

    Dynamic: an engine with a ``batch_range`` (min, opt, max; its input batch is -1), an
    export with ``max_batch`` (its input batch is ``"batch"``, any batch from 1 to it).
    """
    m = source.manifest
    if isinstance(source, EngineSource):
        return Batch(m.batch_range is not None, *m.batch_limits())
    return Batch(m.dynamic, *m.batch_range())


def num_classes(source: Source) -> int:
    """Classes of the model: the last axis of its first output."""
    outputs = (source.manifest.onnx["outputs"] if isinstance(source, EngineSource)
               else source.manifest.outputs)
    return int(outputs[0]["shape"][-1])


def read_labels(path: Path, classes: int, where: str = "") -> list[str]:
    """Class names from ``path``: UTF-8 text, one name per line, exactly ``classes`` lines;
    names are trimmed, non-empty, printable, at most ``MAX_LABEL_CHARS``."""
    path = Path(path)
    what = f"labels file {path}" + (f" ({where})" if where else "")
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise LabelsError(f"{what} is not a regular file")
        if size > MAX_LABELS_BYTES:
            raise LabelsError(f"{what} has {size} bytes, more than {MAX_LABELS_BYTES} "
                              "(ssmprune.ship.sources.MAX_LABELS_BYTES)")
        raw = path.read_bytes()
    except OSError as err:
        raise LabelsError(f"cannot read {what}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LabelsError(f"{what} is not UTF-8 text (byte {err.start})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # trailing blank lines
    labels = [line.strip() for line in lines]
    for i, label in enumerate(labels, 1):
        if not label:
            raise LabelsError(f"{what}: line {i} is blank; one class name per line")
        if len(label) > MAX_LABEL_CHARS:
            raise LabelsError(f"{what}: line {i} has {len(label)} characters, more than "
                              f"{MAX_LABEL_CHARS}")
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in label):
            raise LabelsError(f"{what}: line {i} holds a control character")
    if len(labels) != classes:
        raise LabelsError(f"{what} has {len(labels)} class names; the model has {classes} "
                          "classes (one name per line, in class order)")
    return labels


def labels_of(source: Source, given: Optional[Path]) -> Optional[list[str]]:
    """The source's labels: ``given`` (``--labels``), else a labels.txt its export lists
    (checked with the export's sha256), else None."""
    classes = num_classes(source)
    if given is not None:
        return read_labels(given, classes, f"for {source.given}")
    if isinstance(source, ExportSource) and LABELS_FILE in source.manifest.files:
        return read_labels(source.directory / LABELS_FILE, classes, "listed by its export")
    return None


def input_config(source: Source, what: str) -> dict:
    """What preprocessing needs (img_size, in_chans, mean, std) from the source's export;
    an engine built from a bare .onnx has none: one line."""
    export = source.manifest if isinstance(source, ExportSource) else source.export
    if export is None:
        raise BadInputFileError(f"engine {source.given} was built from a bare .onnx file: its "
                                "manifest has no export manifest to preprocess images by, which "
                                f"{what} needs; build it from an `ssmprune export` folder")
    cfg = export.config
    return {k: cfg[k] for k in ("img_size", "in_chans", "mean", "std")}
