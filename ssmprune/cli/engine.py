"""Click commands over ``ssmprune.engine``: ``build``.

``ssmprune.cli`` adds them with ``register(main)``. Heavy imports (onnx, TensorRT)
happen inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from ssmprune.cli.options import batch_range, comma_list


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Engine file to write (default: the ONNX path with .engine); the manifest "
                   "goes next to it as ENGINE.json.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Precision (default: what the ONNX carries). TensorRT 11 and TensorRT-RTX "
                   "take it only from the ONNX; TensorRT 10 also sets builder flags.")
@click.option("--target", "targets", multiple=True, callback=comma_list, metavar="SM",
              help="GPU architecture(s), e.g. sm_86 or sm_86,sm_120: TensorRT-RTX builds for "
                   "them without a GPU; full TensorRT builds for the GPU present.")
@click.option("--no-plugins", is_flag=True,
              help="Lower the custom nodes to their standard-op bodies instead of binding plugins.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Timing cache file to read and update (full TensorRT).")
@click.option("--version-compatible", is_flag=True,
              help="Engine that later TensorRT versions can run (full TensorRT).")
@click.option("--hardware-compatible", is_flag=True,
              help="Engine for Ampere (sm_80) and later GPUs (full TensorRT).")
@click.option("--plugin-form", type=click.Choice(["v3", "aot"]), default=None,
              help="Form of ssmprune's plugins: aot (kernels compiled into the engine, no "
                   "Python at run time; TensorRT >= 10.9) or v3 (Python IPluginV3). Default: "
                   "SSMPRUNE_TRT_PLUGINS, else aot where TensorRT has it.")
@click.option("--ptx-version", default=None, metavar="X.Y",
              help="PTX ISA of the aot plugins' kernels, e.g. 8.4: the newest the oldest "
                   "driver that will run the engine accepts (default: the newest this "
                   "machine's driver accepts).")
@click.option("--batch-range", default=None, callback=batch_range, metavar="MIN:OPT:MAX",
              help="Optimisation profile of a dynamic-batch export (`export --batch dynamic`): "
                   "the batches the engine runs, tuned at OPT (default 1:min(8,MAX):MAX, MAX "
                   "the export's).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None,
              help="Builder optimization level (lower builds faster; default TensorRT's).")
@click.option("--verbose", is_flag=True, help="Show TensorRT's warnings and info messages.")
def build(source, output, precision, targets, no_plugins, timing_cache, version_compatible,
          hardware_compatible, plugin_form, ptx_version, batch_range, opt_level, verbose):
    """Build a TensorRT engine from SOURCE (an export folder or .onnx file), with its manifest.

    Custom nodes (ssmprune::SelectiveScan, ssmprune::TokenGather) are bound
    to ssmprune's TensorRT plugins, or with --no-plugins lowered to the
    standard-op bodies the ONNX carries. Uses full TensorRT when installed,
    else TensorRT-RTX (set SSMPRUNE_TENSORRT to choose).
    """
    from ssmprune.engine.build import BuildOptions
    from ssmprune.engine.save import build_to_file

    options = BuildOptions(precision=precision, targets=targets, plugins=not no_plugins,
                           timing_cache=timing_cache, version_compatible=version_compatible,
                           hardware_compatible=hardware_compatible,
                           optimization_level=opt_level, plugin_form=plugin_form,
                           ptx_version=ptx_version, batch_range=batch_range)
    built, engine_path, manifest_path = build_to_file(
        source, output, options, echo_level="info" if verbose else "none")
    for note in built.notes:
        click.echo(f"note: {note}", err=True)
    lowered = ", ".join(f"{op} x{n}" for op, n in built.lowered_ops.items())
    plugins = ", ".join(p.name for p in built.plugins)
    targets_text = ", ".join(built.targets) if built.targets else "its default targets"
    click.echo(f"built {engine_path} ({engine_path.stat().st_size / 2**20:.1f} MiB) with "
               f"{built.flavour.display} in {built.seconds:.1f}s: precision {built.precision}, "
               f"for {targets_text}")
    form = (f" ({built.plugin_form} form"
            + (f", PTX {built.ptx_version}" if built.ptx_version else "") + ")"
            if built.plugin_form else "")
    if built.batch_range:
        low, opt, high = built.batch_range
        click.echo(f"dynamic batch: {low} to {high}, tuned at {opt}")
    click.echo(f"plugins: {plugins or 'none'}{form}"
               + (f"; lowered to standard ops: {lowered}" if lowered else ""))
    click.echo(f"wrote {manifest_path}")


def register(main: click.Group) -> None:
    """Add the engine commands to the ``ssmprune`` group."""
    main.add_command(build)
