"""``ssmprune export``: a model, dense or pruned, to DIR/model.onnx + DIR/manifest.json.

    build model [-> fp16: half weights, fp32 input and logits] -> torch.export
        -> ONNX (custom nodes + bodies) [-> standard flavour: bodies inlined]
        -> checks -> atomic write

Precision (``--dtype``): fp32, or fp16, where the weights and activations
are fp16 and the graph's input ``images`` and output ``logits`` stay fp32,
with one Cast after the input and one before the output
(``stages.fp16_from_model``). TensorRT 11 and TensorRT-RTX are strongly typed
and take every tensor's type from the file, so this builds an fp16 engine
whose bindings, preprocessing and parity feeds are the fp32 export's: the
two casts touch the image and the logits only. What stays fp32 inside is
what the models and the ops keep fp32 on purpose: Vim's residual stream
and RMSNorm statistics, LayerNorm's statistics (``stash_type``), the
importance scores, the scan's A, D and dt bias (fp16 weights cast to fp32,
the schema's type) and the scan and gather bodies' arithmetic: they upcast
to fp32, so the scan state is fp32, and cast the result back.

The model is rebuilt from the manifest by ``model_from_manifest`` (parity
uses it), so everything ``create_model`` was given is recorded.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import onnx
import torch
from torch import nn

from ssmprune.errors import BadInputFileError, ConfigError
from ssmprune.exporter import schemas, stages
from ssmprune.exporter.manifest import (
    BATCH_DIM,
    FORMAT,
    METADATA_FORMAT_KEY,
    MODEL_FILE,
    Manifest,
    library_versions,
    sha256_file,
    write_export,
)
from ssmprune.exporter.progress import Steps
from ssmprune.limits import MAX_BATCH
from ssmprune.models.construct import DEFAULT_SEED, build_model
from ssmprune.models.digits import embedded_weights
from ssmprune.pruning import PruneConfig

PRECISIONS = ("fp32", "fp16")
ELEMENT_BYTES = {"fp32": 4, "fp16": 2}
FLAVORS = ("plugins", "standard")
DEFAULT_OPSET = 20
MIN_OPSET = 18  # Split(num_outputs) and the bodies' op forms
MAX_OPSET = 23  # newest opset torch.onnx, onnx and onnxruntime here all handle


@dataclass(frozen=True)
class ExportOptions:
    """What to export. ``overrides`` are extra ``create_model`` config fields.

    ``batch`` is the static batch, or with ``max_batch`` (dynamic batch: any batch
    from 1 to ``max_batch``) the default batch the manifest records.
    """

    model: str
    checkpoint: Optional[str] = None
    seed: int = DEFAULT_SEED
    prune: Union[None, str, PruneConfig] = None
    overrides: dict[str, Any] = field(default_factory=dict)
    batch: int = 1
    max_batch: Optional[int] = None
    precision: str = "fp32"
    flavor: str = "plugins"
    opset: int = DEFAULT_OPSET

    def validate(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"--batch must be at least 1, got {self.batch}")
        if self.max_batch is not None and not 2 <= self.max_batch <= MAX_BATCH:
            raise ConfigError(f"--batch dynamic:MAX needs MAX from 2 to {MAX_BATCH} (a batch "
                              f"of 1 is --batch 1), got {self.max_batch}")
        if self.max_batch is not None and self.batch > self.max_batch:
            raise ConfigError(f"batch {self.batch} is above the dynamic batch's maximum "
                              f"{self.max_batch}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--dtype must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if self.flavor not in FLAVORS:
            raise ConfigError(f"--flavor must be one of {', '.join(FLAVORS)}, got {self.flavor!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"--opset must be in [{MIN_OPSET}, {MAX_OPSET}], got {self.opset}")


@dataclass
class ExportResult:
    """What an export wrote, with the figures the CLI summarises."""

    directory: Path
    manifest: Manifest
    op_counts: dict[str, int]
    file_bytes: int
    weight_bytes: int  # the state dict at the export's precision (``weight_bytes``)
    seconds: float
    step_seconds: dict[str, float]

    @property
    def custom_nodes(self) -> dict[str, int]:
        return {k: v for k, v in self.op_counts.items() if k.startswith(schemas.DOMAIN + "::")}


def _prune_record(model: nn.Module, prune) -> tuple[Optional[dict], Optional[str]]:
    config = getattr(model, "prune", None)
    if config is None:
        return None, None
    return dataclasses.asdict(config), prune if isinstance(prune, str) else None


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _dtype_name(value: onnx.ValueInfoProto) -> str:
    """numpy's name of a graph input's or output's element type ("float32")."""
    return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name


def weight_bytes(model: nn.Module, precision: str = "fp32") -> int:
    """Bytes of the model's floating-point state dict (parameters and persistent
    buffers) at ``precision`` (fp32: 4 bytes a value, fp16: 2)."""
    size = ELEMENT_BYTES[precision]
    return sum(t.numel() * size for t in model.state_dict().values() if t.is_floating_point())


def _weights_record(options: ExportOptions) -> dict[str, Any]:
    """The checkpoint (given, or a digits model's embedded weights) and its sha256,
    or the seed of random weights: what ``model_from_manifest`` rebuilds from."""
    checkpoint = options.checkpoint or embedded_weights(options.model)
    if checkpoint is None:
        return {"seed": options.seed}
    path = Path(checkpoint).resolve()
    return {"checkpoint": str(path), "sha256": sha256_file(path)}


def export(options: ExportOptions, out_dir: Union[str, Path],
           steps: Optional[Steps] = None) -> ExportResult:
    """Export ``options.model`` to ``out_dir`` (see the module docstring).

    User errors (unknown model, preset of another model, bad checkpoint, bad
    option) raise ``SsmpruneError`` before anything is written; a failure
    later leaves ``out_dir`` as it was.
    """
    options.validate()
    steps = steps or Steps()
    start = time.perf_counter()
    with steps.step("build model"):
        model, _ = build_model(options.model, options.checkpoint, options.seed,
                               prune=options.prune, **options.overrides)
        shape = (options.batch, *model.input_shape())
        # A dynamic batch is traced at 2: torch.export specialises a dimension seen as 1.
        example_shape = (2, *shape[1:]) if options.max_batch else shape
        example = torch.randn(example_shape, generator=torch.Generator().manual_seed(0))
        traced = stages.fp16_from_model(model) if options.precision == "fp16" else model
    with steps.step("torch.export"):
        program = stages.exported_program_from_model(traced, example, options.max_batch)
        torch_ops = stages.custom_op_counts(program)
    with steps.step("ONNX (torch.onnx, dynamo)"):
        model_proto = stages.onnx_from_exported_program(program, options.opset)
        if options.max_batch:
            stages.name_batch_dim(model_proto, BATCH_DIM)
    if options.flavor == "standard":
        with steps.step("inline bodies (standard)"):
            model_proto = stages.standard_from_plugins(model_proto)
    with steps.step("check (onnx.checker)"):
        stages.check_onnx(model_proto)
    op_counts = stages.op_type_counts(model_proto)
    output = model_proto.graph.output[0]
    first = BATCH_DIM if options.max_batch else options.batch
    out_shape = [first, *(d.dim_value for d in output.type.tensor_type.shape.dim[1:])]
    in_dtype, out_dtype = (_dtype_name(v) for v in (model_proto.graph.input[0], output))
    prune_dict, preset = _prune_record(model, options.prune)
    manifest = Manifest(
        model=options.model,
        family=model.family,
        config=_jsonable(dataclasses.asdict(model.config)),
        overrides=_jsonable(dict(options.overrides)),
        prune=_jsonable(prune_dict),
        prune_preset=preset,
        weights=_weights_record(options),
        input={"name": stages.INPUT_NAME, "shape": [first, *shape[1:]], "dtype": in_dtype},
        outputs=[{"name": stages.OUTPUT_NAME, "shape": out_shape, "dtype": out_dtype}],
        batch=options.batch,
        max_batch=options.max_batch,
        precision=options.precision,
        flavor=options.flavor,
        opset=options.opset,
        custom_ops=[{"domain": schemas.DOMAIN, "name": name, "version": schemas.VERSION,
                     "nodes": op_counts.get(f"{schemas.DOMAIN}::{name}", 0),
                     "torch_op": torch_op, "torch_nodes": torch_ops[torch_op]}
                    for name, torch_op in ((schemas.SELECTIVE_SCAN, stages.TORCH_OPS[0]),
                                           (schemas.TOKEN_GATHER, stages.TORCH_OPS[1]))],
        versions=library_versions(),
    )
    onnx.helper.set_model_props(model_proto, {METADATA_FORMAT_KEY: FORMAT,
                                              "ssmprune.model": options.model})
    model_proto.producer_name = "ssmprune"
    with steps.step("write"):
        data = model_proto.SerializeToString()
        manifest.export_seconds = round(time.perf_counter() - start, 2)
        directory = write_export(Path(out_dir), {MODEL_FILE: data}, manifest)
    return ExportResult(directory, manifest, op_counts, len(data),
                        weight_bytes(model, options.precision),
                        time.perf_counter() - start, dict(steps.seconds))


def model_from_manifest(manifest: Manifest, checkpoint: Optional[str] = None) -> nn.Module:
    """The PyTorch reference model an export was made from, with the same weights.

    The manifest's config is checked against its model's family first (types
    included: ``manifest_schema.validate``). Weights: the recorded seed, or
    the checkpoint with the recorded sha256: ``checkpoint`` when given (a
    file of the export folder, ``manifest.checkpoint_in_export``, or the
    user's ``--checkpoint``), else the embedded weights of a digits model when
    theirs is the recorded sha256. A recorded absolute path is never opened:
    a manifest could name any file of the machine.
    """
    from ssmprune.manifest_schema import validate
    from ssmprune.models.registry import get_entry

    entry = get_entry(manifest.model)
    if entry.family.name != manifest.family:
        raise BadInputFileError(f"the manifest says {manifest.model} is a {manifest.family} "
                                f"model; this ssmprune has it as {entry.family.name}")
    validate(entry.family.config_cls, manifest.config, "the manifest's config",
             f"{entry.family.name} config")
    prune = None
    if manifest.prune is not None:
        p = dict(manifest.prune)
        ratio = p["keep_ratio"]
        prune = PruneConfig(tuple(ratio) if isinstance(ratio, list) else ratio,
                            tuple(p["prune_after"]), p["importance"], p["alignment"])
    path = _checkpoint(manifest, checkpoint)
    model, _ = build_model(manifest.model, str(path) if path else None,
                           manifest.weights.get("seed", DEFAULT_SEED), prune=prune,
                           **manifest.overrides)
    if _jsonable(dataclasses.asdict(model.config)) != manifest.config:
        raise BadInputFileError(f"the manifest's {manifest.model} config differs from what this "
                                "ssmprune builds from it; export the model again")
    return model


def _checkpoint(manifest: Manifest, given: Optional[str]) -> Optional[Path]:
    """The checkpoint file to load (see ``model_from_manifest``), None for seeded weights."""
    weights = manifest.weights
    if "checkpoint" not in weights:
        return None
    recorded, digest = weights["checkpoint"], weights["sha256"]
    if given is not None:
        path = Path(given)
        if not os.path.isfile(path):  # os.path: False for a name too long, where Path raises
            raise BadInputFileError(f"checkpoint {path} is missing (the manifest records "
                                    f"{recorded})")
        if sha256_file(path) != digest:
            raise BadInputFileError(f"checkpoint {path} does not match the sha256 in the manifest")
        return path
    embedded = embedded_weights(manifest.model)
    if embedded is not None and sha256_file(embedded) == digest:
        return embedded
    if not Path(recorded).is_absolute():
        raise BadInputFileError(f"checkpoint {recorded} is a file of the export folder: "
                                "pass its path (exporter.manifest.checkpoint_in_export)")
    raise BadInputFileError(f"checkpoint {recorded} recorded in the manifest is outside the "
                            "export folder, and ssmprune opens no file outside it on a "
                            "manifest's word: give --checkpoint PATH (the same file)")
