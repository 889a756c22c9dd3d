"""Export folder -> engine file + manifest: what ``ssmprune build`` does, as one function."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from ssmprune.engine.build import BuildOptions, BuiltEngine, build_engine
from ssmprune.engine.manifest import EngineManifest, sha256_file, write_engine
from ssmprune.errors import BadInputFileError

#: Names an export folder's manifest may have, first found wins.
EXPORT_MANIFEST_NAMES = ("manifest.json", "export.json")


def find_onnx(source: Path) -> tuple[Path, Optional[dict[str, Any]]]:
    """The ONNX file to build from ``source`` (a file, or an export folder) and its manifest.

    An ``ssmprune export`` folder (or its model.onnx) is checked against its
    manifest first (every file's sha256). Any other folder: the ``.onnx`` its
    manifest names (key ``onnx``, or the only ``.onnx`` among ``files``), else
    the only ``.onnx`` file there.
    """
    source = Path(source)
    checked = _ssmprune_export(source)
    if checked is not None:
        return checked
    if source.is_file():
        if source.suffix != ".onnx":
            raise BadInputFileError(f"{source} is not an .onnx file or an export folder")
        return source, _export_manifest(source.parent, source.name)
    if not source.is_dir():
        raise BadInputFileError(f"{source} does not exist (expected an export folder or "
                                "an .onnx file)")
    manifest = _export_manifest(source, None)
    named = _onnx_named_by(manifest) if manifest else None
    if named is not None:
        path = source / named
        if not path.is_file():
            raise BadInputFileError(f"the export manifest in {source} names {named}, "
                                    "which is missing")
        return path, manifest
    found = sorted(source.glob("*.onnx"))
    if len(found) == 1:
        return found[0], manifest
    if not found:
        raise BadInputFileError(f"no .onnx file in {source}")
    raise BadInputFileError(f"{source} holds {len(found)} .onnx files "
                            f"({', '.join(p.name for p in found)}): pass the one to build")


def _ssmprune_export(source: Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """``(onnx path, manifest)`` when ``source`` is an ``ssmprune export`` output, checked."""
    folder = source if source.is_dir() else source.parent
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != "ssmprune-onnx":
        return None
    from dataclasses import asdict

    from ssmprune.exporter.manifest import MODEL_FILE, read_export

    directory, manifest = read_export(source, verify=True)
    onnx_path = source if source.is_file() else directory / MODEL_FILE
    return onnx_path, asdict(manifest)


def _export_manifest(folder: Path, onnx_name: Optional[str]) -> Optional[dict[str, Any]]:
    names = list(EXPORT_MANIFEST_NAMES)
    if onnx_name:
        stem = onnx_name[:-len(".onnx")]
        names = [f"{onnx_name}.json", f"{stem}.json", *names]
    for name in names:
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise BadInputFileError(f"cannot read export manifest {path}: {err}") from None
            return data if isinstance(data, dict) else None
    return None


def _onnx_named_by(manifest: dict[str, Any]) -> Optional[str]:
    value = manifest.get("onnx")
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("file"), str):
        return value["file"]
    files = manifest.get("files")
    names = list(files) if isinstance(files, dict) else files if isinstance(files, list) else []
    onnx_files = [n if isinstance(n, str) else n.get("file", "") for n in names]
    onnx_files = [n for n in onnx_files if isinstance(n, str) and n.endswith(".onnx")]
    return onnx_files[0] if len(onnx_files) == 1 else None


def tool_versions(flavour_package: str) -> dict[str, str]:
    """Versions of the tools that shaped the engine."""
    out = {"python": platform.python_version()}
    for dist in ("ssmprune", "onnx", "torch", flavour_package):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest_for(built: BuiltEngine, onnx_path: Path, source: Optional[dict[str, Any]],
                 options: BuildOptions) -> EngineManifest:
    """The manifest of a just-built engine (its file fields are filled when written)."""
    package = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx-cu13-bindings"}
    return EngineManifest(
        engine={},
        tensorrt={"flavour": built.flavour.name, "version": built.flavour.version},
        gpu={"targets": built.targets, "built_on": built.built_on,
             "hardware_compatible": options.hardware_compatible},
        precision=built.precision,
        strongly_typed=built.strongly_typed,
        version_compatible=options.version_compatible,
        plugins=[p.as_dict() for p in built.plugins],
        plugin_form=built.plugin_form,
        ptx_version=built.ptx_version,
        lowered_ops=built.lowered_ops,
        onnx={"file": onnx_path.name, "sha256": sha256_file(onnx_path),
              "inputs": built.inputs, "outputs": built.outputs},
        source=source,
        tools=tool_versions(package[built.flavour.name]),
        build_seconds=round(built.seconds, 3),
    )


def build_to_file(source: Path, output: Optional[Path], options: BuildOptions = BuildOptions(),
                  echo_level: str = "none") -> tuple[BuiltEngine, Path, Path]:
    """Build the engine of ``source`` (export folder or .onnx) and write it with its manifest.

    ``output`` defaults to the ONNX path with the suffix ``.engine``. Returns
    the built engine and the paths of the engine and its manifest.
    """
    onnx_path, export_manifest = find_onnx(Path(source))
    built = build_engine(onnx_path, options, echo_level)
    output = Path(output) if output is not None else onnx_path.with_suffix(".engine")
    manifest = manifest_for(built, onnx_path, export_manifest, options)
    engine_path, manifest_path = write_engine(output, built.engine, manifest)
    return built, engine_path, manifest_path
