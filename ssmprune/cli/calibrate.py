"""``ssmprune calibrate``: the click command; ``register(main)`` adds it to the CLI group."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

import click

from ssmprune import limits
from ssmprune.defaults import CALIBRATION_METHOD, HOLDOUT_SAMPLES


def _prepare_outputs(directory: str, data_spec: str, holdout, out_dir: str, report_path) -> None:
    """Check -o and --report before any work (``outputs.prepare_output``): neither may
    overwrite the export's files or the data (a folder or .npz given as --data / --holdout),
    and the report goes outside the -o folder (which gets its own report.json)."""
    from ssmprune.errors import OutputPathError
    from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE
    from ssmprune.outputs import prepare_output

    folder = Path(directory).parent if os.path.isfile(directory) else Path(directory)
    inputs = [folder / MODEL_FILE, folder / MANIFEST_FILE,
              *(p for p in (data_spec, holdout) if p and os.path.exists(p))]
    out = prepare_output(out_dir, "dir", inputs=inputs)
    if report_path is None:
        return
    report = prepare_output(report_path, "file", inputs=inputs, option="--report")
    if out.resolve() in report.resolve().parents:
        raise OutputPathError(f"--report {report_path} lies inside the -o folder {out_dir}, "
                              "which gets its own report.json: give a path outside it")


@click.command("calibrate")
@click.argument("directory", type=click.Path(), callback=limits.not_empty)
@click.option("--data", "data_spec", required=True,
              help="Calibration set: a folder of images (its subfolders too, as `parity "
                   "--images`), an .npz keyed by input name, "
                   "'digits[:held_out|:train]' or 'skimage' (photos + random crops).")
@click.option("-o", "--output", "out_dir", type=click.Path(), required=True,
              help="Directory to write the Q/DQ model.onnx and manifest.json into.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]),
              default=CALIBRATION_METHOD, show_default=True,
              help="Activation range calibration (int8 and fp8 alike: scale = amax / 127 or "
                   "amax / 448); the default is the best measured (README, \"Calibration\").")
@click.option("--precision", type=click.Choice(["int8", "fp8"]), default="int8",
              show_default=True,
              help="Q/DQ type: symmetric int8, or fp8 E4M3FN (TensorRT on sm_89 and newer).")
@click.option("--samples", type=int, default=128, show_default=True,
              callback=limits.SAMPLES.callback, help="Calibration inputs to use at most.")
@click.option("--holdout", default=None,
              help="Held-out set for the report (same forms as --data, or 'none'); default: "
                   "digits:held_out for the digits models, else scikit-image crops of another "
                   "seed.")
@click.option("--holdout-samples", type=int, default=HOLDOUT_SAMPLES, show_default=True,
              callback=limits.SAMPLES.callback,
              help="Held-out inputs to use at most (digits:held_out has 360): the verdict's "
                   "95% interval is reported; 64 samples that all agree still allow 94%.")
@click.option("--allow-miss", is_flag=True,
              help="Write the quantized model even when its verdict misses the tolerance "
                   "(otherwise: nothing written, exit 2).")
@click.option("--seed", type=int, default=0, show_default=True, callback=limits.SEED.callback,
              help="Seed of the random crops of 'skimage' (the held-out crops use seed + 1).")
@click.option("--no-resize", is_flag=True,
              help="Images must already be the model's size (no resize / crop).")
@click.option("--report", "report_path", type=click.Path(), default=None,
              help="Also write the report as JSON here.")
@click.option("--selection", type=click.Choice(["fp32", "int8", "fp8"]), default="fp32",
              show_default=True,
              help="Pruned models: keep the projections that decide which tokens are kept "
                   "(upstream of the last TokenGather) in fp32, or quantize them too (int8 "
                   "and fp8 both mean: at --precision).")
def calibrate_command(directory, data_spec, out_dir, method, precision, samples, holdout,
                      holdout_samples, allow_miss, seed, no_resize, report_path, selection):
    """Quantize the fp32 export in DIRECTORY to a Q/DQ ONNX (int8 or fp8) in OUT_DIR.

    ONNX Runtime's static quantizer (QDQ format) quantizes MatMul, Conv and
    Gemm (symmetric, per-channel weights); fp8 is that graph with E4M3FN
    scales (amax / 448) and weights. The scan, the gather and their bodies,
    the norms, softplus and exp stay fp32, and so do, for a pruned model, the
    projections its token selection depends on (--selection). The report
    compares the result with fp32 in ONNX Runtime: per-output error, top-1
    agreement, and accuracy where the set has labels.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn

    from ssmprune.calibration import CalibrateOptions, calibrate, data_from_spec
    from ssmprune.calibration.data import default_holdout
    from ssmprune.calibration.report import table
    from ssmprune.errors import ConfigError
    from ssmprune.exporter.manifest import read_export
    from ssmprune.outputs import atomic_file

    _prepare_outputs(directory, data_spec, holdout, out_dir, report_path)
    if selection not in ("fp32", precision):
        raise ConfigError(f"--selection {selection} with --precision {precision}: use "
                          f"--selection fp32 or {precision}")
    options = CalibrateOptions(method, precision, samples,
                               protect_selection=selection == "fp32", allow_miss=allow_miss)
    options.validate()
    _, manifest = read_export(directory)
    input_name = manifest.input["name"]
    c, size = manifest.config["in_chans"], manifest.config["img_size"]
    limits.check_input_bytes("inputs (--samples)", samples, c, size)
    limits.check_input_bytes("inputs (--holdout-samples)", holdout_samples, c, size)
    data = data_from_spec(data_spec, manifest.config, input_name, not no_resize, seed,
                          count=samples)
    holdout = holdout or default_holdout(manifest.model)
    held = None
    if holdout != "none":
        held = data_from_spec(holdout, manifest.config, input_name, not no_resize, seed + 1,
                              count=holdout_samples)
        held = _Limited(held, holdout_samples)

    with Progress(TextColumn("  {task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=_console(), transient=False) as bar:
        task = bar.add_task("calibrating", total=None, visible=False)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, visible=True)

        result = calibrate(directory, data, options, out_dir, held, _BarSteps(bar), progress)
    report = result.report
    if report_path is not None:
        with atomic_file(report_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    q = result.manifest.quantization
    click.echo(f"wrote {result.directory / 'model.onnx'} ({precision}, {q['method']}, "
               f"{q['samples']} samples from {q['data']['source']}) and manifest.json")
    if q["data"]["skipped"]:
        click.echo(f"skipped {q['data']['skipped']} unreadable file(s)")
    p = result.placement
    click.echo(f"Q/DQ: {p['QuantizeLinear']} QuantizeLinear, {p['DequantizeLinear']} "
               f"DequantizeLinear around {p['quantized_nodes']} MatMul/Conv/Gemm nodes; none in "
               "the scan or gather")
    for line in table(report):
        click.echo(line)
    click.echo(f"calibration time {result.seconds:.1f}s")
    if not report["passed"]:
        from ssmprune.calibration.report import miss_message

        click.echo(f"warning: {miss_message(report)}; written anyway (--allow-miss)", err=True)


class _Limited:
    """A source whose ``load`` is capped at ``limit`` samples."""

    def __init__(self, source, limit: int):
        self.source, self.limit = source, limit

    def load(self, limit=None):
        return self.source.load(self.limit if limit is None else min(limit, self.limit))


def _console():
    from rich.console import Console

    return Console(stderr=True)


class _BarSteps:
    """``Steps`` shown as lines above the progress bar (one live display only)."""

    def __init__(self, bar):
        self.bar = bar
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.perf_counter()
        ok = False
        try:
            yield
            ok = True
        finally:
            self.seconds[title] = time.perf_counter() - start
            mark = "done" if ok else "failed"
            self.bar.console.print(f"  {title:<40} {mark} {self.seconds[title]:6.1f}s",
                                   highlight=False)


def register(main: click.Group) -> None:
    """Add ``calibrate`` to the CLI group ``main``."""
    main.add_command(calibrate_command)
