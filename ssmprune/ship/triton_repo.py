"""``ssmprune triton-repo``: a Triton Inference Server model repository.

One model per SOURCE (``ship.sources``: exports and engines, checked)::

    REPO/
      <name>/config.pbtxt      platform, inputs / outputs / dims from the manifest,
                               max_batch_size, dynamic_batching, instance_group, labels
      <name>/labels.txt        class names (if any): label_filename of the first output
      <name>/ssmprune.json     the source's manifest, for provenance (Triton ignores it)
      <name>/1/model.onnx      an export (platform onnxruntime_onnx), with its external
                               data files if it has any
      <name>/1/model.plan      an engine (platform tensorrt_plan)

Batch (``sources.batch_of``): a static batch is ``max_batch_size: 0`` with the full
shape as ``dims`` (the client sends the batch axis); a dynamic batch is
``max_batch_size: MAX`` with ``dims`` without the batch axis and ``dynamic_batching``,
which Triton's batcher fills with batches of 1 to MAX (so an engine's profile must
start at 1).

Refused in one line, before anything is written: an output folder that exists; a
TensorRT-RTX engine (Triton's ``tensorrt_plan`` backend links full TensorRT, which
cannot deserialize a TensorRT-RTX engine); an engine holding the ``v3`` plugin form
(Python IPluginV3 creators that only a process running ssmprune registers; Triton's
TensorRT backend loads C++ plugin libraries, not Python ones). An ``aot`` engine carries
its kernels and needs nothing beyond the TensorRT of its version.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

from ssmprune.errors import BadInputFileError, ConfigError
from ssmprune.limits import BATCH, Bound
from ssmprune.ship.errors import LabelsError, NotShippableError
from ssmprune.ship.sources import (LABELS_FILE, Batch, EngineSource, ExportSource, Source,
                                   batch_of, labels_of, new_output_folder, read_sources)

CONFIG_FILE = "config.pbtxt"
PROVENANCE_FILE = "ssmprune.json"
VERSION_DIR = "1"
PLATFORMS = {"export": "onnxruntime_onnx", "engine": "tensorrt_plan"}
MODEL_FILES = {"export": "model.onnx", "engine": "model.plan"}
INSTANCES = Bound(1, 64, "model instances per server (ssmprune.ship.triton_repo.INSTANCES)")
#: Tensor types as the manifests write them (exports: numpy names; engines: TensorRT's)
#: -> Triton's DataType (model_config.proto).
TRITON_TYPES = {
    "float32": "TYPE_FP32", "FLOAT": "TYPE_FP32", "float16": "TYPE_FP16", "HALF": "TYPE_FP16",
    "bfloat16": "TYPE_BF16", "BF16": "TYPE_BF16", "int8": "TYPE_INT8", "INT8": "TYPE_INT8",
    "uint8": "TYPE_UINT8", "UINT8": "TYPE_UINT8", "int32": "TYPE_INT32", "INT32": "TYPE_INT32",
    "int64": "TYPE_INT64", "INT64": "TYPE_INT64", "bool": "TYPE_BOOL", "BOOL": "TYPE_BOOL",
}


@dataclass(frozen=True)
class RepoOptions:
    """instances: per model; onnx_kind: where Triton runs an export (``cpu``: what parity
    checks here, ONNX Runtime's CPU provider; ``gpu``: its CUDA provider); max_batch_size:
    for a dynamic-batch artifact, at most its recorded largest batch (None: that one);
    labels: a labels file for every model (else a labels.txt its export lists)."""

    instances: int = 1
    onnx_kind: Literal["cpu", "gpu"] = "cpu"
    max_batch_size: Optional[int] = None
    labels: Optional[Path] = None


@dataclass
class RepoModel:
    """A model written into the repository."""

    name: str
    platform: str
    source: str
    config: str
    batch: Batch
    max_batch_size: int
    files: list[str] = field(default_factory=list)
    needs: str = ""


def check_servable(source: Source) -> None:
    """Triton's tensorrt_plan backend can load the engine (module docstring)."""
    if not isinstance(source, EngineSource):
        return
    m = source.manifest
    if m.tensorrt["flavour"] == "tensorrt_rtx":
        raise NotShippableError(
            f"engine {source.given} is a TensorRT-RTX {m.tensorrt['version']} engine: Triton's "
            "tensorrt_plan backend runs full TensorRT, which cannot load it; build the engine "
            "with full TensorRT on the server's GPU (`ssmprune build`), or serve the export "
            "(onnxruntime_onnx)")
    if m.plugin_form == "v3":
        raise NotShippableError(
            f"engine {source.given} holds the v3 form of ssmprune's plugins: Python IPluginV3 "
            "creators that only a process running ssmprune (with torch and Triton) registers, "
            "and Triton's TensorRT backend loads C++ plugin libraries only; rebuild it with "
            "--plugin-form aot (kernels inside the engine) or --no-plugins")


def _kind(source: Source) -> str:
    return "engine" if isinstance(source, EngineSource) else "export"


def max_batch_size(source: Source, batch: Batch, asked: Optional[int]) -> int:
    """Triton's max_batch_size: 0 for a static batch; a dynamic batch's largest (or
    ``asked``, within it). A profile not starting at 1 cannot take Triton's batches."""
    if not batch.dynamic:
        if asked is not None:
            raise ConfigError(f"--max-batch-size {asked}: {source.given} has a static batch of "
                              f"{batch.static} (max_batch_size 0, the batch axis in dims); "
                              "export it with a dynamic batch to let Triton batch requests")
        return 0
    if batch.low > 1:
        raise ConfigError(f"engine {source.given} was built for batches {batch.low} and up; "
                          "Triton's dynamic batcher sends batches from 1: rebuild it with "
                          "--batch-range 1:OPT:MAX")
    if asked is None:
        if batch.high is None:
            raise ConfigError(f"{source.given} has a dynamic batch with no recorded largest "
                              "batch: give --max-batch-size")
        return batch.high
    if batch.high is not None and asked > batch.high:
        raise ConfigError(f"--max-batch-size {asked} is above the largest batch {batch.high} "
                          f"{source.given} takes")
    return asked


def _tensors(source: Source) -> tuple[list[dict], list[dict]]:
    if isinstance(source, EngineSource):
        return source.manifest.onnx["inputs"], source.manifest.onnx["outputs"]
    return [source.manifest.input], source.manifest.outputs


def _quote(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, the rest escaped."""
    out = []
    for byte in text.encode("utf-8"):
        c = chr(byte)
        out.append("\\" + c if c in '"\\' else c if 32 <= byte < 127 else f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor_block(t: dict, dynamic: bool, label: bool, where: str) -> str:
    dtype = TRITON_TYPES.get(str(t["dtype"]))
    if dtype is None:
        raise NotShippableError(f"{where}: tensor {t['name']} has type {t['dtype']}, which "
                                "Triton's DataType has no equivalent for")
    dims = list(t["shape"][1:] if dynamic else t["shape"])
    if any(not isinstance(d, int) or d < 1 for d in dims):
        raise NotShippableError(f"{where}: tensor {t['name']} has a dynamic axis besides the "
                                f"batch ({t['shape']}), which these configs do not describe")
    lines = [f"    name: {_quote(t['name'])}", f"    data_type: {dtype}",
             f"    dims: [ {', '.join(map(str, dims))} ]"]
    if label:
        lines.append(f"    label_filename: {_quote(LABELS_FILE)}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def describe(source: Source) -> str:
    """One line on what the source is, for the config's header."""
    export = source.manifest if isinstance(source, ExportSource) else source.export
    what = "dense"
    if export is not None and export.prune:
        what = f"pruned ({export.prune_preset or 'custom'})"
    model = export.model if export is not None else "a model"
    if isinstance(source, EngineSource):
        m = source.manifest
        flavour = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}[m.tensorrt["flavour"]]
        plugins = (f"{m.plugin_form} plugins" if m.plugins else "no plugin layers")
        return (f"{model} {what}, {m.precision} engine of {flavour} {m.tensorrt['version']} "
                f"for {', '.join(m.gpu.get('targets') or [str(m.gpu.get('built_on'))])}, "
                f"{plugins}")
    m = source.manifest
    return (f"{model} {what}, {m.precision} export, opset {m.opset}, "
            f"{m.flavor} flavour")


def server_needs(source: Source) -> str:
    """What the Triton server must have to load the model (the command prints it)."""
    if isinstance(source, EngineSource):
        m = source.manifest
        text = (f"Triton's TensorRT backend with TensorRT {m.tensorrt['version']}"
                + (f" or a later {m.tensorrt['version'].split('.')[0]}.x (version-compatible "
                   "engine: start tritonserver with --backend-config=tensorrt,"
                   "version-compatible=true)" if m.version_compatible else " exactly")
                + f", a GPU of {', '.join(m.gpu.get('targets') or [str(m.gpu.get('built_on'))])}")
        if m.plugins:
            text += (f"; its {m.plugin_form} plugin kernels are inside the engine (PTX "
                     f"{m.ptx_version}: the driver must load it), no plugin library")
        return text
    m = source.manifest
    customs = ", ".join(f"{op['domain']}::{op['name']}" for op in m.custom_ops
                        if isinstance(op, dict) and "name" in op and op.get("nodes", 1))
    return (f"Triton's ONNX Runtime backend with an ONNX Runtime that implements opset {m.opset}"
            + (f"; the custom nodes ({customs}) carry standard-op function bodies, which ONNX "
               "Runtime runs as they are: no custom op library" if customs else ""))


def config_text(name: str, source: Source, batch: Batch, max_batch: int, options: RepoOptions,
                labels: bool) -> str:
    """The model's config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    kind = _kind(source)
    inputs, outputs = _tensors(source)
    dynamic = max_batch > 0
    where = source.given
    instance = "KIND_GPU" if kind == "engine" or options.onnx_kind == "gpu" else "KIND_CPU"
    parts = [
        f"# Written by `ssmprune triton-repo` from {where.replace(chr(10), ' ')}",
        f"# {describe(source)}",
        f"# Server needs: {server_needs(source)}",
        f"name: {_quote(name)}",
        f"platform: {_quote(PLATFORMS[kind])}",
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(_tensor_block(t, dynamic, False, where) for t in inputs)
        + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t, dynamic, labels and i == 0, where)
                                  for i, t in enumerate(outputs)) + "\n]",
        f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {instance}\n  }}\n]",
    ]
    if dynamic:
        parts.append("dynamic_batching { }")
    return "\n".join(parts) + "\n"


def _external_data(onnx_path: Path) -> list[str]:
    """The files the ONNX's external tensors name (``location``), in first-seen order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    found: dict[str, None] = {}

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            yield from _node_tensors(node)

    def _node_tensors(node):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from tensors(attr.g)
            for g in attr.graphs:
                yield from tensors(g)

    everything = list(tensors(model.graph))
    for function in model.functions:
        for node in function.node:
            everything += list(_node_tensors(node))
    for t in everything:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for entry in t.external_data:
                if entry.key == "location":
                    found[entry.value] = None
    return list(found)


def model_files(source: Source) -> list[tuple[Path, str]]:
    """(file to copy, its path in the model folder) for ``source``: the model and, for an
    export, its external data files (each one the export lists, so its sha256 was checked)."""
    if isinstance(source, EngineSource):
        return [(source.path, f"{VERSION_DIR}/{MODEL_FILES['engine']}")]
    from ssmprune.exporter.manifest import MODEL_FILE

    onnx_path = source.directory / MODEL_FILE
    out = [(onnx_path, f"{VERSION_DIR}/{MODEL_FILES['export']}")]
    for location in _external_data(onnx_path):
        if location not in source.manifest.files:
            raise BadInputFileError(f"{onnx_path} keeps tensors in {location[:80]}, which its "
                                    "manifest does not list (no sha256 to check it by)")
        out.append((source.directory / location, f"{VERSION_DIR}/{location}"))
    return out


def _provenance(source: Source) -> Path:
    if isinstance(source, EngineSource):
        return source.manifest_path
    from ssmprune.exporter.manifest import MANIFEST_FILE

    return source.directory / MANIFEST_FILE


def make_repo(sources: Sequence[str], output: Path, options: RepoOptions = RepoOptions()
              ) -> list[RepoModel]:
    """Write the model repository of ``sources`` into the new folder ``output``."""
    from ssmprune.outputs import atomic_dir

    INSTANCES.check("--instances", options.instances)
    if options.max_batch_size is not None:
        BATCH.check("--max-batch-size", options.max_batch_size)
    out = new_output_folder(output, sources, "a model repository")
    read = read_sources(sources)
    plans = []
    for s in read:
        check_servable(s)
        batch = batch_of(s)
        mbs = max_batch_size(s, batch, options.max_batch_size)
        labels = labels_of(s, options.labels)
        if labels is not None and mbs == 0 and (batch.high or 1) > 1:
            # Without a batch dimension Triton ranks all b x C logits of a [b, C] output as
            # one vector (server/src/classification.cc): classes would mix across images.
            raise LabelsError(
                f"{s.name}: labels serve Triton's classification only with a dynamic batch "
                f"or a batch of 1, not a static batch of {batch.high}: export with --batch "
                "dynamic, or leave --labels out")
        plans.append((s, batch, mbs, labels, model_files(s)))
    models = []
    with atomic_dir(out) as tmp:
        for s, batch, mbs, labels, files in plans:
            folder = tmp / s.name
            (folder / VERSION_DIR).mkdir(parents=True)
            for src, rel in files:
                shutil.copyfile(src, folder / rel)
            _check_copies(s, folder, files)
            shutil.copyfile(_provenance(s), folder / PROVENANCE_FILE)
            if labels is not None:
                (folder / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
            config = config_text(s.name, s, batch, mbs, options, labels is not None)
            (folder / CONFIG_FILE).write_text(config, encoding="utf-8")
            written = sorted(str(p.relative_to(tmp)) for p in folder.rglob("*") if p.is_file())
            models.append(RepoModel(s.name, PLATFORMS[_kind(s)], s.given, config, batch, mbs,
                                    written, server_needs(s)))
    return models


def _check_copies(source: Source, folder: Path, files: list[tuple[Path, str]]) -> None:
    """The copied model files are the ones whose sha256 was checked."""
    from ssmprune.exporter.manifest import sha256_file

    if isinstance(source, EngineSource):
        expected = {rel: source.manifest.engine["sha256"] for _, rel in files}
    else:
        listed = source.manifest.files
        expected = {rel: listed[src.name]["sha256"] for src, rel in files}
    for rel, sha in expected.items():
        if sha256_file(folder / rel) != sha:
            raise BadInputFileError(f"{folder.name}/{rel} changed while it was copied: its "
                                    "sha256 is not the one checked; run the command again")
