"""What every manifest ssmprune writes has in common, and how a manifest is read.

Manifests: the export's ``manifest.json`` (``exporter.manifest.Manifest``; a
calibrated export's is ``calibration.quantize.QuantizedManifest``) and the
engine's ``<engine>.json`` (``engine.manifest.EngineManifest``). Each is a
dataclass whose annotations are its schema; pydantic (v2) checks a manifest
against them when it is read, in strict JSON mode: ``"1"`` is not 1, 1.0 is
not 1, a missing key is an error, the structures the schema defines (file
entries, tensors, weights, ...) take no keys it does not define. Keys a
manifest's top level has beyond its schema are ignored, never read: a
calibrated export's ``quantization`` is one, for readers of plain exports.

Reading a manifest, in this order, each failure one line of the caller's
error type (``BadInputFileError`` or a subclass):

1. ``read_json``: a regular file of at most ``MAX_BYTES``, UTF-8, JSON
   without NaN / Infinity or a key given twice, nested at most ``MAX_DEPTH``
   deep (Python's decoder raises RecursionError on deep nesting: caught here).
2. its kind (``format`` / ``kind``), then ``schema_version``
   (``schema_version``): one number for every manifest kind, since an engine
   manifest carries its export's.
3. ``validate``: the schema.
4. what the schema alone cannot say (fields against each other, files
   against the folder, the ONNX against the manifest): each manifest's module.

Every file a manifest names is a plain file name (``FileName``), a file of
the manifest's own folder, found there by ``file_inside``, which also refuses
a symlink out of the folder; its sha256 is mandatory (``FileEntry``).

Schema versions: 1 is the first with ``schema_version``. Manifests written
before it carry ``format_version`` (exports) or ``format`` (engines), set to
1, with the same fields; they read as version 1 and pass the same checks
(every file ssmprune wrote had its sha256 and a plain name), so an export
or an engine that took minutes to make need not be made again.
"""

from __future__ import annotations

import functools
import json
import stat
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, with_config
from typing_extensions import TypedDict

from ssmprune.errors import BadInputFileError

SCHEMA_VERSION = 1
MAX_BYTES = 1 << 20  # every manifest ssmprune writes is a few kB
MAX_DEPTH = 32       # an engine manifest's source's calibration report is about 8 deep
ErrorType = Callable[[str], Exception]
T = TypeVar("T")

# The config of every schema: dataclasses and TypedDicts read from JSON, strictly.
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_default=True)
TOP_LEVEL = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False, validate_default=True)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_file_name(name: str) -> str:
    """``name`` if it is a plain file name (of the manifest's folder); else ValueError."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{_short(name)!r} is not a file name inside the manifest's folder "
                         "(a plain name: no folder, no '..', not absolute)")
    return name


# Types the manifests share.
FileName = Annotated[str, AfterValidator(check_file_name)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Text = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]


@with_config(STRICT)
class FileEntry(TypedDict):
    """A file of the manifest's folder: its sha256 and size, both checked before it is read."""

    sha256: Sha256
    bytes: Count


class _Refused(ValueError):
    """JSON that parses but that no manifest holds (NaN, a key given twice)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"key {_short(key)!r} given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects, counted until past ``MAX_DEPTH``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item \
            if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(raw: bytes | str, where: str, error: ErrorType = BadInputFileError) -> Any:
    """The JSON value in ``raw`` (at most ``MAX_BYTES``), or one line of ``error``."""
    if len(raw) > MAX_BYTES:
        raise error(f"{where} is larger than 1 MiB: not a manifest ssmprune wrote")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise error(f"{where} is not UTF-8 text (byte {err.start}): not a manifest "
                        "ssmprune wrote") from None
    try:
        value = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        value = None
        depth = MAX_DEPTH + 1
    except _Refused as err:
        raise error(f"{where} is not a manifest ssmprune wrote: {err}") from None
    except ValueError as err:  # JSONDecodeError, and int() of a number over 4300 digits
        raise error(f"{where} is not valid JSON ({_short(str(err), 120)})") from None
    else:
        depth = _depth(value)
    if depth > MAX_DEPTH:
        raise error(f"{where} is nested more than {MAX_DEPTH} levels deep: not a manifest "
                    "ssmprune wrote")
    return value


def read_json(path: Path, error: ErrorType = BadInputFileError) -> Any:
    """The JSON value of the manifest file ``path``, read within the bounds (``parse_json``)."""
    try:
        info = path.stat()
    except OSError as err:
        raise error(f"cannot read manifest {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block, a device never end
        raise error(f"manifest {path} is not a regular file")
    if info.st_size > MAX_BYTES:
        raise error(f"{path} is larger than 1 MiB ({info.st_size} bytes): not a manifest "
                    "ssmprune wrote")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise error(f"cannot read manifest {path}: {err.strerror}") from None
    return parse_json(raw, str(path), error)


_MISSING = object()


def schema_version(data: dict[str, Any], legacy_key: str, where: str,
                   error: ErrorType = BadInputFileError) -> int:
    """The manifest's ``schema_version``; ``legacy_key`` (``format_version`` of exports,
    ``format`` of engines) of a manifest written before the key existed reads as it."""
    version, key = data.get("schema_version", _MISSING), "schema_version"
    legacy = data.get(legacy_key, _MISSING)
    if version is _MISSING:
        if legacy is _MISSING:
            raise error(f"{where} has no schema_version: not a manifest ssmprune wrote")
        version, key = legacy, legacy_key
    elif legacy is not _MISSING and legacy != version:
        raise error(f"{where} has {legacy_key} {_short(repr(legacy))} and schema_version "
                    f"{_short(repr(version))}, which disagree")
    if type(version) is not int or version < 1:
        raise error(f"{where} has {key} {_short(repr(version))}; schema versions are whole "
                    "numbers from 1")
    if version > SCHEMA_VERSION:
        raise error(f"{where} has {key} {version}; this ssmprune reads schema_version "
                    f"{SCHEMA_VERSION}: upgrade ssmprune")
    return version


@functools.cache
def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(cls)


def _location(loc: tuple) -> str:
    """pydantic's error location as it reads in the JSON: ``files['a.onnx'].sha256``."""
    out = ""
    for part in loc:
        if part == "[key]":
            out += " (the key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        elif str(part).isidentifier():
            out += f".{part}" if out else str(part)
        else:
            out += f"[{_short(str(part), 60)!r}]"
    return out or "the manifest"


def validate(cls: type[T], data: Any, where: str, what: str,
             error: ErrorType = BadInputFileError) -> T:
    """``data`` as a ``cls``, checked against its schema; else one line naming the first
    problems (where in the manifest and what is wrong, never the values themselves)."""
    from pydantic import ValidationError

    try:
        return _adapter(cls).validate_json(json.dumps(data), strict=True)
    except ValidationError as err:
        problems = err.errors(include_url=False, include_input=False)
        shown = "; ".join(f"{_location(p['loc'])}: {p['msg'].removeprefix('Value error, ')}"
                          for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise error(f"{where} is not a valid {what} (schema_version {SCHEMA_VERSION}): "
                    f"{shown}{more}") from None


def file_inside(directory: Path, name: str, error: ErrorType = BadInputFileError) -> Path:
    """The regular file ``name`` of ``directory`` (a ``FileName``), symlinks followed only
    while they stay inside ``directory``; else one line of ``error``."""
    check_file_name(name)
    path = directory / name
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise error(f"{path} is listed in the manifest but missing") from None
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise error(f"cannot read {path}: {err}") from None
    root = directory.resolve()
    if real == root or not real.is_relative_to(root):
        raise error(f"{path} leads outside {directory} (a link to {real}): a manifest's files "
                    "must lie inside its folder")
    if not real.is_file():
        raise error(f"{path} is not a regular file")
    return real
