"""``export``: a model (dense or pruned) to ONNX with its manifest."""

from __future__ import annotations

import click

from ssmprune import limits
from ssmprune.cli.options import (
    DEFAULT_MAX_BATCH,
    batch_spec,
    img_size_option,
    overrides,
    prune_arg,
    prune_options,
    seed_option,
)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.command("export")
@click.argument("model", callback=limits.not_empty)
@click.option("-o", "--output", "out_dir", type=click.Path(), required=True,
              help="Directory to write model.onnx and manifest.json into.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Official checkpoint (.pth/.safetensors); default: seeded random weights.")
@seed_option
@img_size_option
@prune_options
@click.option("--batch", default="1", show_default=True, callback=batch_spec,
              metavar="N|dynamic[:MAX]",
              help="Static batch N, or dynamic: any batch from 1 to MAX "
                   f"(default {DEFAULT_MAX_BATCH}) from one file (ONNX dim_param 'batch').")
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
    from ssmprune.outputs import prepare_output

    prepare_output(out_dir, "dir", inputs=[checkpoint] if checkpoint else [])
    from ssmprune.exporter import ExportOptions
    from ssmprune.exporter import export as export_model
    from ssmprune.exporter.progress import RichSteps

    prune = prune_arg(preset, keep_ratio, prune_after, importance, alignment)
    options = ExportOptions(model, checkpoint, seed, prune, overrides(img_size), batch[0],
                            batch[1], dtype, flavor, opset)
    result = export_model(options, out_dir, RichSteps())
    m = result.manifest
    growth = result.file_bytes / result.weight_bytes - 1 if result.weight_bytes else 0.0
    pruned = f"pruned ({m.prune_preset or 'custom'})" if m.prune else "dense"
    click.echo(f"wrote {result.directory / 'model.onnx'} ({_megabytes(result.file_bytes)}; {m.precision} "
               f"weights {_megabytes(result.weight_bytes)}, {growth:+.1%}) and manifest.json")
    batch = f" (batch 1 to {m.max_batch})" if m.dynamic else ""
    click.echo(f"{m.model} {pruned}, input {'x'.join(map(str, m.input['shape']))}{batch}, "
               f"{m.precision}, flavor {m.flavor}, opset {m.opset}")
    custom = ", ".join(f"{k} {v}" for k, v in result.custom_nodes.items()) or "none"
    click.echo(f"custom nodes: {custom}")
    click.echo("nodes by op type: " + ", ".join(f"{k} {v}" for k, v in result.op_counts.items()))
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.step_seconds.items())
    click.echo(f"export time {result.seconds:.1f}s ({steps})")


def register(main: click.Group) -> None:
    """Add ``export`` to the ``ssmprune`` group."""
    main.add_command(export_command)
