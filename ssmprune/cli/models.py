"""``info`` and ``visualize``: what a model is and which tokens its pruning keeps."""

from __future__ import annotations

import json

import click

from ssmprune import limits
from ssmprune.cli.options import img_size_option, overrides, prune_arg, prune_options, seed_option
from ssmprune.errors import ConfigError


@click.command()
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
    prune = prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    if prune is not None and not model:
        raise ConfigError("pruning options need a MODEL")
    names = [model] if model is not None else model_names()
    infos = [describe(create_model(n, prune=prune, **overrides(img_size))) for n in names]
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


@click.command()
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
    from ssmprune.models.construct import build_model
    from ssmprune.outputs import prepare_output
    from ssmprune.visualize import kept_masks, render, save_png, stage_labels

    prepare_output(output, "file", inputs=[p for p in (image, checkpoint) if p])
    prune = prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    net, weights = build_model(model, checkpoint, seed, prune=prune, **overrides(img_size))
    cfg = net.config
    img = load_image(image) if image else sample_photo()
    crop = resize_crop(img, cfg.img_size)
    x = preprocess(crop, cfg.img_size, cfg.mean, cfg.std, resize=False)[None]
    masks = kept_masks(net, x)
    path = save_png(render(crop, masks, stage_labels(net, masks)), output)
    click.echo(f"{model}: {weights}")
    click.echo(f"wrote {path}: input and {len(masks)} pruning stage(s)")


def register(main: click.Group) -> None:
    """Add ``info`` and ``visualize`` to the ``ssmprune`` group."""
    main.add_command(info)
    main.add_command(visualize)
