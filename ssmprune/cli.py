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

from ssmprune.errors import SsmpruneError

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
        except SsmpruneError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(USER_ERROR_EXIT)
        finally:
            if ctx.invoked_subcommand is not None:
                click.echo(f"{status} | Runtime: {time.perf_counter() - start:.1f}s | "
                           f"Command: {command}", err=True)


@click.group(cls=SummaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ssmprune")
def main() -> None:
    """Deploy token-pruned vision state space models (Vim, PlainMamba)."""


def _overrides(img_size):
    return {} if img_size is None else {"img_size": img_size}


@main.command()
@click.argument("model", required=False)
@click.option("--img-size", type=int, default=None, help="Input resolution (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (a list without MODEL).")
def info(model, img_size, as_json):
    """Parameters, FLOPs, tokens per block and input shape of MODEL (all models if omitted).

    FLOPs follow each paper's convention (multiply-accumulates count as one;
    Vim counts one scan direction, PlainMamba all four).
    """
    from ssmprune.models import create_model, model_names
    from ssmprune.models.summary import compress_runs, describe

    names = [model] if model else model_names()
    infos = [describe(create_model(n, **_overrides(img_size))) for n in names]
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


@main.command()
@click.argument("model")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Official checkpoint (.pth/.safetensors); default: seeded random weights.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--img-size", type=int, default=None, help="Input resolution (default: the model's).")
@click.option("--no-resize", is_flag=True, help="Require images already at the model's size.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs after warm-up.")
def run(model, images, checkpoint, seed, img_size, no_resize, repeats):
    """Classify IMAGES with the PyTorch reference MODEL; print top-5 and latency.

    Without IMAGES it uses a real photo shipped with scikit-image.
    """
    import torch

    from ssmprune.images import batch_from_files, preprocess, sample_photo
    from ssmprune.predict import build_model, timed_forward, top_k

    net, weights = build_model(model, checkpoint, seed, **_overrides(img_size))
    cfg = net.config
    click.echo(f"{model}: {weights}")
    if images:
        x, names = batch_from_files(images, cfg, resize=not no_resize), list(images)
    else:
        x = preprocess(sample_photo(), cfg.img_size, cfg.mean, cfg.std)[None]
        names = ["scikit-image sample photo 'chelsea'"]
    logits, times = timed_forward(net, x, max(1, repeats))
    click.echo(f"input {tuple(x.shape)} -> output {tuple(logits.shape)} {logits.dtype}")
    for name, preds in zip(names, top_k(logits)):
        best = ", ".join(f"{c}: {p:.3f}" for c, p in preds)
        click.echo(f"{name}: top-5 classes {best}")
    med = sorted(times)[len(times) // 2]
    click.echo(f"latency {med:.1f} ms per batch of {x.shape[0]} "
               f"(median of {len(times)}, {torch.get_num_threads()} threads, CPU)")


if __name__ == "__main__":
    main()
