"""``run``: classify images with a model by name, an export or an engine."""

from __future__ import annotations

import click

from ssmprune import limits
from ssmprune.cli.options import img_size_option, overrides, prune_arg, prune_options, seed_option
from ssmprune.errors import ConfigError


# run's options that build a model by name; an exported file has them fixed.
MODEL_ONLY_OPTIONS = ("checkpoint", "seed", "img_size", "preset", "keep_ratio", "prune_after",
                      "importance", "alignment")


@click.command()
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
    from ssmprune.models.construct import build_model
    from ssmprune.predict import timed_forward

    prune = prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    net, weights = build_model(model, checkpoint, seed, prune=prune, **overrides(img_size))
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
    b = deployed.batch_for(len(x))
    logits, times = timed_batches(deployed.runtime.runner, deployed.input_name, x, b,
                                  max(1, repeats))
    where = deployed.where()
    click.echo(f"runtime {where}")
    click.echo(f"input {(b, *deployed.input_shape[1:])} -> output {(b, *logits.shape[1:])} "
               f"{logits.dtype}")
    if len(x) != b:
        batches = -(-len(x) // b)
        padded = ", the last padded with its last image" if len(x) % b else ""
        kind = "the largest it takes" if deployed.dynamic else "the static batch"
        click.echo(f"{len(x)} image(s) in {batches} batch(es) of {b} ({kind})"
                   f"{padded}; reported: the given images only")
    _echo_predictions(names, torch.from_numpy(logits), times, b, where)


def register(main: click.Group) -> None:
    """Add ``run`` to the ``ssmprune`` group."""
    main.add_command(run)
