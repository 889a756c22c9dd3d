"""Click commands over ``ssmprune.ship``: ``bundle`` and ``triton-repo``.

``ssmprune.cli`` adds them with ``register(main)``. Heavy imports (onnx, TensorRT) happen
inside the commands, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from ssmprune import limits
from ssmprune.cli.options import batch_range, comma_list
from ssmprune.ship.triton_repo import INSTANCES  # light: onnx is imported when used


@click.command()
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Bundle folder to write; it must not exist.")
@click.option("--target", "targets", multiple=True, callback=comma_list, metavar="SM",
              help="GPU architecture(s) to build each export for, e.g. sm_86 or sm_86,sm_120 "
                   "(TensorRT-RTX builds them without a GPU).")
@click.option("--no-plugins", is_flag=True,
              help="Lower the custom nodes to their standard-op bodies (TensorRT-RTX needs "
                   "it); default: ssmprune's plugins in the aot form.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None,
              help="Builder optimization level (lower builds faster; default TensorRT's).")
@click.option("--batch-range", default=None, callback=batch_range, metavar="MIN:OPT:MAX",
              help="Optimisation profile of a dynamic-batch export's engines (as `build`).")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Class names, one per line in class order (default: a labels.txt the "
                   "export lists).")
def bundle(sources, output, targets, no_plugins, opt_level, batch_range, labels):
    """Write a folder a device needs to classify images with TensorRT, and nothing more.

    SOURCE is an engine file from `ssmprune build` (with its ENGINE.json) or an
    export folder, built here for each --target. The folder gets the engines
    and their manifests, labels.txt, a run.py that needs only numpy and TensorRT
    (and Pillow to read image files) and checks every file against SHA256SUMS
    before it loads anything, and a README naming the TensorRT / JetPack each
    engine needs. Engines holding the v3 plugin form are refused (run.py cannot
    register Python plugins).
    """
    from ssmprune.ship.bundle import BundleOptions, make_bundle

    def building(export, target):
        click.echo(f"building {export.name} for {target} ...", err=True)

    options = BundleOptions(targets=targets, plugins=not no_plugins,
                            optimization_level=opt_level, batch_range=batch_range,
                            labels=labels)
    made = make_bundle(sources, output, options, on_build=building)
    for e in made.engines:
        m = e.manifest
        how = f"built in {e.seconds:.1f}s" if e.built else "copied"
        click.echo(f"{e.file}: {m.tensorrt['flavour']} {m.tensorrt['version']}, "
                   f"{', '.join(m.gpu.get('targets') or [str(m.gpu.get('built_on'))])}, "
                   f"{m.precision}, plugins {m.plugin_form or 'none'} ({how})")
    click.echo(f"wrote {made.directory}: {', '.join(made.files)}")


@click.command("triton-repo")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Model repository folder to write; it must not exist.")
@click.option("--instances", type=int, default=1, show_default=True,
              callback=INSTANCES.callback,
              help="Instances of each model (instance_group count).")
@click.option("--onnx-device", type=click.Choice(["cpu", "gpu"]), default="cpu",
              show_default=True,
              help="Where Triton runs an export (instance_group kind): cpu is what parity "
                   "checks here; gpu uses ONNX Runtime's CUDA provider. Engines run on GPU.")
@click.option("--max-batch-size", type=int, default=None, callback=limits.BATCH.callback,
              help="max_batch_size of a dynamic-batch model (default: its largest batch).")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Class names for every model, one per line (default: a labels.txt the "
                   "export lists).")
def triton_repo(sources, output, instances, onnx_device, max_batch_size, labels):
    """Write a Triton Inference Server model repository: one model per SOURCE.

    SOURCE is an export folder (platform onnxruntime_onnx, 1/model.onnx) or an
    engine file (platform tensorrt_plan, 1/model.plan), optionally NAME=PATH to
    name the model. config.pbtxt takes inputs, outputs and dims from the
    manifest; a dynamic-batch artifact gets max_batch_size and dynamic_batching.
    TensorRT-RTX engines and engines with v3 plugins cannot be served and are
    refused.
    """
    from ssmprune.ship.triton_repo import RepoOptions, make_repo

    options = RepoOptions(instances=instances, onnx_kind=onnx_device,
                          max_batch_size=max_batch_size, labels=labels)
    models = make_repo(sources, output, options)
    for m in models:
        batch = (f"max_batch_size {m.max_batch_size}, dynamic_batching" if m.max_batch_size
                 else f"static batch {m.batch.static} (max_batch_size 0)")
        click.echo(f"{m.name}: {m.platform}, {batch}; files {', '.join(m.files)}")
        click.echo(f"  server needs: {m.needs}")
    # Triton takes a local repository by absolute path (in its container: where it is mounted).
    click.echo(f"wrote {output} ({len(models)} model{'s' if len(models) != 1 else ''}); serve "
               f"it with `tritonserver --model-repository={Path(output).resolve()}` (in "
               "NVIDIA's tritonserver container: the path it is mounted at)")


def register(main: click.Group) -> None:
    """Add the shipping commands to the ``ssmprune`` group."""
    main.add_command(bundle)
    main.add_command(triton_repo)
