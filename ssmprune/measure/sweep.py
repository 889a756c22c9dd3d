"""Accuracy and latency over keep ratios and precisions: ``ssmprune sweep``.

For each keep ratio (1.0 = dense) and precision, a *point*:

    export (``exporter.export``, fp32)  ->  calibrate (int8 / fp8:
    ``calibration.quantize.calibrate``, written even when it misses its verdict, which
    the point records)  ->  eval (``measure.accuracy``, ONNX Runtime)

then every point's export is timed (``measure.latency``, ONNX Runtime, at ``--batch``) in
one interleaved run: each round runs every point once. The exports have a dynamic batch
(1 to ``EVAL_BATCH`` or ``--batch``): eval runs them in batches of ``EVAL_BATCH``, the
timing at ``--batch``, from the same file.

The pruned points prune after the same blocks with the same importance and
alignment (by default the model's pruning preset's: ``plainmamba_digits_top``
for ``plainmamba_digits``); only the keep ratio changes. GFLOPs and tokens per
block come from the model (``models.summary.describe``).

Layout of the output folder:

    DIR/points/r<ratio>/<precision>/        the export (model.onnx, manifest.json)
    DIR/points/r<ratio>/<precision>.json    the point's result
    DIR/sweep.json, DIR/sweep.md, DIR/sweep.png

    DIR/points/r<ratio>/<precision>.export.json   what the export was made with

Resumable: a point whose result JSON is present, parses, was made with the
same settings (its ``key``) and whose export still verifies
(``exporter.manifest.read_export``, sha256 included) with the recorded sha256 is
not redone; an export whose record holds the same settings and that verifies
with the recorded sha256 is reused by an unfinished point. Every file is
written atomically (``ssmprune.outputs``).

Latency is measured afresh on every run, resumed or not, all points interleaved,
so the points' latency ratios come from one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ssmprune.defaults import HOLDOUT_SAMPLES
from ssmprune.errors import BadInputFileError, ConfigError
from ssmprune.exporter.progress import Steps

PRECISIONS = ("fp32", "int8", "fp8")
SWEEP_JSON, SWEEP_MD, SWEEP_PNG = "sweep.json", "sweep.md", "sweep.png"
POINTS = "points"
# The largest batch eval runs a point's export in (its dynamic batch reaches at least it).
EVAL_BATCH = 64
FORMAT = "ssmprune.sweep/1"
Note = Callable[[str], None]


@dataclass(frozen=True)
class SweepOptions:
    """What to sweep. None fields take their defaults (``resolved``)."""

    model: str
    keep_ratios: tuple[float, ...]
    data: str
    precisions: tuple[str, ...] = ("fp32",)
    prune_after: Optional[tuple[int, ...]] = None
    importance: Optional[str] = None
    alignment: Optional[str] = None
    checkpoint: Optional[str] = None
    seed: int = 0
    img_size: Optional[int] = None
    labels: Optional[str] = None
    calibration_data: Optional[str] = None
    calibration_samples: int = 128
    method: Optional[str] = None
    batch: int = 1
    warmup: int = 2
    iterations: int = 10
    threads: Optional[int] = None

    def resolved(self) -> "SweepOptions":
        """Defaults filled in: the preset's pruning points, the calibration set and method.

        A model without a preset needs ``prune_after``; unknown models and
        precisions are ``ConfigError``s.
        """
        from ssmprune.calibration.quantize import CalibrateOptions
        from ssmprune.models import model_names
        from ssmprune.models.digits import EMBEDDED
        from ssmprune.pruning.config import PRESETS

        if self.model not in model_names():
            raise ConfigError(f"unknown model {self.model!r} (`ssmprune info` lists them)")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ConfigError(f"--precisions: {', '.join(bad)}; choose from "
                              f"{', '.join(PRECISIONS)}")
        preset = next((c for m, c in PRESETS.values() if m == self.model), None)
        prune_after, importance, alignment = self.prune_after, self.importance, self.alignment
        if preset is not None:
            prune_after = prune_after or tuple(preset.prune_after)
            importance = importance or preset.importance
            alignment = alignment or preset.alignment
        if prune_after is None and any(r < 1.0 for r in self.keep_ratios):
            raise ConfigError(f"{self.model} has no pruning preset to take the pruning points "
                              "from: give --prune-after B[,B...]")
        calib = self.calibration_data or ("digits:train" if self.model in EMBEDDED
                                          else "skimage")
        return dataclasses.replace(self, prune_after=prune_after, importance=importance or "clip",
                                   alignment=alignment or "gap", calibration_data=calib,
                                   method=self.method or CalibrateOptions().method)

    def prune(self, ratio: float):
        """The PruneConfig of a keep ratio (None for 1.0, dense)."""
        from ssmprune.pruning import PruneConfig

        if ratio == 1.0:
            return None
        return PruneConfig(ratio, tuple(self.prune_after), self.importance, self.alignment)


def point_id(ratio: float) -> str:
    return f"r{ratio:g}"


def _checkpoint_sha(options: SweepOptions) -> Optional[str]:
    from ssmprune.exporter.manifest import sha256_file
    from ssmprune.models.digits import embedded_weights

    path = options.checkpoint or embedded_weights(options.model)
    return None if path is None else sha256_file(Path(path))


def fingerprint(spec: Optional[str]) -> Optional[str]:
    """What a data or labels argument holds, so that a resumed sweep notices new content at
    the same path: a file's sha256, a folder's (relative path, size, mtime) listing's, or
    the spec itself for a named set (digits:held_out, skimage)."""
    from ssmprune.exporter.manifest import sha256_file

    if spec is None or not os.path.lexists(spec):
        return spec
    path = Path(spec)
    if path.is_file():
        return "sha256:" + sha256_file(path)
    listing = sorted((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns)
                     for f in path.rglob("*") if f.is_file())
    return "listing-sha256:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def point_key(options: SweepOptions, ratio: float, precision: str, weights: Optional[str]
              ) -> dict[str, Any]:
    """Everything a point's numbers depend on: a stored point with another key is redone."""
    key = export_key(options, ratio, precision, weights)
    key.update(data=options.data, labels=options.labels, data_content=fingerprint(options.data),
               labels_content=fingerprint(options.labels))
    return key


def _valid_export(directory: Path, sha256: Optional[str] = None):
    """The export's manifest when ``directory`` holds one that verifies (and has model.onnx
    of ``sha256`` when given), else None."""
    from ssmprune.exporter.manifest import MODEL_FILE, read_export

    if not (directory / "manifest.json").is_file():
        return None
    try:
        _, manifest = read_export(directory)
    except BadInputFileError:
        return None
    if sha256 is not None and manifest.files.get(MODEL_FILE, {}).get("sha256") != sha256:
        return None
    return manifest


def export_key(options: SweepOptions, ratio: float, precision: str, weights: Optional[str],
               fp32_sha: Optional[str] = None) -> dict[str, Any]:
    """What an export of a point depends on (a quantized one: also its fp32 source)."""
    from ssmprune.calibration.data import default_holdout

    prune = options.prune(ratio)
    key = {"model": options.model, "weights": weights or {"seed": options.seed},
           "img_size": options.img_size, "max_batch": max(EVAL_BATCH, options.batch),
           "precision": precision, "prune": None if prune is None else json.loads(json.dumps(dataclasses.asdict(prune)))}
    if precision != "fp32":
        key.update(fp32_sha256=fp32_sha, calibration_data=options.calibration_data,
                   calibration_content=fingerprint(options.calibration_data),
                   calibration_samples=options.calibration_samples, method=options.method,
                   holdout=default_holdout(options.model), holdout_samples=HOLDOUT_SAMPLES)
    return key


def _reusable_export(directory: Path, key: dict):
    """The manifest of the export in ``directory`` when its record (``<dir>.export.json``)
    holds ``key`` and the export still verifies with the recorded sha256, else None."""
    try:
        record = json.loads(directory.with_name(directory.name + ".export.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    return _valid_export(directory, record.get("onnx_sha256"))


def _record_export(directory: Path, key: dict, manifest) -> None:
    from ssmprune.exporter.manifest import MODEL_FILE

    _write_json(directory.with_name(directory.name + ".export.json"),
                {"key": key, "onnx_sha256": manifest.files[MODEL_FILE]["sha256"]})


def _read_result(path: Path, key: dict) -> Optional[dict]:
    """A stored point result made with ``key`` whose export still verifies, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    needed = ("top1", "top5", "gflops", "export", "onnx_sha256")
    if any(k not in record for k in needed):
        return None
    if _valid_export(path.parent.parent.parent / record["export"], record["onnx_sha256"]) is None:
        return None
    return record


def calibration_verdict(directory: Path) -> Optional[dict[str, Any]]:
    """calibrate's verdict on a quantized export (its calibration.json): passed, the set
    it was judged on, top-1 agreement per output, and one line for a miss; None when the
    report is absent or unreadable."""
    from ssmprune.calibration.quantize import REPORT_FILE
    from ssmprune.calibration.report import miss_message

    try:
        report = json.loads((directory / REPORT_FILE).read_text())
        verdicts = report["verdict"]
        return {"passed": bool(report["passed"]), "judged_on": report["judged_on"],
                "top1_agreement": {k: v["top1"] for k, v in verdicts.items()},
                "summary": "" if report["passed"] else miss_message(report)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_json(path: Path, data: Any) -> None:
    from ssmprune.outputs import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class SweepInputs:
    """What every point shares, read and checked once before the first export."""

    labelled: Any  # measure.labelled.LabelledSet


def sweep_inputs(options: SweepOptions) -> SweepInputs:
    """The labelled set, checked against the model (classes, input shape), and every
    point's pruning, checked by building its model's summary: bad input is one line
    before minutes of exports, not after the first."""
    from ssmprune.exporter.stages import INPUT_NAME
    from ssmprune.measure.labelled import labelled_from_spec
    from ssmprune.models.registry import get_entry

    ids = [point_id(r) for r in options.keep_ratios]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--keep-ratios {','.join(map(str, options.keep_ratios))}: two "
                          "ratios share a point folder name (they differ past 6 digits)")
    for ratio in options.keep_ratios:
        model_facts(options, ratio)
    overrides = {} if options.img_size is None else {"img_size": options.img_size}
    cfg = get_entry(options.model).config(**overrides)
    labelled = labelled_from_spec(options.data, cfg.num_classes, INPUT_NAME,
                                  (cfg.in_chans, cfg.img_size, cfg.img_size), options.labels)
    return SweepInputs(labelled)


def model_facts(options: SweepOptions, ratio: float) -> dict[str, Any]:
    """GFLOPs and tokens per block of the point's model (no weights needed)."""
    from ssmprune.models import create_model
    from ssmprune.models.summary import describe

    overrides = {} if options.img_size is None else {"img_size": options.img_size}
    facts = describe(create_model(options.model, prune=options.prune(ratio), **overrides))
    return {"gflops": facts["gflops"], "tokens_per_block": facts["tokens_per_block"],
            "params": facts["params"]}


def run_point(options: SweepOptions, out: Path, ratio: float, precision: str,
              weights: Optional[str], inputs: "SweepInputs", steps: Steps,
              note: Note) -> dict[str, Any]:
    """One point: reuse a finished one, else export / calibrate / eval it (its latency is
    measured afterwards, with every other point's: ``time_points``)."""
    from ssmprune.calibration.data import data_from_spec, default_holdout
    from ssmprune.calibration.quantize import CalibrateOptions, calibrate
    from ssmprune.exporter import ExportOptions, export
    from ssmprune.exporter.manifest import MODEL_FILE
    from ssmprune.measure.accuracy import evaluate
    from ssmprune.measure.targets import file_target

    pid = point_id(ratio)
    folder = out / POINTS / pid
    key = point_key(options, ratio, precision, weights)
    result_path = folder / f"{precision}.json"
    done = _read_result(result_path, key)
    if done is not None:
        note(f"{pid} {precision}: finished earlier, kept ({result_path})")
        return done
    fp32_dir = folder / "fp32"
    fp32_key = export_key(options, ratio, "fp32", weights)
    fp32 = _reusable_export(fp32_dir, fp32_key)
    if fp32 is None:
        overrides = {} if options.img_size is None else {"img_size": options.img_size}
        with steps.step(f"{pid} export (fp32)"):
            fp32 = export(ExportOptions(options.model, options.checkpoint, options.seed,
                                        options.prune(ratio), overrides, 1,
                                        max(EVAL_BATCH, options.batch)),
                          fp32_dir).manifest
        _record_export(fp32_dir, fp32_key, fp32)
    else:
        note(f"{pid} fp32: export verified, reused")
    export_dir = fp32_dir
    if precision != "fp32":
        export_dir = folder / precision
        q_key = export_key(options, ratio, precision, weights, fp32.files[MODEL_FILE]["sha256"])
        quantized = _reusable_export(export_dir, q_key)
        if quantized is None:
            data = data_from_spec(options.calibration_data, fp32.config, fp32.input["name"],
                                  count=options.calibration_samples)
            # Judged, as `calibrate` judges it, on a held-out set: never on its own samples.
            held = data_from_spec(default_holdout(options.model), fp32.config,
                                  fp32.input["name"], seed=1, count=HOLDOUT_SAMPLES)
            with steps.step(f"{pid} calibrate ({precision}, {options.method})"):
                # A point that misses calibrate's verdict is still a point of the curve: it
                # is written (allow_miss) and its verdict recorded and shown.
                # ONNX Runtime's calibrators print their progress on stdout, which is the
                # CLI's table; keep it out.
                with contextlib.redirect_stdout(io.StringIO()):
                    quantized = calibrate(fp32_dir, data, CalibrateOptions(
                        method=options.method, precision=precision,
                        samples=options.calibration_samples, allow_miss=True),
                        export_dir, held).manifest
            _record_export(export_dir, q_key, quantized)
        else:
            note(f"{pid} {precision}: calibrated export verified, reused")
        verdict = calibration_verdict(export_dir)
        if verdict is not None and not verdict["passed"]:
            note(f"{pid} {precision}: {verdict['summary']}")
    else:
        verdict = None
    target = file_target(str(export_dir))
    target.name = str(export_dir.relative_to(out))
    labelled = inputs.labelled
    with steps.step(f"{pid} {precision} eval ({len(labelled)} inputs)"):
        accuracy = evaluate(target, labelled, batch=EVAL_BATCH, threads=options.threads)
    record = {"id": pid, "keep_ratio": ratio, "precision": precision,
              "prune": key["prune"], "export": str(export_dir.relative_to(out)),
              "onnx_sha256": target.deployed.manifest.files[MODEL_FILE]["sha256"],
              **model_facts(options, ratio),
              **{k: accuracy[k] for k in ("samples", "correct_top1", "correct_top5", "top1",
                                          "top5")},
              "eval_where": accuracy["where"], "calibration_verdict": verdict, "key": key}
    _write_json(result_path, record)
    return record


LATENCY_KEYS = ("batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_s",
                "peak_rss_mib", "where")


def time_points(options: SweepOptions, out: Path, points: list[dict[str, Any]], steps: Steps):
    """Every point's export timed in ONNX Runtime in one interleaved run (``measure.latency``:
    each round runs every point once), so their ratios hold on a busy machine; the
    latency keys are added to each point. Done on every run, resumed or not."""
    from ssmprune.measure.latency import BenchSettings, bench
    from ssmprune.measure.targets import file_target

    targets = []
    for p in points:
        target = file_target(str(out / p["export"]))
        target.name = p["export"]
        targets.append(target)
    with steps.step(f"bench ({len(points)} points interleaved, {options.iterations} rounds)"):
        timing = bench(targets, BenchSettings((options.batch,), ("onnxrt",), options.warmup,
                                              options.iterations, None, options.threads))
    rows = {r["target"]: r for r in timing.results}
    for p in points:
        p.update({k: rows[p["export"]][k] for k in LATENCY_KEYS})
    return timing


def sweep(options: SweepOptions, out_dir: str | Path, steps: Optional[Steps] = None,
          note: Note = lambda line: None) -> dict[str, Any]:
    """Run (or resume) every point, then write sweep.json, sweep.md and sweep.png."""
    from ssmprune.measure.plot import MISSING as PLOT_MISSING
    from ssmprune.measure.plot import available as plot_available
    from ssmprune.measure.plot import sweep_plot
    from ssmprune.outputs import atomic_file

    options = options.resolved()
    steps = steps or Steps()
    out = Path(out_dir)
    inputs = sweep_inputs(options)
    weights = _checkpoint_sha(options)
    points = []
    for ratio in options.keep_ratios:
        for precision in options.precisions:
            points.append(run_point(options, out, ratio, precision, weights, inputs, steps,
                                    note))
    timing = time_points(options, out, points, steps)
    for p in points:
        dense = next((d for d in points if d["keep_ratio"] == 1.0
                      and d["precision"] == p["precision"]), None)
        p["speedup_vs_dense"] = None if dense is None else round(dense["p50_ms"] / p["p50_ms"], 4)
    summary = {"format": FORMAT, "model": options.model, "machine": timing.machine,
               "settings": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in dataclasses.asdict(options).items()},
               "points": [{k: v for k, v in p.items() if k not in ("key",)} for p in points]}
    _write_json(out / SWEEP_JSON, summary)
    with atomic_file(out / SWEEP_MD) as tmp:
        tmp.write_text("\n".join(markdown_table(options, points)) + "\n")
    title = (f"ssmprune sweep {options.model}: pruning after blocks "
             f"{','.join(map(str, options.prune_after or ()))} ({options.importance}, "
             f"{options.alignment}), {options.data}, ONNX Runtime batch {options.batch}")
    if plot_available():
        with atomic_file(out / SWEEP_PNG) as tmp:
            sweep_plot(points, title, tmp)
    else:
        note(f"{SWEEP_PNG} not drawn: {PLOT_MISSING}")
    return summary


def _verdict_cell(verdict: Optional[dict]) -> str:
    """pass / MISS with the top-1 agreement calibrate judged, or "" for fp32."""
    if not verdict:
        return ""
    agree = ", ".join(f"{100 * v:.1f} %" for v in verdict["top1_agreement"].values())
    return f"{'pass' if verdict['passed'] else 'MISS'} ({agree} on {verdict['judged_on']})"


def markdown_table(options: SweepOptions, points: list[dict[str, Any]]) -> list[str]:
    """sweep.md: one row per point, the settings above it."""
    lines = [f"# ssmprune sweep: {options.model}", "",
             f"Pruning after blocks {','.join(map(str, options.prune_after or ()))}, importance "
             f"{options.importance}, alignment {options.alignment}; accuracy on {options.data}; "
             f"latency in ONNX Runtime at batch {options.batch}, {options.iterations} rounds "
             f"after {options.warmup} warm-up runs"
             + (f" (int8 / fp8: {options.method}, {options.calibration_samples} samples of "
                f"{options.calibration_data})" if set(options.precisions) - {"fp32"} else "")
             + ".", "",
             "| keep ratio | precision | tokens per block | GFLOPs | top-1 % | top-5 % | "
             "p50 ms | p90 ms | images/s | speedup vs dense | calibration verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    from ssmprune.models.summary import compress_runs

    for p in points:
        dense = " (dense)" if p["keep_ratio"] == 1.0 else ""
        speed = "" if p.get("speedup_vs_dense") is None else f"{p['speedup_vs_dense']:.2f}x"
        lines.append(f"| {p['keep_ratio']:g}{dense} | {p['precision']} | "
                     f"{compress_runs(p['tokens_per_block'])} | {p['gflops']:.4f} | "
                     f"{100 * p['top1']:.2f} | {100 * p['top5']:.2f} | {p['p50_ms']:.2f} | "
                     f"{p['p90_ms']:.2f} | {p['images_per_s']:.1f} | {speed} | "
                     f"{_verdict_cell(p.get('calibration_verdict'))} |")
    return lines
