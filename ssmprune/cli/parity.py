"""``parity``: PyTorch, ONNX Runtime and TensorRT compared on one export."""

from __future__ import annotations

import json

import click

from ssmprune import limits


@click.command()
@click.argument("directory", type=click.Path(), callback=limits.not_empty)
@click.option("--images", multiple=True, type=click.Path(),
              help="Image file or directory (its subfolders too, as `calibrate --data`), "
                   "repeatable; default: scikit-image's sample photos.")
@click.option("--runtimes", default="torch,onnxrt", show_default=True,
              help="Comma-separated runtimes (torch, onnxrt, trt); the first is the reference.")
@click.option("--engine", type=click.Path(), default=None,
              help="TensorRT engine built from DIRECTORY by `ssmprune build`, for the trt runtime.")
@click.option("--samples", type=int, default=16, show_default=True,
              callback=limits.SAMPLES.callback,
              help="Inputs to compare: photos and seeded random images.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="The export's checkpoint (same sha256 required): needed for an export made "
                   "with --checkpoint outside its folder, whose recorded path is never opened.")
@click.option("--batch", type=int, default=None, callback=limits.BATCH.callback,
              help="Batch to run: the static batch DIRECTORY was exported for, or any batch of "
                   "a dynamic-batch export (default: its manifest's, 1).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def parity(directory, images, runtimes, engine, samples, checkpoint, batch, as_json):
    """Compare PyTorch, ONNX Runtime and TensorRT on the export in DIRECTORY (Polygraphy).

    Reports per output the max/mean absolute and max relative error and
    top-1 agreement against the first runtime, and what ran each runtime
    (ONNX Runtime's execution provider, TensorRT and GPU); fails (exit 2)
    when a tolerance of the precision's table is exceeded. The trt runtime
    runs --engine (needs an NVIDIA GPU) and is judged by the engine's precision.
    """
    from ssmprune.images import expand_image_paths
    from ssmprune.parity.compare import run_parity
    from ssmprune.parity.tolerances import ToleranceError

    names = tuple(r.strip() for r in runtimes.split(",") if r.strip())
    # Folders walked here, by the rule `calibrate --data` follows (ssmprune.images.image_files).
    files = expand_image_paths(images)
    report = run_parity(directory, files, names, samples, checkpoint, batch, engine=engine)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"{report.inputs.get('real', 0)} real and {report.inputs.get('random', 0)} "
                   f"random inputs, batch {report.batch}, {report.precision}")
        click.echo("runtimes: " + ", ".join(f"{r} ({p})" for r, p in report.providers.items()))
        click.echo(f"{'runtime':<10} {'output':<10} {'max_abs':>10} {'mean_abs':>10} "
                   f"{'max_rel':>10} {'top1':>7}  tolerance")
        for c in report.comparisons:
            click.echo(f"{c.runtime:<10} {c.output:<10} {c.max_abs:>10.3g} {c.mean_abs:>10.3g} "
                       f"{c.max_rel:>10.3g} {c.top1_agreement:>7.1%}  {c.precision}: "
                       f"{c.tolerance} [{'ok' if c.passed else 'EXCEEDED'}] vs {c.reference}")
    if not report.passed:
        failed = [c for c in report.comparisons if not c.passed]
        raise ToleranceError("; ".join(
            f"{c.runtime} {c.output}: max_rel {c.max_rel:.3g}, top-1 {c.top1_agreement:.1%} "
            f"(needs {c.tolerance})" for c in failed))


def register(main: click.Group) -> None:
    """Add ``parity`` to the ``ssmprune`` group."""
    main.add_command(parity)
