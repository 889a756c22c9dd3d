"""Check an engine against its manifest and this machine, then load and run it.

``check_engine`` needs no GPU: it reads the manifest, checks the file (size,
sha256: a truncated or replaced engine), the TensorRT flavour and version, and,
when a GPU is present, its architecture. ``load_engine`` adds what only a GPU
machine can do: register the plugins the engine needs, deserialize.
``EngineRunner`` runs it on CUDA tensors (Polygraphy's runner shape:
``activate`` / ``infer`` / ``deactivate``).

Each failure is one ``SsmpruneError`` line saying what is wrong and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ssmprune.engine import trt as trt_mod
from ssmprune.engine.errors import (EngineFileError, EngineMismatchError, NoGpuError)
from ssmprune.engine.manifest import EngineManifest, read_manifest, verify_engine_file
from ssmprune.engine.plugins import PluginRef, register_plugins

PathLike = Union[str, os.PathLike]
_DETECT = "detect"


def check_tensorrt(manifest: EngineManifest, flavour: trt_mod.Flavour, name: str) -> None:
    """The installed flavour and version can run this engine."""
    built_flavour = manifest.tensorrt.get("flavour")
    built_version = str(manifest.tensorrt.get("version"))
    built = f"{trt_mod.DISPLAY_NAMES.get(built_flavour, built_flavour)} {built_version}"
    if built_flavour != flavour.name:
        raise EngineMismatchError(f"engine {name} was built with {built}, this machine has "
                                  f"{flavour.display}: rebuild it here with `ssmprune build`")
    if built_version == flavour.version:
        return
    have, was = trt_mod.version_tuple(flavour.version), trt_mod.version_tuple(built_version)
    if manifest.version_compatible and have[:1] == was[:1] and have >= was:
        return  # a version-compatible engine runs on later versions of the same major
    raise EngineMismatchError(
        f"engine {name} was built with {built}, this machine has {flavour.display}: an engine "
        "runs only on the TensorRT version that built it; rebuild it here, or build it with "
        "--version-compatible")


def check_gpu(manifest: EngineManifest, arch: Optional[str], name: str) -> None:
    """This GPU (``sm_XY``; None: no GPU, nothing to check) is one the engine was built for."""
    if arch is None:
        return
    gpu = manifest.gpu or {}
    if gpu.get("hardware_compatible"):
        if int(arch[3:]) < 80:
            raise EngineMismatchError(f"engine {name} is hardware-compatible for Ampere (sm_80) "
                                      f"and later; this GPU is {arch}")
        return
    targets = gpu.get("targets")
    if targets is None:
        return  # TensorRT-RTX's default targets; its runtime validity check says more
    if arch not in targets:
        raise EngineMismatchError(
            f"engine {name} was built for {', '.join(targets)}, this GPU is {arch}: rebuild it "
            f"with --target {arch} (TensorRT-RTX) or on this GPU (TensorRT)")


def check_engine(engine_path: PathLike, flavour: Optional[trt_mod.Flavour] = None,
                 gpu_arch: Optional[str] = _DETECT) -> EngineManifest:
    """Everything about ``engine_path`` that can be checked before deserializing it.

    ``flavour`` defaults to the installed one (no TensorRT: the TensorRT
    check is skipped); ``gpu_arch`` to the GPU present (None: skip).
    """
    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    verify_engine_file(engine_path, manifest)
    flavour = flavour if flavour is not None else trt_mod.installed()
    if flavour is not None:
        check_tensorrt(manifest, flavour, engine_path.name)
    arch = trt_mod.current_gpu_arch() if gpu_arch == _DETECT else gpu_arch
    check_gpu(manifest, arch, engine_path.name)
    return manifest


def needed_plugins(manifest: EngineManifest) -> list[PluginRef]:
    return [PluginRef(p["namespace"], p["name"], p["version"]) for p in manifest.plugins]


def check_plugin_form(manifest: EngineManifest, name: str,
                      driver: Optional[tuple[int, int]] = None) -> Optional[str]:
    """The form of ssmprune's plugins the engine holds (None: no plugin layers), once it
    is known to be loadable here: ``SSMPRUNE_TRT_PLUGINS``, when set, names the same
    form, and an aot engine's PTX is one the CUDA ``driver`` (e.g. (12, 4); None:
    unknown, not checked) accepts."""
    if not manifest.plugins:
        return None
    from ssmprune.plugins.forms import FORM_VAR, FORMS
    from ssmprune.plugins import ptx

    form = manifest.plugin_form
    if form not in FORMS:
        raise EngineFileError(f"engine {name} has plugin layers but its manifest does not say "
                              "which form of ssmprune's plugins (an older ssmprune built it): "
                              "rebuild it with `ssmprune build`")
    asked = os.environ.get(FORM_VAR)
    if asked and asked != form:
        raise EngineMismatchError(
            f"engine {name} holds the {form} form of ssmprune's plugins, but {FORM_VAR}={asked}: "
            f"unset {FORM_VAR} (the engine's own form is used), or rebuild the engine with "
            f"{FORM_VAR}={asked}")
    if form == "aot" and driver is not None:
        try:
            built = ptx.parse(str(manifest.ptx_version))
        except ValueError:
            raise EngineFileError(f"engine {name}'s manifest records no valid ptx_version for "
                                  "its aot plugins: rebuild it with `ssmprune build`") from None
        accepted = ptx.driver_max_ptx(driver)
        if built > accepted:
            raise EngineMismatchError(
                f"engine {name}'s plugin kernels are PTX {ptx.as_text(built)}, and this driver "
                f"(CUDA {driver[0]}.{driver[1]}) loads PTX up to {ptx.as_text(accepted)}: "
                f"rebuild with `ssmprune build --ptx-version {ptx.as_text(accepted)}`, or "
                "update the NVIDIA driver")
    return form


@dataclass
class LoadedEngine:
    """A deserialized engine with the runtime that must outlive it."""

    engine: Any
    runtime: Any
    manifest: EngineManifest
    flavour: trt_mod.Flavour


def load_engine(engine_path: PathLike, flavour: Optional[trt_mod.Flavour] = None
                ) -> LoadedEngine:
    """Check, register the plugins it needs, and deserialize ``engine_path`` on this GPU."""
    engine_path = Path(engine_path)
    arch = trt_mod.current_gpu_arch()
    if arch is None:
        raise NoGpuError(f"running engine {engine_path.name} needs an NVIDIA GPU, and none is "
                         "usable here")
    flavour = flavour or trt_mod.load()
    manifest = check_engine(engine_path, flavour, arch)
    from ssmprune.plugins.ptx import driver_cuda_version

    form = check_plugin_form(manifest, engine_path.name, driver_cuda_version())
    if form == "v3":  # an aot engine carries its kernels: nothing to register
        register_plugins(flavour, needed_plugins(manifest), form=form,
                         way_out="install ssmprune's TensorRT plugins, or rebuild the engine "
                                 "with --no-plugins")
    logger = trt_mod.make_logger(flavour)
    runtime = flavour.trt.Runtime(logger)
    if manifest.version_compatible and hasattr(runtime, "engine_host_code_allowed"):
        runtime.engine_host_code_allowed = True  # the engine carries its own lean runtime
    data = engine_path.read_bytes()
    if hasattr(runtime, "get_engine_validity"):  # TensorRT-RTX says why before loading
        validity, diagnostics = runtime.get_engine_validity(data)
        if validity == flavour.trt.EngineValidity.INVALID:
            reasons = [m for m in flavour.trt.EngineInvalidityDiagnostics.__members__
                       if int(diagnostics) & int(getattr(flavour.trt.EngineInvalidityDiagnostics,
                                                         m))]
            raise EngineMismatchError(f"{flavour.display} cannot run engine {engine_path.name} "
                                      f"here: {', '.join(reasons) or 'invalid'}")
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        errors = logger.errors_since(0)
        raise EngineFileError(f"{flavour.display} could not deserialize {engine_path.name}: "
                              f"{errors[-1] if errors else 'no reason given'}")
    return LoadedEngine(engine, runtime, manifest, flavour)


class EngineRunner:
    """Runs an engine on CUDA tensors: ``activate()``, ``infer(feed)``, ``deactivate()``."""

    def __init__(self, engine_path: PathLike):
        self.engine_path = Path(engine_path)
        self.loaded: Optional[LoadedEngine] = None
        self.context = None

    def activate(self) -> "EngineRunner":
        self.loaded = load_engine(self.engine_path)
        self.context = self.loaded.engine.create_execution_context()
        return self

    def __enter__(self) -> "EngineRunner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def deactivate(self) -> None:
        self.context = self.loaded = None

    def infer(self, feed: dict[str, Any]) -> dict[str, Any]:
        """``{input name: tensor}`` -> ``{output name: CUDA tensor}``."""
        import torch

        from ssmprune.errors import InputShapeError

        engine, trt = self.loaded.engine, self.loaded.flavour.trt
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16,
                  trt.bfloat16: torch.bfloat16, trt.int32: torch.int32, trt.int64: torch.int64,
                  trt.int8: torch.int8, trt.bool: torch.bool, trt.uint8: torch.uint8}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        missing = [n for n in inputs if n not in feed]
        if missing:
            raise InputShapeError(f"engine inputs {missing} not given (it takes {inputs})")
        buffers = {}
        for name in inputs:  # inputs first: output shapes follow from them
            t = torch.as_tensor(feed[name]).to("cuda", dtypes[engine.get_tensor_dtype(name)])
            buffers[name] = t.contiguous()
            self.context.set_input_shape(name, tuple(t.shape))
        for name in names:
            if name not in buffers:
                buffers[name] = torch.empty(tuple(self.context.get_tensor_shape(name)),
                                            dtype=dtypes[engine.get_tensor_dtype(name)],
                                            device="cuda")
            self.context.set_tensor_address(name, buffers[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.engine_path.name}")
        stream.synchronize()
        return {n: buffers[n] for n in names if n not in inputs}
