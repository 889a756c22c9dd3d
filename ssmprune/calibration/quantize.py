"""``ssmprune calibrate``: an fp32 export -> a Q/DQ export (int8 or fp8) next to its manifest.

    read + verify the fp32 export -> load calibration samples -> ONNX Runtime's
    static quantizer (QDQ format, MatMul / Conv / Gemm only, symmetric int8,
    per-channel weights) -> Q/DQ confined to the projections -> fp8: the
    same graph rescaled to E4M3FN (``fp8.fp8_from_int8``) -> checked ->
    report (quantized vs fp32 in ONNX Runtime) -> atomic write

The scan and gather stay custom nodes with their standard-op bodies: ONNX
Runtime's quantizer leaves model-local functions alone (it quantizes the
main graph's nodes of the listed types), so no Q/DQ can land inside them,
and ``qdq.qdq_placement`` proves it on every file written. fp8 goes through
the int8 graph rather than ONNX Runtime's own float8 mode, which takes
only its Distribution calibration and saturates outliers (``fp8``'s
docstring); ONNX Runtime's CPU provider runs both (Q/DQ, then fp32 MatMul).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import numpy as np
import onnx
from pydantic import with_config
from typing_extensions import TypedDict

from ssmprune.calibration.data import DYNAMIC_FEED_BATCH, Samples, batches
from ssmprune.calibration.fp8 import FP8_MIN_OPSET, fp8_from_int8, qdq_types
from ssmprune.calibration.qdq import (
    QUANTIZED_OPS,
    QdqPlacementError,
    confine_qdq,
    qdq_placement,
    selection_nodes,
)
from ssmprune import defaults
from ssmprune.errors import BadInputFileError, ConfigError, InputShapeError
from ssmprune.exporter.manifest import (
    FORMAT,
    METADATA_FORMAT_KEY,
    MODEL_FILE,
    Manifest,
    library_versions,
    read_export,
    verify_model_file,
    write_export,
)
from ssmprune.exporter.progress import Steps
from ssmprune.manifest_schema import STRICT, ErrorType, PositiveInt

METHODS = ("minmax", "entropy", "percentile")
PRECISIONS = ("int8", "fp8")
QTYPES = {"int8": "int8", "fp8": "float8e4m3fn"}
_ORT = "onnxruntime.quantization.quantize_static (QDQ)"
QUANTIZERS = {"int8": _ORT,
              "fp8": f"{_ORT}, int8 graph rescaled to fp8 (ssmprune.calibration.fp8)"}
SCALES = {"int8": "scale amax / 127", "fp8": "scale amax / 448"}
_ONNX_TYPES = {"int8": onnx.TensorProto.INT8, "fp8": onnx.TensorProto.FLOAT8E4M3FN}
DEFAULT_SAMPLES = 128
DEFAULT_METHOD = defaults.CALIBRATION_METHOD
REPORT_FILE = "calibration.json"
Progress = Callable[[int, int], None]  # (batches done, batches in all)


@dataclass(frozen=True)
class CalibrateOptions:
    """How to quantize. ``samples``: how many calibration inputs to use at most;
    ``allow_miss``: write the result even when its verdict misses the tolerance."""

    method: str = DEFAULT_METHOD
    precision: str = "int8"
    samples: int = DEFAULT_SAMPLES
    per_channel: bool = True
    protect_selection: bool = True
    allow_miss: bool = False

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if self.samples < 1:
            raise ConfigError(f"--samples must be at least 1, got {self.samples}")


@with_config({**STRICT, "extra": "allow"})
class QuantizationRecord(TypedDict):
    """What calibration did; the keys read back are typed, the rest is a report."""

    precision: Literal["int8", "fp8"]
    method: Literal["minmax", "entropy", "percentile"]
    samples: PositiveInt


@dataclass
class QuantizedManifest(Manifest):
    """An export manifest plus what calibration did (method, data, the fp32 source).

    The schema is the export manifest's with ``quantization``, whose
    precision must be the manifest's. ``fp32_source.directory`` records where
    the fp32 export was, for information: nothing reads files from it.
    """

    quantization: Optional[QuantizationRecord] = None

    def check_fields(self, source: str, error: ErrorType = BadInputFileError) -> None:
        super().check_fields(source, error)
        if self.quantization is None:
            raise error(f"{source} has no quantization record: not a calibrated export")
        if self.quantization["precision"] != self.precision:
            raise error(f"{source}: quantization.precision {self.quantization['precision']} "
                        f"differs from precision {self.precision}")


@dataclass
class CalibrateResult:
    directory: Path
    manifest: QuantizedManifest
    placement: dict[str, int]
    report: dict[str, Any]
    seconds: float
    step_seconds: dict[str, float]


class _Reader:
    """ONNX Runtime's CalibrationDataReader over the export's batches, reporting progress:
    a static batch padded with the first sample, a dynamic one in unpadded chunks."""

    def __init__(self, input_name: str, x: np.ndarray, manifest: Manifest,
                 progress: Optional[Progress]):
        step = (min(manifest.batch_range()[1], DYNAMIC_FEED_BATCH) if manifest.dynamic
                else manifest.batch)
        self.feeds = [{input_name: b} for b in batches(x, step, pad=not manifest.dynamic)]
        self.progress = progress
        self.done = 0

    def get_next(self):
        if self.done >= len(self.feeds):
            return None
        feed = self.feeds[self.done]
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.feeds))
        return feed

    def rewind(self) -> None:
        self.done = 0


def check_samples(samples: Samples, manifest: Manifest, what: str = "calibration set") -> None:
    """The samples must be (n, c, s, s) of the export's input; otherwise a one-line error."""
    expected = tuple(manifest.input["shape"][1:])
    if tuple(samples.x.shape[1:]) != expected:
        raise InputShapeError(f"the {what} ({samples.source}) holds {tuple(samples.x.shape[1:])} "
                              f"inputs but {manifest.model} takes {expected}: a set for "
                              "another model?")
    if len(samples) == 0:
        raise BadInputFileError(f"the {what} ({samples.source}) is empty")


def quantize_int8(source: Path, target: Path, samples: Samples, manifest: Manifest,
                  options: CalibrateOptions, progress: Optional[Progress] = None,
                  exclude: tuple[str, ...] = (), fp32_weights: bool = False) -> None:
    """ONNX Runtime's static quantization, QDQ format, of ``source`` into ``target``;
    the nodes named in ``exclude`` stay fp32. ``fp32_weights``: weights stay fp32
    initializers read by a QuantizeLinear (for ``fp8_from_int8``), not int8 ones."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[options.method]
    reader = _Reader(manifest.input["name"], samples.x, manifest, progress)
    # quantize_static logs "Please consider pre-processing before quantization" on the
    # root logger every call; our graphs come shape-inferred from the exporter.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(source), str(target), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=options.per_channel,
            nodes_to_exclude=list(exclude),
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options={
                # Outputs of the projections feed fp32 ops (norms, softplus, the scan):
                # quantizing them would only add error.
                "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                "DedicatedQDQPair": True,
                # TensorRT takes symmetric int8 only (zero point 0), activations included.
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                # TensorRT rejects int32 (bias) DequantizeLinear inputs; it fuses an fp32
                # bias into the int8 layer itself.
                "QuantizeBias": False,
                "AddQDQPairToWeight": fp32_weights,
            })
    finally:
        root.setLevel(level)


def _check_qdq_type(model: onnx.ModelProto, precision: str) -> None:
    """Every Q/DQ of the file quantizes to ``precision``'s type (a bug otherwise)."""
    types = qdq_types(model)
    if types != {_ONNX_TYPES[precision]}:
        names = ", ".join(sorted(onnx.TensorProto.DataType.Name(t) for t in types)) or "none"
        raise QdqPlacementError(f"{precision} calibration wrote Q/DQ of type(s) {names}")


def _token_selection(options: CalibrateOptions, kept_fp32: list[str]) -> str:
    """How the manifest describes the precision of the token selection."""
    if not options.protect_selection:
        return options.precision
    if not kept_fp32:
        return "no TokenGather (dense model)"
    return (f"fp32: the projections upstream of a TokenGather ({len(kept_fp32)} nodes) "
            "are not quantized")


def calibrate(directory: Union[str, Path], data, options: CalibrateOptions,
              out_dir: Union[str, Path], holdout=None, steps: Optional[Steps] = None,
              progress: Optional[Progress] = None) -> CalibrateResult:
    """Quantize the fp32 export in ``directory`` with samples from ``data`` into ``out_dir``.

    ``data`` and ``holdout`` are sources with ``load(limit)`` (see
    ``calibration.data``); ``holdout`` (optional) is the evaluation set of the
    report. User errors raise ``SsmpruneError`` before anything is written.
    """
    from ssmprune.calibration.report import build_report, miss_message
    from ssmprune.parity.tolerances import ToleranceError

    options.validate()
    steps = steps or Steps()
    start = time.perf_counter()
    src_dir, manifest = read_export(directory)
    verify_model_file(src_dir / MODEL_FILE)
    if manifest.precision != "fp32":
        raise ConfigError(f"{src_dir} is a {manifest.precision} export; calibrate an fp32 one")
    if options.precision == "fp8" and manifest.opset < FP8_MIN_OPSET:
        raise ConfigError(f"{src_dir} is an opset {manifest.opset} export; fp8 Q/DQ needs opset "
                          f">= {FP8_MIN_OPSET} (export it again with --opset {FP8_MIN_OPSET} or "
                          "later)")
    with steps.step("load calibration data"):
        samples = data.load(options.samples)
        check_samples(samples, manifest)
        held = None
        if holdout is not None:
            held = holdout.load(None)
            check_samples(held, manifest, "held-out set")
    kept_fp32 = (selection_nodes(onnx.load(str(src_dir / MODEL_FILE)))
                 if options.protect_selection else [])
    with tempfile.TemporaryDirectory(prefix="ssmprune-calibrate-") as tmp:
        target = Path(tmp) / MODEL_FILE
        with steps.step(f"calibrate ({options.method}, {len(samples)} samples)"):
            quantize_int8(src_dir / MODEL_FILE, target, samples, manifest, options, progress,
                          tuple(kept_fp32), fp32_weights=options.precision == "fp8")
        with steps.step("confine + check Q/DQ"):
            model = onnx.load(str(target))
            rewired = confine_qdq(model)
            if options.precision == "fp8":
                fp8_from_int8(model)
            placement = qdq_placement(model)
            placement["rewired_inputs"] = rewired
            _check_qdq_type(model, options.precision)
            onnx.helper.set_model_props(model, {METADATA_FORMAT_KEY: FORMAT,
                                                "ssmprune.model": manifest.model,
                                                "ssmprune.precision": options.precision})
            onnx.checker.check_model(model)
            data_bytes = model.SerializeToString()
            target.write_bytes(data_bytes)
        with steps.step(f"report (ONNX Runtime, {options.precision} vs fp32)"):
            report = build_report(src_dir / MODEL_FILE, target, manifest, samples, held,
                                  options.precision)
    if not report["passed"] and not options.allow_miss:
        raise ToleranceError(f"{miss_message(report)}; nothing written (more --samples, "
                             "another --method or --selection fp32 may help; --allow-miss "
                             "writes it anyway)")
    source_files = {name: entry["sha256"] for name, entry in manifest.files.items()}
    fields = {f.name: getattr(manifest, f.name) for f in dataclasses.fields(Manifest)}
    fields.update(files={}, precision=options.precision, versions=library_versions(),
                  export_seconds=None)
    quantized = QuantizedManifest(**fields, quantization={
        "precision": options.precision,
        "quantizer": QUANTIZERS[options.precision],
        "method": options.method,
        "activations": f"{QTYPES[options.precision]} per tensor symmetric, "
                       f"{SCALES[options.precision]}",
        "weights": f"{QTYPES[options.precision]} symmetric "
                   + ("per channel" if options.per_channel else "per tensor"),
        "op_types": list(QUANTIZED_OPS),
        "fp32_ops": "everything else: SelectiveScan, TokenGather (and their bodies), norms, "
                    "softplus, exp",
        "token_selection": _token_selection(options, kept_fp32),
        "samples": len(samples),
        "data": samples.describe(),
        "placement": placement,
        "fp32_source": {"directory": str(src_dir.resolve()), "files": source_files},
        "report": {k: report[k] for k in ("calibration", "held_out") if k in report},
    })
    with steps.step("write"):
        out = write_export(Path(out_dir), {
            MODEL_FILE: data_bytes,
            REPORT_FILE: (json.dumps(report, indent=2) + "\n").encode(),
        }, quantized)
    return CalibrateResult(out, quantized, placement, report, time.perf_counter() - start,
                           dict(steps.seconds))
