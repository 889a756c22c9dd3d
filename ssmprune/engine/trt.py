"""The one module that imports TensorRT: which flavour is installed, and small helpers.

Two flavours are supported behind one ``Flavour`` object:

- ``tensorrt`` (full TensorRT 10.x / 11.x): the deployment target on GPUs and
  Jetson. Builds for the GPU it runs on; TensorRT 10 takes precision builder
  flags (FP16, BF16), TensorRT 11 is always strongly typed.
- ``tensorrt_rtx`` (TensorRT-RTX, package ``tensorrt_rtx_bindings``): parses
  ONNX and builds engines ahead of time on a machine with no GPU, for target
  compute capabilities given in the builder config. Always strongly typed; no
  timing cache, no version- or hardware-compatible engines, no
  ``add_plugin_v3``.

The rest of the package asks this module for the module object
(``flavour.trt``) and never imports tensorrt itself. Which flavour is used:
``SSMPRUNE_TENSORRT=tensorrt|tensorrt_rtx`` if set, else full TensorRT when
importable, else TensorRT-RTX.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional

from ssmprune.engine.errors import TensorRTUnavailableError

#: flavour name -> Python module that provides it, in order of preference.
FLAVOUR_MODULES = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt_rtx_bindings"}
#: Names shown to people.
DISPLAY_NAMES = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}
ENV_VAR = "SSMPRUNE_TENSORRT"


@dataclass(frozen=True)
class Flavour:
    """An imported TensorRT flavour and what it can do.

    Attributes:
        name: ``"tensorrt"`` or ``"tensorrt_rtx"``.
        trt: the imported module (``tensorrt`` or ``tensorrt_rtx_bindings``).
        version: its version string, e.g. ``"10.13.0.35"`` or ``"1.7.1.116"``.
    """

    name: str
    trt: ModuleType
    version: str

    @property
    def display(self) -> str:
        """``TensorRT 10.13.0.35`` / ``TensorRT-RTX 1.7.1.116``."""
        return f"{DISPLAY_NAMES[self.name]} {self.version}"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    @property
    def always_strongly_typed(self) -> bool:
        """True where the builder has no precision flags (TensorRT >= 11, TensorRT-RTX)."""
        return not hasattr(self.trt.BuilderFlag, "FP16")

    @property
    def builds_without_gpu(self) -> bool:
        """TensorRT-RTX builds ahead of time for target compute capabilities, no GPU needed."""
        return hasattr(self.trt, "ComputeCapability")

    @property
    def has_timing_cache(self) -> bool:
        # TensorRT-RTX keeps the API but documents timing-cache calls as no-ops (since 1.2).
        return not self.is_rtx

    @property
    def has_version_compatible(self) -> bool:
        # TensorRT-RTX has the flag, but building needs libnvinfer_lean.so, which its
        # wheels do not ship: the build fails with "Unable to load library".
        return hasattr(self.trt.BuilderFlag, "VERSION_COMPATIBLE") and not self.is_rtx

    @property
    def has_hardware_compatible(self) -> bool:
        # TensorRT-RTX logs "setHardwareCompatibilityLevel() is unsupported" and ignores it;
        # its engines are portable across the compute capabilities they target instead.
        return hasattr(self.trt, "HardwareCompatibilityLevel") and not self.is_rtx

    @property
    def has_add_plugin_v3(self) -> bool:
        return hasattr(self.trt.INetworkDefinition, "add_plugin_v3")

    @property
    def has_decorator_plugins(self) -> bool:
        """``tensorrt.plugin`` (TensorRT >= 10.6)."""
        return importlib.util.find_spec(f"{self.trt.__name__}.plugin") is not None

    def supported_targets(self) -> list[str]:
        """Compute capabilities an ahead-of-time build can target, as ``sm_XY`` strings."""
        if not self.builds_without_gpu:
            return []
        return [f"sm_{m[2:]}" for m in self.trt.ComputeCapability.__members__
                if m.startswith("SM")]


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.9.0.34"`` -> (10, 9, 0, 34), for comparing TensorRT versions."""
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _import(name: str) -> Optional[Flavour]:
    try:
        module = importlib.import_module(FLAVOUR_MODULES[name])
        version = str(module.__version__)
    except (ImportError, OSError, AttributeError):
        # OSError: the bindings import but their shared libraries do not load.
        return None
    return Flavour(name, module, version)


@functools.lru_cache(maxsize=None)
def _installed(name: Optional[str]) -> Optional[Flavour]:
    if name is not None:
        return _import(name)
    for candidate in FLAVOUR_MODULES:
        flavour = _import(candidate)
        if flavour is not None:
            return flavour
    return None


def installed(name: Optional[str] = None) -> Optional[Flavour]:
    """The TensorRT flavour to use, or None when none is importable.

    ``name`` (or the ``SSMPRUNE_TENSORRT`` environment variable) picks one
    flavour; otherwise full TensorRT is preferred to TensorRT-RTX.
    """
    name = name or os.environ.get(ENV_VAR) or None
    if name is not None and name not in FLAVOUR_MODULES:
        raise TensorRTUnavailableError(
            f"unknown TensorRT flavour {name!r} (from {ENV_VAR}?): "
            f"use one of {', '.join(FLAVOUR_MODULES)}")
    return _installed(name)


def load(name: Optional[str] = None) -> Flavour:
    """Like ``installed`` but raises ``TensorRTUnavailableError`` when nothing is installed."""
    flavour = installed(name)
    if flavour is None:
        wanted = name or os.environ.get(ENV_VAR)
        what = (f"{DISPLAY_NAMES[wanted]} (module {FLAVOUR_MODULES[wanted]})" if wanted
                else "TensorRT (module tensorrt) or TensorRT-RTX (module tensorrt_rtx_bindings)")
        raise TensorRTUnavailableError(
            f"{what} is not installed: `pip install tensorrt-rtx-cu13-libs "
            "tensorrt-rtx-cu13-bindings` builds engines without a GPU (see requirements.txt); "
            "full TensorRT needs `pip install tensorrt` on a machine with an NVIDIA GPU")
    return flavour


def make_logger(flavour: Flavour, echo_level: str = "none") -> Any:
    """A TensorRT logger that records every message and echoes those at ``echo_level`` or worse.

    ``echo_level`` is one of ``error``, ``warning``, ``info``, ``verbose``,
    ``none``. Recorded messages: ``logger.messages``, a list of
    ``(severity_name, text)``; ``logger.errors_since(i)`` gives the error
    texts logged after the first ``i`` messages.
    """
    trt = flavour.trt
    order = ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"]
    echo_upto = {"none": -1, "error": 1, "warning": 2, "info": 3, "verbose": 4}[echo_level]

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, sev, msg):  # noqa: D401  (TensorRT callback)
            name = sev.name if hasattr(sev, "name") else str(sev)
            self.messages.append((name, msg))
            if order.index(name) <= echo_upto and not _is_cpu_noise(msg):
                print(f"[{flavour.display}] [{name[0]}] {msg}", file=sys.stderr, flush=True)

        def errors_since(self, start: int = 0) -> list[str]:
            return [m for s, m in self.messages[start:]
                    if s in ("ERROR", "INTERNAL_ERROR") and not _is_cpu_noise(m)]

    return _Logger()


def _is_cpu_noise(message: str) -> bool:
    """TensorRT-RTX on a machine with no GPU logs CUDA errors it then ignores."""
    return ("CUDA driver version is insufficient" in message
            and "catchCudaError" in message) or "Thread context has not been set" in message


def create_builder(flavour: Flavour, logger: Any) -> Any:
    """A ``Builder``; raises ``TensorRTUnavailableError`` if TensorRT cannot create one."""
    try:
        builder = flavour.trt.Builder(logger)
    except (RuntimeError, TypeError):  # full TensorRT without a usable GPU
        builder = None
    if builder is None:
        raise TensorRTUnavailableError(
            f"{flavour.display} could not create a builder here (full TensorRT needs an "
            "NVIDIA GPU to build; TensorRT-RTX builds without one)")
    return builder


def create_network(flavour: Flavour, builder: Any, strongly_typed: bool) -> Any:
    """An empty network definition, strongly typed if asked (always so where forced)."""
    trt = flavour.trt
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # deprecated no-op in 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return builder.create_network(flags)


def make_progress_monitor(flavour: Flavour, cancelled: Callable[[], Any]) -> Any:
    """A builder progress monitor that cancels the build once ``cancelled()`` is true
    (``step_complete`` returning False); the build then returns None. Keep a reference
    to it for as long as the builder config uses it."""
    trt = flavour.trt

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):  # TensorRT callback
            pass

        def step_complete(self, phase_name, step):  # TensorRT callback
            return not cancelled()

        def phase_finish(self, phase_name):  # TensorRT callback
            pass

    return _Monitor()


def create_parser(flavour: Flavour, network: Any, logger: Any) -> Any:
    """An ONNX parser filling ``network``."""
    return flavour.trt.OnnxParser(network, logger)


def parser_errors(parser: Any) -> list[str]:
    """The parser's errors as readable one-line strings (node, op and description)."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = err.node_name() if hasattr(err, "node_name") else ""
        op = err.node_operator() if hasattr(err, "node_operator") else ""
        where = f"node {node!r} ({op}): " if node or op else ""
        out.append(f"{where}{err.desc()}")
    return out


def plugin_registry(flavour: Flavour) -> Any:
    """The global plugin registry of the flavour."""
    return flavour.trt.get_plugin_registry()


def registered_plugins(flavour: Flavour) -> set[tuple[str, str, str]]:
    """``(namespace, name, version)`` of every creator in the plugin registry."""
    out = set()
    for creator in plugin_registry(flavour).all_creators:
        out.add((str(getattr(creator, "plugin_namespace", "")), str(creator.name),
                 str(creator.plugin_version)))
    return out


def current_gpu_arch() -> Optional[str]:
    """``sm_XY`` of CUDA device 0, or None without a usable NVIDIA GPU.

    Uses torch (a dependency anyway) so no CUDA Python package is needed.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"
