"""ONNX file -> serialized TensorRT engine, with the precision each TensorRT version needs.

Precision (``--precision``):
- TensorRT >= 11 and TensorRT-RTX are always strongly typed: every tensor
  keeps the type the ONNX gives it, there are no FP16/BF16 builder flags. The
  precision must come from the ONNX (an fp16/bf16 export, or Q/DQ nodes);
  asking for another one is refused with the way out.
- TensorRT 10: an fp32 ONNX is built weakly typed, with the FP16/BF16 flag
  when asked; an ONNX that already carries fp16/bf16 or Q/DQ is built
  strongly typed, as it is.
fp32 builds clear TF32, so fp32 engines meet the fp32 parity tolerance.

Targets (``--target sm_86``): TensorRT-RTX builds ahead of time, without a
GPU, for the compute capabilities it is given (its default set when none);
full TensorRT builds for the GPU it runs on, so a target must be that GPU's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import onnx

from ssmprune import interrupt
from ssmprune.engine import trt as trt_mod
from ssmprune.engine.errors import (EngineBuildError, TensorRTUnavailableError,
                                    UnsupportedBuildOptionError)
from ssmprune.engine.plugins import (PluginRef, custom_nodes, drop_bodies,
                                     lower_to_standard_ops, nodes_named_by_op, plugin_form,
                                     register_plugins)
from ssmprune.errors import BadInputFileError
from ssmprune.exporter.precision import OnnxPrecision, onnx_precision

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class BuildOptions:
    """What ``ssmprune build`` asks of the builder.

    Attributes:
        precision: fp32 | fp16 | bf16, or None for what the ONNX carries.
        targets: ``sm_XY`` compute capabilities (TensorRT-RTX: any of its
            list; full TensorRT: the GPU present).
        plugins: bind custom nodes to plugins (False: lower to standard ops).
        timing_cache: file to load the timing cache from and save it to.
        version_compatible / hardware_compatible: TensorRT's compatibility modes.
        optimization_level: builder optimization level 0-5 (None: TensorRT's default).
        flavour: force ``tensorrt`` or ``tensorrt_rtx`` (None: see ``trt.installed``).
        plugin_form: ``v3`` or ``aot`` (None: ``SSMPRUNE_TRT_PLUGINS``, else aot where
            TensorRT has it).
        ptx_version: PTX ISA of the aot plugins' kernels, e.g. ``"8.4"`` (None: the
            newest the build machine's driver loads).
        batch_range: (min, opt, max) batch of the optimisation profile of a
            dynamic-batch export (None: 1, min(8, its max), its max).
    """

    precision: Optional[str] = None
    targets: tuple[str, ...] = ()
    plugins: bool = True
    timing_cache: Optional[Path] = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    optimization_level: Optional[int] = None
    flavour: Optional[str] = None
    plugin_form: Optional[str] = None
    ptx_version: Optional[str] = None
    batch_range: Optional[tuple[int, int, int]] = None


@dataclass
class BuiltEngine:
    """A serialized engine and what the manifest records about how it was built."""

    engine: memoryview
    flavour: trt_mod.Flavour
    precision: str
    strongly_typed: bool
    targets: Optional[list[str]]
    built_on: Optional[str]
    plugins: list[PluginRef]
    lowered_ops: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    seconds: float
    notes: list[str] = field(default_factory=list)
    plugin_form: Optional[str] = None  # v3 / aot; None without plugin layers
    ptx_version: Optional[str] = None  # the aot kernels' PTX ISA, "8.4"
    batch_range: Optional[tuple[int, int, int]] = None  # the profile of a dynamic batch
    # The timing cache to save (``build_to_file`` writes it, outside ``cancellable()``:
    # ``os._exit`` there would leave its temporary); None without --timing-cache.
    timing_cache: Optional[bytes] = None


def load_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path`` (weights stay external); ``BadInputFileError`` if unreadable."""
    if not path.is_file():
        raise BadInputFileError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises its own DecodeError, onnx others
        raise BadInputFileError(f"{path} is not a readable ONNX file: "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                                ) from None


def resolve_precision(flavour: trt_mod.Flavour, carried: OnnxPrecision,
                      requested: Optional[str]) -> tuple[str, bool, Optional[str]]:
    """``(precision, strongly_typed, builder_flag)`` for this flavour, ONNX and request."""
    if requested is not None and requested not in PRECISIONS:
        raise UnsupportedBuildOptionError(
            f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if flavour.always_strongly_typed:
        if requested is not None and requested != carried.float_type:
            raise UnsupportedBuildOptionError(
                f"{flavour.display} is always strongly typed: the precision comes from the "
                f"ONNX, which computes in {carried.float_type}"
                f"{' with ' + carried.quantized + ' Q/DQ' if carried.quantized else ''}; "
                f"export the model at {requested} (or calibrate it), or build with "
                f"--precision {carried.float_type}")
        return carried.name, True, None
    # TensorRT 10: builder flags on a weakly typed fp32 network, strongly typed otherwise.
    if carried.float_type != "fp32":
        if requested is not None and requested != carried.float_type:
            raise UnsupportedBuildOptionError(
                f"the ONNX already computes in {carried.float_type}; build it with "
                f"--precision {carried.float_type} (or export it in fp32 to use {requested})")
        return carried.name, True, None
    if requested in (None, "fp32"):
        return carried.name, carried.quantized is not None, None
    flag = {"fp16": "FP16", "bf16": "BF16"}[requested]
    if not hasattr(flavour.trt.BuilderFlag, flag):
        raise UnsupportedBuildOptionError(f"{flavour.display} has no {flag} builder flag")
    name = f"{carried.quantized}+{requested}" if carried.quantized else requested
    return name, False, flag


def check_targets(flavour: trt_mod.Flavour, targets: Sequence[str],
                  gpu: Optional[str]) -> Optional[list[str]]:
    """Normalized ``sm_XY`` targets for this flavour (None: TensorRT-RTX's default set)."""
    targets = [t.lower().replace("sm", "sm_").replace("sm__", "sm_") for t in targets]
    if flavour.builds_without_gpu:
        supported = flavour.supported_targets()
        unknown = [t for t in targets if t not in supported]
        if unknown:
            raise UnsupportedBuildOptionError(
                f"{flavour.display} cannot target {', '.join(unknown)}: it builds for "
                f"{', '.join(supported)}")
        return targets or None
    if gpu is None:
        raise TensorRTUnavailableError(
            f"{flavour.display} builds for the GPU it runs on, and there is no usable NVIDIA "
            "GPU here; TensorRT-RTX (tensorrt_rtx_bindings) builds without one")
    if any(t != gpu for t in targets):
        raise UnsupportedBuildOptionError(
            f"{flavour.display} builds for the GPU it runs on ({gpu}), not for "
            f"{', '.join(t for t in targets if t != gpu)}: build on such a device, or use "
            "--hardware-compatible for an engine that runs on Ampere (sm_80) and later")
    return [gpu]


def _apply_targets(flavour: trt_mod.Flavour, config: Any, targets: Optional[list[str]]) -> None:
    if not flavour.builds_without_gpu or not targets:
        return  # full TensorRT: the GPU present; TensorRT-RTX without targets: its default
    config.num_compute_capabilities = len(targets)
    for i, t in enumerate(targets):
        if not config.set_compute_capability(getattr(flavour.trt.ComputeCapability,
                                                      "SM" + t[3:]), i):
            raise UnsupportedBuildOptionError(f"{flavour.display} refused target {t}")


def check_external_data(model: onnx.ModelProto, onnx_path: Path) -> None:
    """Every external weights file the ONNX names is there (TensorRT's own error is cryptic)."""
    missing = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in init.external_data if e.key == "location"), None)
            if location and not (onnx_path.parent / location).is_file():
                missing.add(location)
    if missing:
        raise BadInputFileError(f"{onnx_path.name} keeps its weights in "
                                f"{', '.join(sorted(missing))}, missing next to it in "
                                f"{onnx_path.parent}")


def _io(network: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def desc(t):
        return {"name": t.name, "shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1]}

    return ([desc(network.get_input(i)) for i in range(network.num_inputs)],
            [desc(network.get_output(i)) for i in range(network.num_outputs)])


def check_fp8_targets(targets: Sequence[str]) -> None:
    """fp8 Q/DQ needs fp8 tensor cores: Ada (sm_89) or newer, checked before parsing."""
    old = [t for t in targets if t[3:].isdigit() and int(t[3:]) < 89]
    if old:
        raise UnsupportedBuildOptionError(
            f"fp8 Q/DQ needs sm_89 or newer; {', '.join(old)} has no fp8: build for sm_89 / "
            "sm_120, or calibrate with --precision int8")


def _ptx_text(version: Optional[int]) -> Optional[str]:
    if version is None:
        return None
    from ssmprune.plugins import ptx

    return ptx.as_text(version)


def plugin_choice(flavour: trt_mod.Flavour, options: BuildOptions, needed: Sequence[PluginRef],
                  gpu: Optional[str], dynamic_batch: bool = False
                  ) -> tuple[Optional[str], Optional[int]]:
    """(plugin form, PTX ISA of its kernels, 84 for 8.4) a build binds ``needed`` with;
    (None, None) when it binds none. Checked before any parsing: ``--ptx-version``
    only with the aot form, and neither a ``--hardware-compatible`` engine (its
    kernels are compiled for the build GPU's architecture) nor a dynamic batch (and
    for its static shapes) with it."""
    binds = options.plugins and bool(needed) and not flavour.is_rtx
    form = plugin_form(flavour, options.plugin_form) if binds else None
    if form == "aot" and dynamic_batch:
        raise UnsupportedBuildOptionError(
            "the aot plugins' kernels are compiled for static shapes, and this export has a "
            "dynamic batch: build it with --plugin-form v3 or --no-plugins, or export with a "
            "static --batch")
    if form != "aot":
        if options.ptx_version is not None:
            raise UnsupportedBuildOptionError(
                f"--ptx-version sets the PTX of the aot plugins' kernels; this build "
                f"{'binds the ' + form + ' form' if form else 'has no plugin layers'}")
        return form, None
    from ssmprune.plugins import ptx

    if options.hardware_compatible:
        raise UnsupportedBuildOptionError(
            "--hardware-compatible engines run on every GPU from Ampere on, but the aot "
            f"plugins' kernels are compiled for this GPU ({gpu}) only: build without "
            "--hardware-compatible (one engine per GPU architecture), or with the v3 form "
            "(SSMPRUNE_TRT_PLUGINS=v3, Python on the device)")
    try:
        requested = None if options.ptx_version is None else ptx.parse(options.ptx_version)
        chosen = ptx.choose(int(gpu[3:]), requested, ptx.driver_cuda_version())
    except ValueError as err:
        raise UnsupportedBuildOptionError(f"--ptx-version: {err}") from None
    return form, chosen


DEFAULT_OPT_BATCH = 8  # the profile's opt batch unless --batch-range says otherwise


def batch_profile(model: onnx.ModelProto, requested: Optional[tuple[int, int, int]],
                  max_batch: Optional[int]) -> Optional[tuple[int, int, int]]:
    """The (min, opt, max) batch profile of an ONNX with a dynamic batch, None for a static
    one. ``max_batch``: the export's largest batch (from its manifest; None for a bare .onnx,
    which then needs ``requested``). Refused in one line: a range for a static batch, an
    unordered range, or one past the export's maximum."""
    weights = {i.name for i in model.graph.initializer}
    first = next(v for v in model.graph.input if v.name not in weights)
    batch = first.type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value"):
        if requested is not None:
            raise UnsupportedBuildOptionError(
                f"--batch-range needs a dynamic-batch export; this one has a static batch of "
                f"{batch.dim_value}: export it with --batch dynamic[:MAX]")
        return None
    if requested is None:
        if max_batch is None:
            raise UnsupportedBuildOptionError(
                f"the ONNX input {first.name} has a dynamic batch: give --batch-range "
                "MIN:OPT:MAX (or build from its export folder)")
        return 1, min(DEFAULT_OPT_BATCH, max_batch), max_batch
    low, opt, high = requested
    if not 1 <= low <= opt <= high:
        raise UnsupportedBuildOptionError(f"--batch-range {low}:{opt}:{high} is not "
                                          "1 <= MIN <= OPT <= MAX")
    if max_batch is not None and high > max_batch:
        raise UnsupportedBuildOptionError(f"--batch-range {low}:{opt}:{high} goes past the "
                                          f"export's largest batch, {max_batch}")
    return requested


def build_engine(onnx_path: Path, options: BuildOptions = BuildOptions(),
                 echo_level: str = "none", max_batch: Optional[int] = None) -> BuiltEngine:
    """Parse ``onnx_path`` and build a serialized engine as ``options`` ask; ``max_batch``
    is its export's largest batch if it has a dynamic one (``batch_profile``).

    Custom nodes are bound to plugins (``options.plugins``) or lowered to their
    standard-op bodies. Raises an ``SsmpruneError`` subclass for anything the
    user can change: missing TensorRT, unsupported option, precision mismatch,
    unavailable plugin, a graph TensorRT cannot parse or build.

    SIGINT / SIGTERM stop it (``interrupt.Interrupted``): TensorRT swallows an
    exception raised in its callbacks, so the signal is held
    (``interrupt.cancellable``), the progress monitor cancels the build at its
    next step, and a TensorRT-RTX compile step, which has no callback for
    minutes, is ended with the process.
    """
    with interrupt.cancellable():
        return _build_engine(onnx_path, options, echo_level, max_batch)


def _build_engine(onnx_path: Path, options: BuildOptions, echo_level: str,
                  max_batch: Optional[int]) -> BuiltEngine:
    onnx_path = Path(onnx_path)
    flavour = trt_mod.load(options.flavour)
    trt = flavour.trt
    notes: list[str] = []
    model = load_onnx(onnx_path)
    carried = onnx_precision(model)
    precision, strongly_typed, flag = resolve_precision(flavour, carried, options.precision)
    if options.version_compatible and not flavour.has_version_compatible:
        raise UnsupportedBuildOptionError(
            f"--version-compatible is not supported by {flavour.display} (it needs the lean "
            "runtime library, which its wheels do not ship)")
    if options.hardware_compatible and not flavour.has_hardware_compatible:
        raise UnsupportedBuildOptionError(
            f"--hardware-compatible does not apply to {flavour.display}: its engines run on "
            "the compute capabilities given with --target (its default set without one)")
    if options.hardware_compatible and options.targets:
        raise UnsupportedBuildOptionError("give either --target or --hardware-compatible")
    gpu = None if flavour.builds_without_gpu else trt_mod.current_gpu_arch()
    targets: Optional[list[str]] = (["sm_80+"] if options.hardware_compatible
                                    else check_targets(flavour, options.targets, gpu))
    if carried.quantized == "fp8":
        check_fp8_targets(targets or ([gpu] if gpu else []))
    check_external_data(model, onnx_path)

    profile = batch_profile(model, options.batch_range, max_batch)
    needed = sorted(custom_nodes(model))
    form, ptx_version = plugin_choice(flavour, options, needed, gpu, profile is not None)
    if options.plugins:
        plugins = register_plugins(flavour, needed, form=form, ptx_version=ptx_version)
        if plugins and options.version_compatible:
            raise UnsupportedBuildOptionError(
                "ssmprune does not build version-compatible engines with plugin layers (the "
                "lean runtime cannot load Python plugins); build with --no-plugins")
        model, lowered = drop_bodies(model, plugins), {}
        if form == "aot" and trt_mod.version_tuple(flavour.version) < (10, 10):
            model = nodes_named_by_op(model)
    else:
        plugins = []
        model, lowered = lower_to_standard_ops(model)

    logger = trt_mod.make_logger(flavour, echo_level)
    builder = trt_mod.create_builder(flavour, logger)
    network = trt_mod.create_network(flavour, builder, strongly_typed)
    parser = trt_mod.create_parser(flavour, network, logger)
    if not parser.parse(model.SerializeToString(), str(onnx_path)):
        errors = trt_mod.parser_errors(parser) or logger.errors_since(0)
        raise EngineBuildError(f"{flavour.display} cannot parse {onnx_path.name}: "
                               f"{errors[0] if errors else 'no reason given'}"
                               f"{f' (and {len(errors) - 1} more)' if len(errors) > 1 else ''}")
    config = builder.create_builder_config()
    monitor = trt_mod.make_progress_monitor(flavour, interrupt.requested)
    config.progress_monitor = monitor
    if flag is not None:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if carried.float_type == "fp32" and flag is None and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.optimization_level is not None:
        config.builder_optimization_level = int(options.optimization_level)
    if options.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    else:
        _apply_targets(flavour, config, targets)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if profile is not None:
        _add_batch_profile(builder, network, config, profile)
    cache = None
    if options.timing_cache is not None:
        if flavour.has_timing_cache:
            blob = options.timing_cache.read_bytes() if options.timing_cache.is_file() else b""
            cache = config.create_timing_cache(blob)
            config.set_timing_cache(cache, ignore_mismatch=False)
        else:
            notes.append(f"{flavour.display} has no timing cache (its calls are no-ops); "
                         f"--timing-cache {options.timing_cache} ignored")

    mark = len(logger.messages)
    start = time.perf_counter()
    engine = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if engine is None:
        errors = logger.errors_since(mark)
        raise EngineBuildError(f"{flavour.display} could not build an engine from "
                               f"{onnx_path.name}: {errors[-1] if errors else 'no reason given'}")
    inputs, outputs = _io(network)
    return BuiltEngine(memoryview(engine).cast("B"), flavour, precision, strongly_typed,
                       targets, gpu, plugins, lowered, inputs, outputs, seconds, notes,
                       form if plugins else None, _ptx_text(ptx_version) if plugins else None,
                       profile, bytes(memoryview(cache.serialize())) if cache is not None else None)


def _add_batch_profile(builder: Any, network: Any, config: Any,
                       profile: tuple[int, int, int]) -> None:
    """One optimisation profile: the input's batch from min to max, tuned at opt."""
    tensor = network.get_input(0)
    rest = tuple(tensor.shape)[1:]
    shapes = [(b, *rest) for b in profile]
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(trt_profile)
