"""``ssmprune bundle``: the folder a device needs to classify images, and nothing more.

Layout (flat, so ``sha256sum -c SHA256SUMS`` works in the folder)::

    BUNDLE/
      <name>.<sm_XY>.engine        one engine per GPU target (built here from an export),
      <name>.<sm_XY>.engine.json   or an engine given as it is, each with its manifest
      labels.txt                   class names, one per line (if any)
      run.py                       ssmprune/ship/bundle_run.py: numpy + TensorRT only
      README.md                    what each engine needs (TensorRT / JetPack, GPU, driver)
      SHA256SUMS                   sha256sum's format, every other file; written last

Sources are read through the checked readers (``ship.sources``). Refused before any
work, each in one line: an output folder that exists; an export without ``--target``;
a target the installed TensorRT cannot build for (a Jetson's sm_87 needs the device's
own TensorRT); an engine holding the ``v3`` plugin form (its Python IPluginV3 creators
need ssmprune, torch and Triton in the process, which run.py does not have: rebuild
with ``--plugin-form aot`` or ``--no-plugins``); an engine built from a bare ``.onnx``
(no preprocessing recorded); engines of different inputs (run.py prepares one input).
The folder is written into a temporary beside it and renamed at the end
(``outputs.atomic_dir``): a failed build leaves nothing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from ssmprune.errors import ConfigError
from ssmprune.limits import Bound
from ssmprune.ship import bundle_run
from ssmprune.ship.errors import NotShippableError
from ssmprune.ship.sources import (LABELS_FILE, EngineSource, ExportSource, Source,
                                   input_config, labels_of, new_output_folder, num_classes,
                                   read_labels, read_sources)

if TYPE_CHECKING:
    from ssmprune.engine.manifest import EngineManifest

RUN_FILE = "run.py"
README_FILE = "README.md"
SUMS_FILE = bundle_run.SUMS_FILE
RESERVED = (RUN_FILE, README_FILE, SUMS_FILE, LABELS_FILE)
TARGETS = Bound(1, 16, "GPU targets of one bundle (ssmprune.ship.bundle.TARGETS)")

#: Jetson modules by compute capability: TensorRT-RTX builds for none of them.
JETSON = {"sm_53": "Jetson Nano", "sm_62": "Jetson TX2", "sm_72": "Jetson Xavier",
          "sm_87": "Jetson Orin", "sm_101": "Jetson Thor", "sm_110": "Jetson Thor"}
#: GPUs per compute capability, for the README.
GPUS = {"sm_75": "Turing: RTX 20xx, T4", "sm_80": "Ampere: A100, A30",
        "sm_86": "Ampere: RTX 30xx, RTX A-series, A10, A40", "sm_87": "Jetson Orin",
        "sm_89": "Ada: RTX 40xx, L4, L40", "sm_90": "Hopper: H100, H200",
        "sm_120": "Blackwell: RTX 50xx, RTX PRO", "sm_121": "Blackwell: DGX Spark (GB10)"}
#: JetPack releases by the TensorRT (major, minor) they ship (the design notes,
#: ../shared/design/ARCHITECTURE.md, and README "TensorRT plugins"); a Jetson engine must be
#: built with the device's own TensorRT. TensorRT 11.4 is not shipped by JetPack: NVIDIA's
#: "Migrating TensorRT 10.x to 11.x on Jetson" installs 11.4.1's SBSA package on JetPack
#: 7.2.2 or later (AGX Orin, Thor); 11.4.0 does not support Jetson.
JETPACK = {(10, 3): "JetPack 6.1 / 6.2 (Jetson Orin)",
           (10, 13): "JetPack 7.0 / 7.1 (Jetson Thor)",
           (10, 16): "JetPack 7.2 (Jetson Thor and Orin)",
           (11, 4): "JetPack 7.2.2 or later with TensorRT 11.4.1's SBSA package (AGX Orin, "
                    "Thor); not 11.4.0"}


@dataclass(frozen=True)
class BundleOptions:
    """What ``ssmprune bundle`` asks for.

    targets: ``sm_XY`` to build each export for (TensorRT-RTX: without a GPU).
    plugins: bind ssmprune's plugins in the aot form (False: ``--no-plugins``, the custom
        nodes lowered to standard ops, which TensorRT-RTX needs).
    optimization_level: the builder's, 0-5 (None: TensorRT's default).
    batch_range: (min, opt, max) profile for a dynamic-batch export (None: the build's
        default, 1 to the export's largest batch).
    labels: a labels file for every engine (else: a labels.txt the export lists).
    """

    targets: tuple[str, ...] = ()
    plugins: bool = True
    optimization_level: Optional[int] = None
    batch_range: Optional[tuple[int, int, int]] = None
    labels: Optional[Path] = None


@dataclass
class BundledEngine:
    """An engine in the bundle: its file name, manifest and where it came from."""

    file: str
    manifest: EngineManifest
    source: str
    built: bool
    seconds: float = 0.0


@dataclass
class Bundle:
    directory: Path
    engines: list[BundledEngine]
    files: list[str] = field(default_factory=list)
    labels: bool = False


def run_script() -> Path:
    """The run.py every bundle gets: this package's ``bundle_run.py``."""
    return Path(bundle_run.__file__)


def check_targets(targets: Sequence[str]):
    """(flavour, normalized targets) for building, checked before any work; a target the
    installed TensorRT cannot build is one line (a Jetson's says what to do instead)."""
    from ssmprune.engine import trt as trt_mod
    from ssmprune.engine.build import check_targets as engine_targets
    from ssmprune.engine.errors import UnsupportedBuildOptionError

    TARGETS.check("--target values", len(targets))
    flavour = trt_mod.load()
    gpu = None if flavour.builds_without_gpu else trt_mod.current_gpu_arch()
    try:
        normalized = engine_targets(flavour, targets, gpu) or []
    except UnsupportedBuildOptionError as err:
        asked = [t.lower().replace("sm", "sm_").replace("sm__", "sm_") for t in targets]
        jetsons = [f"{t} ({JETSON[t]})" for t in asked if t in JETSON]
        if not jetsons:
            raise
        raise UnsupportedBuildOptionError(
            f"{err}. {', '.join(jetsons)}: a Jetson engine needs the device's own full "
            "TensorRT (JetPack's): run `ssmprune build EXPORT --no-plugins -o E` on the "
            "device and bundle E") from None
    return flavour, list(dict.fromkeys(normalized))


def check_bundleable(manifest: EngineManifest, name: str) -> None:
    """run.py can run the engine: no v3 plugins, preprocessing recorded."""
    if manifest.plugin_form == "v3":
        raise NotShippableError(
            f"engine {name} holds the v3 form of ssmprune's plugins (Python IPluginV3 "
            "creators, which need ssmprune, torch and Triton in the running process); a "
            "bundle's run.py has TensorRT and numpy only: rebuild it with --plugin-form aot "
            "(TensorRT >= 10.9) or --no-plugins")
    if manifest.source is None:
        raise NotShippableError(f"engine {name} was built from a bare .onnx file: its manifest "
                                "records no preprocessing for run.py; build it from an "
                                "`ssmprune export` folder")


def _one_input(sources: Sequence[Source]) -> None:
    """Every source takes the same input and has the same classes (run.py prepares one)."""
    seen = None
    for s in sources:
        key = (input_config(s, "a bundle"), num_classes(s))
        if seen is not None and key != seen[1]:
            raise ConfigError(f"{seen[0]} and {s.given} take different inputs or classes "
                              f"({seen[1]} against {key}): a bundle holds engines of one "
                              "model; make one bundle per model")
        seen = seen or (s.given, key)


def _labels(sources: Sequence[Source], given: Optional[Path]) -> Optional[list[str]]:
    found = {tuple(lab) for s in sources if (lab := labels_of(s, given)) is not None}
    if len(found) > 1:
        raise ConfigError("the sources' exports list different labels.txt files: give one "
                          "with --labels")
    return list(next(iter(found))) if found else None


def make_bundle(sources: Sequence[str], output: Path, options: BundleOptions = BundleOptions(),
                on_build=None) -> Bundle:
    """Write the bundle of ``sources`` (export folders and engine files) into the new folder
    ``output``; ``on_build(export, target)`` is called before each build (progress)."""
    from ssmprune.outputs import atomic_dir

    out = new_output_folder(output, sources, "a bundle")
    read = read_sources(sources)
    exports = [s for s in read if isinstance(s, ExportSource)]
    engines = [s for s in read if isinstance(s, EngineSource)]
    if exports and not options.targets:
        raise ConfigError(f"{exports[0].given} is an export: give --target sm_XY to build its "
                          "engine(s) for the device, or bundle engines from `ssmprune build`")
    if options.targets and not exports:
        raise ConfigError("--target builds engines from export folders, and no SOURCE is one")
    for e in engines:
        check_bundleable(e.manifest, e.given)
    flavour, targets = check_targets(options.targets) if exports else (None, [])
    _one_input(read)
    labels = (read_labels(options.labels, num_classes(read[0]), "--labels")
              if options.labels is not None else _labels(read, None))
    planned = [e.path.name for e in engines] + [f"{x.name}.{t}.engine"
                                                for x in exports for t in targets]
    names = [n for n in planned for n in (n, n + ".json")]
    clash = sorted({n for n in names if names.count(n) > 1 or n in RESERVED})
    if clash:
        raise ConfigError(f"two engines, or an engine and a file every bundle has, would be "
                          f"written as {', '.join(clash)}: rename the engine or name the "
                          "export with NAME=PATH")

    from ssmprune.engine.build import BuildOptions
    from ssmprune.engine.manifest import read_manifest, verify_engine_file
    from ssmprune.engine.save import build_to_file

    bundled: list[BundledEngine] = []
    with atomic_dir(out) as tmp:
        for e in engines:
            shutil.copyfile(e.path, tmp / e.path.name)
            shutil.copyfile(e.manifest_path, tmp / (e.path.name + ".json"))
            verify_engine_file(tmp / e.path.name, e.manifest)  # the copy is the checked file
            bundled.append(BundledEngine(e.path.name, e.manifest, e.given, built=False))
        for x in exports:
            for t in targets:
                if on_build is not None:
                    on_build(x, t)
                build = BuildOptions(targets=(t,), plugins=options.plugins,
                                     plugin_form="aot" if options.plugins else None,
                                     optimization_level=options.optimization_level,
                                     batch_range=options.batch_range, flavour=flavour.name)
                built, path, _ = build_to_file(x.directory, tmp / f"{x.name}.{t}.engine", build)
                manifest = read_manifest(path)
                check_bundleable(manifest, path.name)
                bundled.append(BundledEngine(path.name, manifest, x.given, built=True,
                                             seconds=built.seconds))
        if labels is not None:
            (tmp / LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
        shutil.copyfile(run_script(), tmp / RUN_FILE)
        (tmp / README_FILE).write_text(readme(bundled, read, labels), encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        from ssmprune.exporter.manifest import sha256_file

        (tmp / SUMS_FILE).write_text("".join(f"{sha256_file(tmp / n)}  {n}\n" for n in files),
                                     encoding="utf-8")
    return Bundle(out, bundled, [*files, SUMS_FILE], labels is not None)


# ---------------------------------------------------------------------------- README


def min_cuda_for_ptx(ptx_text: str) -> Optional[str]:
    """The oldest CUDA driver version that loads PTX ISA ``ptx_text`` (e.g. "8.4" -> "12.4")."""
    from ssmprune.plugins import ptx

    try:
        wanted = ptx.parse(ptx_text)
    except ValueError:
        return None
    for major, minors in ((11, range(9)), (12, range(10)), (13, range(10))):
        for minor in minors:
            if ptx.driver_max_ptx((major, minor)) >= wanted:
                return f"{major}.{minor}"
    return None


def tensorrt_needed(m: EngineManifest) -> str:
    """Which TensorRT (and JetPack) runs the engine of manifest ``m``: one Markdown cell."""
    version = m.tensorrt["version"]
    if m.tensorrt["flavour"] == "tensorrt_rtx":
        return (f"TensorRT-RTX {version} exactly (NVIDIA's TensorRT-RTX SDK, module "
                f"`tensorrt_rtx`, or `pip install tensorrt-rtx-cu13-libs=={version} "
                f"tensorrt-rtx-cu13-bindings=={version}`); RTX GPUs on desktops, laptops and "
                "workstations; no JetPack ships TensorRT-RTX")
    parts = tuple(int(p) for p in version.split(".") if p.isdigit())
    which = (f"TensorRT {parts[0]}.x from {version} on (version-compatible)"
             if m.version_compatible else f"TensorRT {version} exactly")
    jetpack = JETPACK.get(parts[:2])
    where = f"; on Jetson: {jetpack}" if jetpack else ""
    return f"{which} (the `tensorrt` Python package of that version){where}"


def gpus_of(m: EngineManifest) -> str:
    gpu = m.gpu
    if gpu.get("hardware_compatible"):
        return "Ampere (sm_80) and later (hardware-compatible)"
    targets = gpu.get("targets") or ([gpu["built_on"]] if gpu.get("built_on") else None)
    if not targets:
        return "TensorRT-RTX's default targets"
    return ", ".join(f"{t} ({GPUS[t]})" if t in GPUS else t for t in targets)


def plugins_needed(m: EngineManifest) -> str:
    if not m.plugins:
        lowered = ", ".join(f"{op} x{n}" for op, n in m.lowered_ops.items())
        return f"none (custom ops lowered to standard ops{': ' + lowered if lowered else ''})"
    names = ", ".join(p["name"] for p in m.plugins)
    cuda = min_cuda_for_ptx(str(m.ptx_version))
    driver = (f"; the NVIDIA driver must load PTX ISA {m.ptx_version} (CUDA {cuda} or later)"
              if cuda else "")
    return f"{names}, aot form: kernels inside the engine, no Python plugins{driver}"


def readme(engines: Sequence[BundledEngine], sources: Sequence[Source],
           labels: Optional[list[str]]) -> str:
    """The bundle's README.md: how to run it and what each engine needs."""
    export = sources[0].manifest if isinstance(sources[0], ExportSource) else sources[0].export
    cfg = input_config(sources[0], "a bundle")
    first = engines[0].manifest
    pruned = (f"pruned ({export.prune_preset or 'custom'}: keep {export.prune['keep_ratio']} "
              f"after blocks {export.prune['prune_after']})" if export.prune else "dense")
    weights = (f"checkpoint {Path(export.weights['checkpoint']).name}" if "checkpoint"
               in export.weights else f"seeded random weights (seed {export.weights['seed']})")
    try:
        version = metadata.version("ssmprune")
    except metadata.PackageNotFoundError:
        version = "?"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(f"| `{e.file}` | {gpus_of(e.manifest)} | {tensorrt_needed(e.manifest)} | "
                     f"{e.manifest.precision} | {plugins_needed(e.manifest)} |" for e in engines)
    inp = first.onnx["inputs"][0]
    out = first.onnx["outputs"][0]
    rng = first.batch_range
    batch_text = (f"dynamic batch {rng[0]} to {rng[2]} (the engine's profile): run.py sends up "
                  f"to {rng[2]} inputs at once" if rng else
                  f"static batch {inp['shape'][0]}: run.py fills the last batch by repeating "
                  "its last input")
    shape = "(" + ", ".join("N" if d == -1 else str(d) for d in inp["shape"]) + ")"
    label_text = (f"`{LABELS_FILE}`: {len(labels)} class names, one per line in class order"
                  if labels else "no labels: classes are shown by index")
    return f"""# {export.model} for TensorRT: an ssmprune bundle

Written by ssmprune {version} on {when}. Everything a device needs to classify images
with this model, and nothing more: no torch, no ssmprune.

## Run

    python3 run.py photo.jpg more/*.png      # top-5 classes per image, latency
    python3 run.py inputs.npy                # inputs prepared already (float32)
    python3 run.py --check                   # check every file against SHA256SUMS
    sha256sum -c SHA256SUMS                  # the same check with coreutils

`run.py` needs Python 3.9+, numpy, the TensorRT of its engine (below) and an NVIDIA
driver; Pillow (`pip install pillow`) only to read image files. It checks every file
against `SHA256SUMS` before it reads or loads anything, and refuses, in one `error:`
line, a changed file, another TensorRT version, another GPU, or a driver too old for
the engine. With several engines it runs the one built for this GPU (`--engine FILE`
to choose). `--preprocess-only OUT.npy` writes the prepared inputs and stops (no
TensorRT needed): prepare `.npy` inputs where Pillow is, run them where it is not.

## Engines

| engine | GPU | TensorRT needed | precision | plugins |
|---|---|---|---|---|
{rows}

An engine runs only on the TensorRT version that built it (unless built
version-compatible) and on the GPU architectures it was built for. A Jetson engine
(sm_87 Orin, Thor) is built on the device with its JetPack's TensorRT
(`ssmprune build EXPORT --no-plugins -o E` there; `ssmprune bundle E -o DIR`).

## Model

- {export.model} ({export.family}), {pruned}, {weights}
- input `{inp['name']}`: float32 {shape}, {batch_text}
- preprocessing (as `ssmprune run`): shorter side resized to round({cfg['img_size']} / 0.875)
  px (bicubic), centre crop {cfg['img_size']} x {cfg['img_size']}, RGB scaled to [0, 1],
  normalised with mean {cfg['mean']} and std {cfg['std']}
- output `{out['name']}`: {tuple(out['shape'])} logits (run.py shows their softmax)
- {label_text}

## Files

`SHA256SUMS` lists every other file (sha256sum's format). It detects a corrupted or
truncated copy; it is not a signature: whoever can change an engine can change
`SHA256SUMS`. Compare `SHA256SUMS` itself with a copy received another way when that
matters. Each engine's manifest (`ENGINE.json`) records how it was built (TensorRT,
targets, precision, plugins, the export it came from with that export's sha256).
"""
