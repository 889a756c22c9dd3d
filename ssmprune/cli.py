"""The ``ssmprune`` command line: thin click commands over the library.

Heavy imports (torch and everything that pulls it in) happen inside the
commands so ``--help`` is instant. A user error (``SsmpruneError``) is printed
as one line with exit status 2; every run ends with a one-line summary on
stderr: ``PASSED | Runtime: 1.2s | Command: ...``.
"""

from __future__ import annotations

import json
import shlex
import time

import click

from ssmprune import limits
from ssmprune.errors import ConfigError, SsmpruneError

USER_ERROR_EXIT = 2


class SummaryGroup(click.Group):
    """Runs a command, turns user errors into one line, ends with a summary."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["ssmprune.argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        start = time.perf_counter()
        argv = ctx.meta.get("ssmprune.argv", [])
        command = " ".join(["ssmprune", *(shlex.quote(a) for a in argv)])
        status = "FAILED"
        try:
            result = super().invoke(ctx)
            status = "PASSED"
            return result
        except click.exceptions.Exit as done:
            # --help and --version end through Exit(0): nothing ran, no summary.
            status = "PASSED" if done.exit_code else None
            raise
        except SsmpruneError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(USER_ERROR_EXIT)
        finally:
            if ctx.invoked_subcommand is not None and status is not None:
                click.echo(f"{status} | Runtime: {time.perf_counter() - start:.1f}s | "
                           f"Command: {command}", err=True)


@click.group(cls=SummaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ssmprune")
def main() -> None:
    """Deploy token-pruned vision state space models (Vim, PlainMamba)."""


def _overrides(img_size):
    return {} if img_size is None else {"img_size": img_size}


def img_size_option(fn):
    """--img-size, bounded while parsing (ssmprune.limits.IMG_SIZE)."""
    return click.option("--img-size", type=int, default=None, callback=limits.IMG_SIZE.callback,
                        help="Input resolution (default: the model's).")(fn)


def seed_option(fn):
    """--seed of the random weights, bounded while parsing (ssmprune.limits.SEED)."""
    return click.option("--seed", type=int, default=0, show_default=True,
                        callback=limits.SEED.callback, help="Seed of the random weights.")(fn)


def prune_options(fn):
    """--prune PRESET, or --keep-ratio R --prune-after B,B [--importance] [--alignment]."""
    options = [
        click.option("--prune", "preset", default=None,
                      help="Pruning preset, e.g. vim_s_paper (see `ssmprune info --presets`)."),
        click.option("--keep-ratio", default=None,
                      help="Keep ratio per pruning point: one value or one per point, e.g. 0.7."),
        click.option("--prune-after", default=None,
                      help="1-based blocks after which to prune, e.g. 6,12,18."),
        click.option("--importance", type=click.Choice(["clip", "l1", "l2"]), default=None,
                     help="Token importance (default clip, the paper's)."),
        click.option("--alignment", type=click.Choice(["gap", "none"]), default=None,
                     help="Hidden-state alignment (default gap)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _prune_config(preset, keep_ratio, prune_after, importance, alignment):
    """The PruneConfig or preset name the options ask for, or None for dense."""
    from ssmprune.pruning import PruneConfig

    custom = keep_ratio is not None or prune_after is not None
    if preset and custom:
        raise ConfigError("give either --prune PRESET or --keep-ratio/--prune-after, not both")
    if preset:
        if importance or alignment:
            from ssmprune.pruning.config import PRESETS

            base = PRESETS[preset][1] if preset in PRESETS else None
            if base is not None:
                return preset, PruneConfig(base.keep_ratio, base.prune_after,
                                           importance or base.importance,
                                           alignment or base.alignment)
        return preset, None
    if not custom:
        if importance or alignment:
            raise ConfigError("--importance/--alignment need --prune or --keep-ratio/--prune-after")
        return None, None
    if keep_ratio is None or prune_after is None:
        raise ConfigError("--keep-ratio and --prune-after go together")
    try:
        ratios = tuple(float(r) for r in limits.check_list("--keep-ratio", keep_ratio.split(",")))
        blocks = tuple(int(b) for b in limits.check_list("--prune-after", prune_after.split(",")))
    except ValueError:
        raise ConfigError(f"bad --keep-ratio {keep_ratio!r} or --prune-after {prune_after!r}: "
                          "use comma-separated numbers") from None
    return None, PruneConfig(ratios[0] if len(ratios) == 1 else ratios, blocks,
                             importance or "clip", alignment or "gap")


def _prune_arg(preset, keep_ratio, prune_after, importance, alignment):
    name, config = _prune_config(preset, keep_ratio, prune_after, importance, alignment)
    return config if config is not None else name


@main.command()
@click.argument("model", required=False, callback=limits.not_empty)
@img_size_option
@prune_options
@click.option("--presets", "list_presets", is_flag=True, help="List the pruning presets.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (a list without MODEL).")
def info(model, img_size, preset, keep_ratio, prune_after, importance, alignment,
         list_presets, as_json):
    """Parameters, FLOPs, tokens per block and input shape of MODEL (all models if omitted).

    FLOPs follow each paper's convention (multiply-accumulates count as one;
    Vim counts one scan direction, PlainMamba all four). With a pruning
    option the tokens and FLOPs are those of the pruned model.
    """
    from ssmprune.models import create_model, model_names
    from ssmprune.models.summary import compress_runs, describe

    if list_presets:
        from ssmprune.pruning import PRESETS

        for name, (target, cfg) in PRESETS.items():
            click.echo(f"{name:<22} {target:<15} keep {cfg.keep_ratio} after blocks "
                       f"{','.join(map(str, cfg.prune_after))}")
        return
    prune = _prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    if prune is not None and not model:
        raise ConfigError("pruning options need a MODEL")
    names = [model] if model is not None else model_names()
    infos = [describe(create_model(n, prune=prune, **_overrides(img_size))) for n in names]
    if as_json:
        click.echo(json.dumps(infos[0] if model else infos, indent=2))
        return
    if not model:
        click.echo(f"{'model':<16} {'params':>12} {'GFLOPs':>8} {'tokens':>7}  input")
        for i in infos:
            click.echo(f"{i['model']:<16} {i['params']:>12,} {i['gflops']:>8.3f} "
                       f"{i['tokens_per_block'][0]:>7}  {'x'.join(map(str, i['input_shape']))}")
        return
    i = infos[0]
    click.echo(f"model             {i['model']} ({i['family']})")
    click.echo(f"parameters        {i['params']:,}")
    click.echo(f"FLOPs             {i['gflops']:.3f} G (paper convention, MACs count as one)")
    click.echo(f"input shape       {' x '.join(map(str, i['input_shape']))}")
    click.echo(f"tokens per block  {compress_runs(i['tokens_per_block'])}")
    if i["prune"]:
        p = i["prune"]
        click.echo(f"pruning           keep {p['keep_ratio']} after blocks "
                   f"{','.join(map(str, p['prune_after']))}, importance {p['importance']}, "
                   f"alignment {p['alignment']}")


# run's options that build a model by name; an exported file has them fixed.
MODEL_ONLY_OPTIONS = ("checkpoint", "seed", "img_size", "preset", "keep_ratio", "prune_after",
                      "importance", "alignment")


@main.command()
@click.argument("model", callback=limits.not_empty)
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Official checkpoint (.pth/.safetensors); default: seeded random weights.")
@seed_option
@img_size_option
@click.option("--no-resize", is_flag=True, help="Require images already at the model's size.")
@click.option("--repeats", type=int, default=3, show_default=True,
              callback=limits.REPEATS.callback, help="Timed runs after warm-up.")
@prune_options
@click.pass_context
def run(ctx, model, images, checkpoint, seed, img_size, no_resize, repeats, preset, keep_ratio,
        prune_after, importance, alignment):
    """Classify IMAGES with MODEL; print top-5 per image and latency.

    MODEL is a model name (the PyTorch reference), an export folder or its
    .onnx (ONNX Runtime, CUDA when available; a calibrated int8 export too),
    or an engine from `ssmprune build` (TensorRT, needs an NVIDIA GPU). A
    model name wins over a folder of that name: write ./NAME for the folder.
    An exported file runs at its static batch: the last batch is padded with
    its last image and only the given images are reported; the weights,
    size and pruning options are refused for it. Without IMAGES it uses a
    real photo shipped with scikit-image.
    """
    from ssmprune.predict import names_a_file

    limits.check_image_count(len(images))
    if names_a_file(model):
        from click.core import ParameterSource

        given = [p.opts[0] for p in ctx.command.params if p.name in MODEL_ONLY_OPTIONS
                 and ctx.get_parameter_source(p.name) != ParameterSource.DEFAULT]
        if given:
            raise ConfigError(f"{', '.join(given)} build a model by name; {model} is an exported "
                              "file whose weights, size and pruning are fixed: drop them, or "
                              "export again with them")
        _run_file(model, images, no_resize, repeats)
        return

    import torch

    from ssmprune.images import batch_from_files, preprocess, sample_photo
    from ssmprune.predict import build_model, timed_forward

    prune = _prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    net, weights = build_model(model, checkpoint, seed, prune=prune, **_overrides(img_size))
    cfg = net.config
    click.echo(f"{model}: {weights}")
    if images:
        x, names = batch_from_files(images, cfg.img_size, cfg.mean, cfg.std, cfg.in_chans,
                                    resize=not no_resize), list(images)
    else:
        x = preprocess(sample_photo(), cfg.img_size, cfg.mean, cfg.std)[None]
        names = [SAMPLE_PHOTO_NAME]
    logits, times = timed_forward(net, x, max(1, repeats))
    click.echo(f"input {tuple(x.shape)} -> output {tuple(logits.shape)} {logits.dtype}")
    _echo_predictions(names, logits, times, x.shape[0],
                      f"{torch.get_num_threads()} threads, CPU")


SAMPLE_PHOTO_NAME = "scikit-image sample photo 'chelsea'"


def _echo_predictions(names, logits, times, batch: int, where: str) -> None:
    """Top-5 classes per image and the median latency: the same lines for every runtime."""
    from ssmprune.predict import top_k

    for name, preds in zip(names, top_k(logits)):
        best = ", ".join(f"{c}: {p:.4f}" for c, p in preds)
        click.echo(f"{name}: top-5 classes {best}")
    med = sorted(times)[len(times) // 2]
    click.echo(f"latency {med:.1f} ms per batch of {batch} (median of {len(times)}, {where})")


def _run_file(path, images, no_resize, repeats) -> None:
    """``run`` on an export folder, .onnx or engine file."""
    import torch

    from ssmprune.images import batch_from_files, preprocess, sample_photo
    from ssmprune.predict import load_deployed, timed_batches

    deployed = load_deployed(path)
    cfg = deployed.manifest.config
    click.echo(deployed.describe())
    if images:
        x, names = batch_from_files(images, cfg["img_size"], cfg["mean"], cfg["std"],
                                    cfg["in_chans"], resize=not no_resize), list(images)
    else:
        x = preprocess(sample_photo(), cfg["img_size"], cfg["mean"], cfg["std"])[None]
        names = [SAMPLE_PHOTO_NAME]
    b = deployed.batch
    logits, times = timed_batches(deployed.runtime.runner, deployed.input_name, x, b,
                                  max(1, repeats))
    where = deployed.where()
    click.echo(f"runtime {where}")
    click.echo(f"input {deployed.input_shape} -> output {(b, *logits.shape[1:])} {logits.dtype}")
    if len(x) != b:
        batches = -(-len(x) // b)
        padded = ", the last padded with its last image" if len(x) % b else ""
        click.echo(f"{len(x)} image(s) in {batches} batch(es) of {b} (the static batch)"
                   f"{padded}; reported: the given images only")
    _echo_predictions(names, torch.from_numpy(logits), times, b, where)


@main.command()
@click.argument("model", callback=limits.not_empty)
@click.argument("image", type=click.Path(), required=False)
@prune_options
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Official checkpoint (.pth/.safetensors); default: seeded random weights.")
@seed_option
@img_size_option
@click.option("-o", "--output", type=click.Path(), default="pruning.png", show_default=True,
              help="PNG to write.")
def visualize(model, image, preset, keep_ratio, prune_after, importance, alignment, checkpoint,
              seed, img_size, output):
    """Draw IMAGE with the pruned patches dimmed at each pruning stage, side by side.

    Without IMAGE it uses a real photo shipped with scikit-image.
    """
    from ssmprune.images import load_image, preprocess, resize_crop, sample_photo
    from ssmprune.predict import build_model
    from ssmprune.visualize import kept_masks, render, save_png, stage_labels

    prune = _prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    net, weights = build_model(model, checkpoint, seed, prune=prune, **_overrides(img_size))
    cfg = net.config
    img = load_image(image) if image else sample_photo()
    crop = resize_crop(img, cfg.img_size)
    x = preprocess(crop, cfg.img_size, cfg.mean, cfg.std, resize=False)[None]
    masks = kept_masks(net, x)
    path = save_png(render(crop, masks, stage_labels(net, masks)), output)
    click.echo(f"{model}: {weights}")
    click.echo(f"wrote {path}: input and {len(masks)} pruning stage(s)")


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@main.command("export")
@click.argument("model", callback=limits.not_empty)
@click.option("-o", "--output", "out_dir", type=click.Path(), required=True,
              help="Directory to write model.onnx and manifest.json into.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Official checkpoint (.pth/.safetensors); default: seeded random weights.")
@seed_option
@img_size_option
@prune_options
@click.option("--batch", type=int, default=1, show_default=True,
              callback=limits.BATCH.callback, help="Static batch size.")
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="Precision of the graph (fp16: fp16 weights and activations, fp32 input and logits).")
@click.option("--flavor", type=click.Choice(["plugins", "standard"]), default="plugins",
              show_default=True,
              help="plugins: ssmprune:: custom nodes with standard-op bodies; "
                   "standard: bodies inlined, no custom domain.")
@click.option("--opset", type=int, default=20, show_default=True, help="ONNX opset (18-23).")
def export_command(model, out_dir, checkpoint, seed, img_size, preset, keep_ratio, prune_after,
                   importance, alignment, batch, dtype, flavor, opset):
    """Export MODEL (dense or pruned) to ONNX: DIR/model.onnx and DIR/manifest.json.

    torch.export at a static input shape and batch, then ONNX through
    torch.onnx (dynamo) with the scan and the gather as ssmprune:: nodes that
    carry standard-op bodies, so ONNX Runtime runs the file as it is. Files
    are written atomically; on failure nothing is left behind.
    """
    from ssmprune.exporter import ExportOptions
    from ssmprune.exporter import export as export_model
    from ssmprune.exporter.progress import RichSteps

    prune = _prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    options = ExportOptions(model, checkpoint, seed, prune, _overrides(img_size), batch, dtype,
                            flavor, opset)
    result = export_model(options, out_dir, RichSteps())
    m = result.manifest
    growth = result.file_bytes / result.weight_bytes - 1 if result.weight_bytes else 0.0
    pruned = f"pruned ({m.prune_preset or 'custom'})" if m.prune else "dense"
    click.echo(f"wrote {result.directory / 'model.onnx'} ({_megabytes(result.file_bytes)}; {m.precision} "
               f"weights {_megabytes(result.weight_bytes)}, {growth:+.1%}) and manifest.json")
    click.echo(f"{m.model} {pruned}, input {'x'.join(map(str, m.input['shape']))}, "
               f"{m.precision}, flavor {m.flavor}, opset {m.opset}")
    custom = ", ".join(f"{k} {v}" for k, v in result.custom_nodes.items()) or "none"
    click.echo(f"custom nodes: {custom}")
    click.echo("nodes by op type: " + ", ".join(f"{k} {v}" for k, v in result.op_counts.items()))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.step_seconds.items())
    click.echo(f"export time {result.seconds:.1f}s ({steps})")


@main.command()
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
              help="Batch to run; must be the one DIRECTORY was exported for.")
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


def _register_command_modules() -> None:
    """Commands kept in their own modules join the group."""
    from ssmprune import commands_calibrate, commands_doctor, commands_engine

    commands_engine.register(main)
    commands_calibrate.register(main)
    commands_doctor.register(main)


_register_command_modules()


if __name__ == "__main__":
    main()
