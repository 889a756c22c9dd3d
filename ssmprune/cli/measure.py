"""``bench``, ``eval`` and ``sweep``: latency and accuracy of targets (``ssmprune.measure``)."""

from __future__ import annotations

import json
import os

import click

from ssmprune import limits
from ssmprune.cli.options import img_size_option, overrides, prune_arg, prune_options, seed_option
from ssmprune.measure import bounds

DEFAULT_ITERATIONS = 10

BENCH_JSON_HELP = """JSON (--json), one object: `machine` {cpu, avx512, cores, torch,
torch_threads, onnxruntime, date}; `settings` {batches, runtimes, warmup,
iterations, seconds, threads}; `targets`, one per TARGET: {name, kind
(model|export|engine), model, prune, precision, weights, static_batch,
batch_range, runtimes, file_mib, gflops, img_size, num_classes}; `results`, one per
(target, runtime, batch): {target, runtime, batch, where, iterations,
p50_ms, p90_ms, p99_ms, mean_ms, images_per_s (batch * 1000 / mean_ms),
peak_rss_mib (the process's peak resident memory during one more run: every
target loaded counts; null for engines), ratio (p50 / p50 of `ratio_to`, the
first target measured in that runtime and batch), ratio_to, speedup (1 /
ratio)}; `skipped`: {target, runtime, batch, reason}, one per skip."""


def _model_options(checkpoint, seed, img_size, preset, keep_ratio, prune_after, importance,
                   alignment):
    from ssmprune.measure.targets import ModelOptions

    return ModelOptions(checkpoint, seed, prune_arg(preset, keep_ratio, prune_after, importance,
                                                    alignment), overrides(img_size))


def _set_threads(threads):
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _model_option_decorators(fn):
    fn = prune_options(fn)
    fn = img_size_option(fn)
    fn = seed_option(fn)
    return click.option("--checkpoint", type=click.Path(), default=None,
                        help="Checkpoint of the model-name targets; default: seeded random "
                             "weights (embedded weights for the digits models).")(fn)


@click.command("bench", epilog=BENCH_JSON_HELP)
@click.argument("targets", nargs=-1, required=True, callback=lambda c, p, v: [
    limits.not_empty(c, p, t) for t in v])
@click.option("--batch", "batch_text", default="1,8", show_default=True,
              help="Batches, comma-separated (an exported file runs its manifest's batches only).")
@click.option("--runtimes", "runtimes_text", default=None,
              help="torch,onnxrt,trt: runtimes to time (default: each target's own; an export "
                   "runs in onnxrt and, asked for, torch: its reference model).")
@click.option("--warmup", type=int, default=2, show_default=True,
              callback=bounds.WARMUP.callback, help="Untimed runs per target first.")
@click.option("--iterations", type=int, default=None, callback=bounds.ITERATIONS.callback,
              help="Timed rounds (each runs every target once, in turn)  [default: 10].")
@click.option("--seconds", type=float, default=None, callback=bounds.check_seconds,
              help="Instead of --iterations: timed rounds for this long per runtime and batch.")
@click.option("--threads", type=int, default=None, callback=bounds.THREADS.callback,
              help="Intra-op threads of torch and ONNX Runtime (default: theirs).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (keys below).")
@click.option("--plot", "plot_path", type=click.Path(), default=None,
              help="Also draw the p50 latencies as bars into this PNG.")
@_model_option_decorators
def bench_command(targets, batch_text, runtimes_text, warmup, iterations, seconds, threads,
                  as_json, plot_path, checkpoint, seed, img_size, preset, keep_ratio,
                  prune_after, importance, alignment):
    """Latency of TARGETs per runtime and batch: p50 / p90 / p99, images/s, peak memory.

    Several TARGETs are timed side by side in one run: each round runs every
    target once, in turn, so their ratios (to the first TARGET) hold on a busy
    machine; `ssmprune bench vim_s vim_s_paper` compares dense and pruned.
    An engine on a machine without a GPU is skipped with one line, and so is
    a batch other than an exported file's static batch.

    TARGET is a model name (the PyTorch reference on the CPU, pruned by the
    pruning options when given), a pruning preset (its model pruned by it,
    e.g. vim_s_paper), an export folder or its .onnx (ONNX Runtime), or an
    engine from `ssmprune build` (TensorRT, needs an NVIDIA GPU). A model
    name wins over a folder of that name: write ./NAME for the folder.
    """
    from ssmprune.errors import ConfigError
    from ssmprune.measure.targets import RUNTIMES

    if iterations is not None and seconds is not None:
        raise ConfigError("give --iterations or --seconds, not both")
    batches = bounds.int_list("--batch", batch_text, limits.BATCH)
    runtimes = None if runtimes_text is None else bounds.name_list("--runtimes", runtimes_text,
                                                                    RUNTIMES)
    if plot_path is not None:
        from ssmprune.measure.plot import MISSING, available
        from ssmprune.outputs import prepare_output

        if not available():
            raise ConfigError(f"--plot: {MISSING}")
        prepare_output(plot_path, "file", inputs=_read_paths(targets, checkpoint),
                       option="--plot")
    _set_threads(threads)

    from ssmprune.measure.latency import BenchSettings, bench, resolve_bench_targets

    if seconds is None and iterations is None:
        iterations = DEFAULT_ITERATIONS
    settings = BenchSettings(batches, runtimes, warmup, iterations, seconds, threads)
    options = _model_options(checkpoint, seed, img_size, preset, keep_ratio, prune_after,
                             importance, alignment)
    resolved, skipped = resolve_bench_targets(list(targets), options)
    # Progress as plain lines: a live display's refresh thread competes with the timed
    # runs for the GIL (vim_digits at batch 1: 8 ms alone, 880 ms under a rich spinner).
    result = bench(resolved, settings, skipped, _group_progress)
    for skip in result.skipped:
        click.echo(f"skipped: {skip['reason']}", err=True)
    if not result.results:
        from ssmprune.errors import ConfigError

        raise ConfigError(f"nothing to time: {len(result.skipped)} target/batch case(s) "
                          "skipped (above), none ran")
    data = result.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _bench_table(data)
    if plot_path is not None:
        from ssmprune.measure.plot import bench_plot
        from ssmprune.outputs import atomic_file

        with atomic_file(plot_path) as tmp:
            bench_plot(data, tmp)
        click.echo(f"wrote {plot_path}", err=True)


def _read_paths(targets, checkpoint) -> list[str]:
    """Every file or folder bench reads: an export folder (or the folder of its .onnx, which
    holds its manifest), an engine and its manifest, the checkpoint; model names are none."""
    from ssmprune.engine.manifest import manifest_path

    paths = [checkpoint] if checkpoint else []
    for t in targets:
        if not os.path.lexists(t):
            continue
        if os.path.isdir(t):
            paths.append(t)
        elif t.endswith(".onnx"):
            paths.append(os.path.dirname(os.path.abspath(t)))
        else:
            paths += [t, str(manifest_path(t))]
    return paths


def _group_progress(line: str) -> None:
    click.echo(line, err=True)


class _LineSteps:
    """``exporter.progress.Steps`` shown as one stderr line per step when it starts and
    one when it ends: no live display, whose refresh thread would slow the timed runs."""

    def __init__(self):
        from ssmprune.exporter.progress import Steps

        self._steps = Steps()
        self.seconds = self._steps.seconds
        self.console = _console()

    def step(self, title: str):
        import contextlib
        import time

        @contextlib.contextmanager
        def shown():
            self.console.print(f"  {title} ...", highlight=False, soft_wrap=True)
            start, ok = time.perf_counter(), False
            try:
                with self._steps.step(title):
                    yield
                ok = True
            finally:
                mark = "[green]done[/green]" if ok else "[red]failed[/red]"
                self.console.print(f"  {title:<36} {mark} {time.perf_counter() - start:6.1f}s",
                                   highlight=False, soft_wrap=True)
        return shown()


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr)


def _bench_table(data) -> None:
    from rich.console import Console
    from rich.table import Table

    m = data["machine"]
    table = Table(title=f"{m['cpu']} ({m['cores']} cores, AVX-512 "
                        f"{'yes' if m['avx512'] else 'no'}), {m['date']}")
    for col in ("target", "runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s",
                "peak RSS MiB", "ratio"):
        # Targets are paths that often share a long prefix: fold them rather than cut them.
        table.add_column(col, justify="left" if col in ("target", "runtime") else "right",
                         overflow="fold" if col == "target" else "ellipsis")
    for r in data["results"]:
        mem = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.1f}"
        ratio = "1 (base)" if r["target"] == r["ratio_to"] else f"{r['ratio']:.3f}"
        table.add_row(r["target"], r["runtime"], str(r["batch"]), f"{r['p50_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['images_per_s']:.1f}",
                      mem, ratio)
    Console(width=max(100, Console().width)).print(table)
    if data["results"]:
        where = dict.fromkeys(r["where"] for r in data["results"])
        click.echo("ran on: " + "; ".join(where))


@click.command("eval")
@click.argument("target", callback=limits.not_empty)
@click.option("--data", "data_spec", required=True,
              help="Labelled set: an ImageFolder (PATH/CLASS/IMAGE), digits:held_out, "
                   "digits:train, or an .npz (the input's name and `labels`).")
@click.option("--labels", "labels_file", type=click.Path(), default=None,
              help="Class names in class-index order, one per line (an ImageFolder's folders "
                   "are named by them; default: sorted folder names).")
@click.option("--reference", default=None,
              help="Another TARGET: also report its accuracy and the top-1 agreement.")
@click.option("--batch", type=int, default=64, show_default=True,
              callback=bounds.EVAL_BATCH.callback,
              help="Inputs per forward: a model by name takes it as is, a dynamic-batch file "
                   "clamped to its range, a static file runs at its own batch.")
@click.option("--threads", type=int, default=None, callback=bounds.THREADS.callback,
              help="Intra-op threads of torch and ONNX Runtime (default: theirs).")
@click.option("--no-resize", is_flag=True,
              help="ImageFolder images must already be the model's size.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: target, runtime, where, data {source, samples, "
                   "classes, notes}, samples, correct_top1, correct_top5, top1, top5 (in "
                   "[0, 1]); with --reference also reference {...} and agreement, agreeing.")
@_model_option_decorators
def eval_command(target, data_spec, labels_file, reference, batch, threads, no_resize, as_json,
                 checkpoint, seed, img_size, preset, keep_ratio, prune_after, importance,
                 alignment):
    """Top-1 / top-5 accuracy of TARGET on a labelled set (--data).

    TARGET (and --reference) as for `bench`: a model name or pruning preset
    (PyTorch, CPU), an export folder or .onnx (ONNX Runtime), an engine
    (TensorRT, needs a GPU). ImageFolder: one folder per class; class index =
    the folder's place in the sorted folder names, or in --labels, whose
    length must be the model's number of classes. The model options
    (--checkpoint, --seed, --img-size, pruning) apply to model-name targets.
    """
    _set_threads(threads)
    from ssmprune.measure.accuracy import evaluate
    from ssmprune.measure.labelled import labelled_from_spec
    from ssmprune.measure.targets import resolve_targets

    options = _model_options(checkpoint, seed, img_size, preset, keep_ratio, prune_after,
                             importance, alignment)
    specs = [target] + ([reference] if reference else [])
    resolved = resolve_targets(specs, options)
    main = resolved[0]
    data = labelled_from_spec(data_spec, main.num_classes, main.input_name, main.sample_shape,
                              labels_file, not no_resize)
    click.echo(f"eval on {len(data)} inputs of {data.source} ...", err=True)
    record = evaluate(main, data, resolved[1] if reference else None, batch, threads)
    for note in data.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    t = record["target"]
    click.echo(f"{t['name']}: {t['model']} {t['prune'] or 'dense'}, {t['precision']}, "
               f"{record['where']}")
    click.echo(f"data: {record['data']['source']}, {record['samples']} inputs")
    click.echo(f"top-1 {100 * record['top1']:.2f} % ({record['correct_top1']}/"
               f"{record['samples']}), top-5 {100 * record['top5']:.2f} % "
               f"({record['correct_top5']}/{record['samples']})")
    if reference:
        r = record["reference"]
        click.echo(f"reference {r['target']['name']}: top-1 {100 * r['top1']:.2f} %, top-5 "
                   f"{100 * r['top5']:.2f} %; top-1 agreement {100 * record['agreement']:.2f} % "
                   f"({record['agreeing']}/{record['samples']})")


@click.command("sweep")
@click.argument("model", callback=limits.not_empty)
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Checkpoint (default: seeded random weights; embedded for the digits models).")
@seed_option
@img_size_option
@click.option("--keep-ratios", "ratios_text", required=True,
              help="Keep ratios, comma-separated; 1.0 is the dense model, e.g. 1.0,0.9,0.8,0.7.")
@click.option("--prune-after", "prune_after_text", default=None,
              help="Blocks after which to prune (default: the model's pruning preset's).")
@click.option("--importance", type=click.Choice(["clip", "l1", "l2"]), default=None,
              help="Token importance (default: the preset's, else clip).")
@click.option("--alignment", type=click.Choice(["gap", "none"]), default=None,
              help="Hidden-state alignment (default: the preset's, else gap).")
@click.option("--precisions", "precisions_text", default="fp32", show_default=True,
              help="fp32,int8,fp8: precisions per keep ratio (int8 / fp8 calibrated).")
@click.option("--data", "data_spec", required=True,
              help="Labelled evaluation set, as for `eval` (e.g. digits:held_out).")
@click.option("--labels", "labels_file", type=click.Path(), default=None,
              help="Class names in order, as for `eval`.")
@click.option("--calibration-data", default=None,
              help="Calibration set of int8 / fp8, as `calibrate --data` (default: digits:train "
                   "for the digits models, else skimage).")
@click.option("--calibration-samples", type=int, default=128, show_default=True,
              callback=limits.SAMPLES.callback, help="Calibration inputs at most.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="Calibration method (default: calibrate's).")
@click.option("--batch", type=int, default=1, show_default=True, callback=limits.BATCH.callback,
              help="Batch the points are timed at (their exports take a dynamic batch of 1 to "
                   "max(64, BATCH); eval runs them in batches of 64).")
@click.option("--warmup", type=int, default=2, show_default=True,
              callback=bounds.WARMUP.callback, help="Untimed runs per point before timing.")
@click.option("--iterations", type=int, default=10, show_default=True,
              callback=bounds.ITERATIONS.callback,
              help="Timed rounds; each runs every point once (all points interleaved).")
@click.option("--threads", type=int, default=None, callback=bounds.THREADS.callback,
              help="Intra-op threads of ONNX Runtime (default: its own).")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(),
              help="Folder of the sweep (exports, results, sweep.json / .md / .png); an "
                   "existing sweep there is resumed.")
def sweep_command(model, checkpoint, seed, img_size, ratios_text, prune_after_text, importance,
                  alignment, precisions_text, data_spec, labels_file, calibration_data,
                  calibration_samples, method, batch, warmup, iterations, threads, out_dir):
    """Export, calibrate, eval and bench MODEL at each keep ratio and precision.

    Writes OUT/sweep.json (every point: keep_ratio, precision, prune, export,
    gflops, tokens_per_block, top1, top5, correct_top1, correct_top5, p50_ms,
    p90_ms, p99_ms, images_per_s, peak_rss_mib, speedup_vs_dense,
    calibration_verdict), OUT/sweep.md (the table) and OUT/sweep.png (accuracy vs
    latency and vs GFLOPs, one curve per precision, the dense point starred). A
    finished point (its export and result present and valid) is not redone; the
    latency of every point is measured afresh in one interleaved run.
    """
    from ssmprune.outputs import prepare_output

    ratios = bounds.ratio_list("--keep-ratios", ratios_text)
    precisions = bounds.name_list("--precisions", precisions_text, ("fp32", "int8", "fp8"))
    prune_after = None if prune_after_text is None else bounds.int_list(
        "--prune-after", prune_after_text, limits.Bound(1, bounds.MAX_LIST, "a block number"))
    # Only what names a file or folder: digits:held_out or skimage are no paths.
    inputs = [p for p in (checkpoint, labels_file, data_spec, calibration_data)
              if p and os.path.lexists(p)]
    out = prepare_output(out_dir, "dir", inputs=inputs)
    from ssmprune.measure.sweep import SWEEP_JSON, SWEEP_MD, SWEEP_PNG

    for name in (SWEEP_JSON, SWEEP_MD, SWEEP_PNG):  # written last: checked first
        prepare_output(out / name, "file", inputs=inputs)
    _set_threads(threads)

    from ssmprune.measure.sweep import SweepOptions, sweep

    options = SweepOptions(model, ratios, data_spec, precisions, prune_after, importance,
                           alignment, checkpoint, seed, img_size, labels_file, calibration_data,
                           calibration_samples, method, batch, warmup, iterations, threads)
    steps = _LineSteps()
    summary = sweep(options, out, steps, note=lambda line: steps.console.print(
        f"  {line}", highlight=False, soft_wrap=True))
    for line in (out / SWEEP_MD).read_text().splitlines()[4:]:
        click.echo(line)
    click.echo(f"wrote {out / SWEEP_JSON}, {out / SWEEP_MD}, {out / SWEEP_PNG} "
               f"({len(summary['points'])} points)")


def register(main: click.Group) -> None:
    """Add ``bench``, ``eval`` and ``sweep`` to the CLI group ``main``."""
    for command in (bench_command, eval_command, sweep_command):
        main.add_command(command)
