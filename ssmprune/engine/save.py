"""Export folder -> engine file + manifest: what ``ssmprune build`` does, as one function."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from ssmprune import interrupt
from ssmprune.engine.build import BuildOptions, BuiltEngine, build_engine
from ssmprune.engine.manifest import (EngineManifest, PathLike, manifest_path, sha256_file,
                                       write_atomic, write_engine)
from ssmprune.errors import BadInputFileError
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE, read_export
from ssmprune.outputs import prepare_output


def find_onnx(source: Path) -> tuple[Path, Optional[dict[str, Any]]]:
    """The ONNX file to build from ``source`` (a file, or a folder) and its export manifest.

    A folder holding a manifest.json (or an .onnx file in one) is an export:
    ``read_export`` checks its manifest, every file's size and sha256 and the
    ONNX against the manifest before anything is built, and whatever fails
    is refused: a manifest that is not a valid ssmprune export manifest is
    never skipped for the bare file. Otherwise: the .onnx file given, or the
    only one in the folder, built without an export manifest (``source``
    null in the engine's manifest).
    """
    source = Path(source)
    # os.path's tests, not Path's: a name too long for the file system is no file (Path's
    # raise OSError for it).
    if os.path.isfile(source):
        if source.suffix != ".onnx":
            raise BadInputFileError(f"{source} is not an .onnx file or an export folder")
        folder = source.parent
    elif os.path.isdir(source):
        folder = source
    else:
        raise BadInputFileError(f"{source} does not exist (expected an export folder or "
                                "an .onnx file)")
    if os.path.lexists(folder / MANIFEST_FILE):
        directory, manifest = read_export(source, verify=True)
        onnx_path = source if source.is_file() else directory / MODEL_FILE
        return onnx_path, asdict(manifest)
    if source.is_file():
        return source, None
    found = sorted(source.glob("*.onnx"))
    if len(found) == 1:
        return found[0], None
    if not found:
        raise BadInputFileError(f"no .onnx file in {source}")
    raise BadInputFileError(f"{source} holds {len(found)} .onnx files "
                            f"({', '.join(p.name for p in found)}): pass the one to build")


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
        batch_range=list(built.batch_range) if built.batch_range else None,
        onnx={"file": onnx_path.name, "sha256": sha256_file(onnx_path),
              "inputs": built.inputs, "outputs": built.outputs},
        source=source,
        tools=tool_versions(package[built.flavour.name]),
        build_seconds=round(built.seconds, 3),
    )


def prepare_engine_outputs(onnx_path: Path, output: Optional[PathLike],
                           timing_cache: Optional[PathLike] = None) -> Path:
    """The engine path (``output``, default: the ONNX path with .engine), checked with its
    manifest's and the timing cache's before anything is built (``outputs.prepare_output``):
    none may be the ONNX or its export's manifest, nor be in a place that cannot be written."""
    inputs = [onnx_path, onnx_path.parent / MANIFEST_FILE]
    engine = prepare_output(onnx_path.with_suffix(".engine") if output is None else output,
                            "file", inputs=inputs)
    prepare_output(manifest_path(engine), "file", inputs=inputs)
    if timing_cache is not None:
        prepare_output(timing_cache, "file", inputs=[*inputs, engine, manifest_path(engine)],
                       option="--timing-cache")
    return engine


def build_to_file(source: Path, output: Optional[PathLike], options: BuildOptions = BuildOptions(),
                  echo_level: str = "none") -> tuple[BuiltEngine, Path, Path]:
    """Build the engine of ``source`` (export folder or .onnx) and write it with its manifest.

    ``output`` defaults to the ONNX path with the suffix ``.engine``. Returns
    the built engine and the paths of the engine and its manifest.
    """
    onnx_path, export_manifest = find_onnx(Path(source))
    output = prepare_engine_outputs(onnx_path, output, options.timing_cache)
    max_batch = export_manifest.get("max_batch") if export_manifest else None
    built = build_engine(onnx_path, options, echo_level, max_batch)
    manifest = manifest_for(built, onnx_path, export_manifest, options)
    engine_path, manifest_path = write_engine(output, built.engine, manifest)
    # Written here, not in build_engine: its cancellable() may end the process with
    # os._exit, which would leave the write's temporary.
    if built.timing_cache is not None and options.timing_cache is not None \
            and interrupt.requested() is None:
        write_atomic(options.timing_cache, built.timing_cache)
    return built, engine_path, manifest_path
