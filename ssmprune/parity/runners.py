"""Polygraphy runners for the runtimes parity compares (and ``ssmprune run`` uses).

Polygraphy's ``PytRunner`` moves the model to CUDA unconditionally, so the
PyTorch reference runs in ``TorchRunner`` (any device, inference mode).
``SessionFromOnnx`` offers no hook for session options or providers, so the
ONNX Runtime session is built here (``onnxrt_session``, CUDA when there is one,
see ``onnxrt_providers``) and handed to Polygraphy's ``OnnxrtRunner``; every
ssmprune session (parity, ``run``, the calibration report, the benchmarks) is
made by ``onnxrt_session``, so all run int8 Q/DQ with the same exact arithmetic
(``EXACT_INT8``).
Polygraphy's ``TrtRunner`` imports ``tensorrt`` and cannot load a TensorRT-RTX
engine nor check it against its manifest, so ``TrtRunner`` here wraps
``ssmprune.engine.runtime.EngineRunner``.

``RUNNER_FACTORIES`` maps each ``--runtimes`` name (``torch``, ``onnxrt``,
``trt``) to a factory that builds its ``Runtime`` (runner, precision, what ran
it) for an export; a factory registers with ``@register_runtime(name)``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType
from torch import nn

from ssmprune.errors import BadInputFileError

if TYPE_CHECKING:
    from ssmprune.engine.manifest import EngineManifest
    from ssmprune.exporter.manifest import Manifest


class TorchRunner(BaseRunner):
    """Runs a PyTorch module on numpy feeds; one input, named outputs.

    model: maps a (batch, ...) tensor to one tensor or a tuple of them.
    input_name / input_shape / output_names describe the feeds and results.
    """

    def __init__(self, model: nn.Module, input_name: str, input_shape: Sequence[int],
                 output_names: Sequence[str], device: str = "cpu", name: Optional[str] = None):
        super().__init__(name=name, prefix="torch-runner")
        self.model, self.device = model, torch.device(device)
        self.input_name, self.input_shape = input_name, tuple(input_shape)
        self.output_names = list(output_names)

    def activate_impl(self) -> None:
        self.model = self.model.to(self.device).eval()

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(self.input_name, DataType.FLOAT32, self.input_shape)

    def infer_impl(self, feed_dict) -> OrderedDict:
        x = torch.as_tensor(np.ascontiguousarray(feed_dict[self.input_name]), device=self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model(x)
        self.inference_time = time.perf_counter() - start  # Polygraphy sums these
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return OrderedDict((name, t.detach().float().cpu().numpy())
                           for name, t in zip(self.output_names, outs))

    def deactivate_impl(self) -> None:
        pass


CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def onnxrt_providers() -> list[Any]:
    """ONNX Runtime execution providers to ask for, best first.

    CUDA (the ``[gpu]`` extra's onnxruntime-gpu) when ONNX Runtime offers it
    and torch sees a CUDA GPU, then CPU; else CPU alone. Returns provider
    names, or ``(name, options)`` pairs.
    """
    import onnxruntime as ort

    if CUDA_PROVIDER in ort.get_available_providers() and torch.cuda.is_available():
        # The CUDA provider allows TF32 matmuls and convolutions by default: about 1e-3
        # relative error, ten times the fp32 parity tolerance.
        return [(CUDA_PROVIDER, {"use_tf32": "0"}), CPU_PROVIDER]
    return [CPU_PROVIDER]


# ONNX Runtime fuses DequantizeLinear -> MatMul into an int8 kernel (u8 activations x s8
# weights). On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) its MLAS kernel adds the
# products in pairs saturated at int16 (vpmaddubsw), so a Q/DQ file's results depend on the
# machine: vim_digits_top agreed 96.4 % with fp32 on an AVX2-only EPYC, 99.2 % with VNNI
# (benchmarks/RESULTS.md). This key makes ONNX Runtime widen the weights to u8 on those CPUs
# and use its u8 x u8 kernel, which accumulates in int32 like VNNI, ARM and TensorRT; on
# other CPUs (and other providers) it changes nothing.
EXACT_INT8 = {"session.x64quantprecision": "1"}


def onnxrt_options(threads: int = 0, optimization: str = "all"):
    """``onnxruntime.SessionOptions`` of every ssmprune session (see ``onnxrt_session``)."""
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    for key, value in EXACT_INT8.items():
        options.add_session_config_entry(key, value)
    return options


def onnxrt_session(path: Path | bytes, threads: int = 0, optimization: str = "all",
                   providers: Optional[Sequence[Any]] = None):
    """An ``onnxruntime.InferenceSession`` with our options (``onnxrt_options``), in a
    ``CheckedSession``.

    path: the ONNX file, or its serialised bytes.
    threads: intra-op threads, 0 for ONNX Runtime's default.
    optimization: "all", "extended", "basic" or "disabled" graph optimisation.
    providers: execution providers, ``onnxrt_providers()`` for None.
    ``session.get_providers()[0]`` says which provider runs it (ONNX Runtime
    falls back to the CPU when the CUDA provider cannot start).
    """
    import onnxruntime as ort

    model = path if isinstance(path, bytes) else str(path)
    name = "the ONNX model" if isinstance(path, bytes) else str(path)
    try:
        session = ort.InferenceSession(model, onnxrt_options(threads, optimization),
                                       providers=list(providers or onnxrt_providers()))
    except _ort_errors() as err:
        # The file's fault (a broken graph, an op ONNX Runtime lacks), which passed the
        # manifest's checks: e.g. a renamed tensor whose sha256 was recorded again.
        raise BadInputFileError(f"ONNX Runtime cannot load {name}: {_reason(err)}") from None
    except UnicodeDecodeError:
        # ONNX Runtime's message quotes a name of the file that is not UTF-8, and its
        # bindings fail to decode the message itself.
        raise BadInputFileError(f"ONNX Runtime cannot load {name}: a name in it is not valid "
                                "UTF-8") from None
    return CheckedSession(session, name)


def _ort_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises for a file it cannot load: a broken graph, or an op it lacks."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    return (ort_errors.InvalidArgument, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf,
            ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.Fail)


# ONNX Runtime raises Fail for these too: the machine's trouble, not the file's.
_MACHINE_TROUBLE = ("failed to allocate", "bad allocation", "out of memory", "cuda", "cublas",
                    "cudnn")


def _reason(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class CheckedSession:
    """An ``onnxruntime.InferenceSession`` whose ``run`` reports the model's failure as
    ``BadInputFileError``: a graph that loads and still cannot run (shapes that only meet
    at run time, e.g. a re-hashed file with a flipped dimension) is the file's fault.
    Memory and device failures stay ONNX Runtime's own errors; everything else
    (``get_inputs``, ``io_binding``, ...) is the session's, unchecked."""

    def __init__(self, session, name: str):
        self._session, self._name = session, name

    def run(self, *args, **kwargs):
        try:
            return self._session.run(*args, **kwargs)
        except _ort_errors() as err:
            if any(word in str(err).lower() for word in _MACHINE_TROUBLE):
                raise
            raise BadInputFileError(f"ONNX Runtime cannot run {self._name}: {_reason(err)}"
                                    ) from None

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):  # a copy or an unpickled one has no _session yet
            raise AttributeError(attribute)
        return getattr(self._session, attribute)


class OnnxrtSessionFromPath:
    """A lazy ``onnxrt_session`` for ``OnnxrtRunner``; remembers the provider that ran it."""

    def __init__(self, path: Path, threads: int = 0):
        self.path, self.threads = path, threads
        self.provider: Optional[str] = None

    def __call__(self):
        session = onnxrt_session(self.path, self.threads)
        self.provider = session.get_providers()[0]
        return session


def require_engine_runtime(engine_path: Path) -> None:
    """Refuse, naming what is missing, when this machine cannot run an engine at all.

    Checked before anything runs (``load_engine`` would find out only after the
    other runtimes), and naming both an absent GPU and an absent TensorRT.
    """
    from ssmprune.engine import trt as trt_mod
    from ssmprune.engine.errors import NoGpuError, TensorRTUnavailableError

    no_gpu = trt_mod.current_gpu_arch() is None
    no_trt = trt_mod.installed() is None
    missing = (["an NVIDIA GPU (torch sees no CUDA device)"] if no_gpu else []) + \
        (["TensorRT (`pip install tensorrt`, the [gpu] extra) or TensorRT-RTX"] if no_trt else [])
    if missing:
        error = NoGpuError if no_gpu else TensorRTUnavailableError
        raise error(f"running engine {engine_path.name} needs {' and '.join(missing)}: "
                    "not found on this machine")


class TrtRunner(BaseRunner):
    """Runs a TensorRT engine (``EngineRunner``) on numpy feeds; outputs come back as CPU numpy.

    input_name / input_shape: the engine's one input, fed as fp32 (the engine
    casts it to its own type). Outputs are fp32 numpy arrays by output name.
    ``provider`` names the TensorRT flavour and GPU once activated.
    """

    def __init__(self, engine_path: Path, input_name: str, input_shape: Sequence[int],
                 name: Optional[str] = None):
        super().__init__(name=name, prefix="trt-runner")
        self.engine_path = Path(engine_path)
        self.input_name, self.input_shape = input_name, tuple(input_shape)
        self.engine = None
        self.provider: Optional[str] = None

    def activate_impl(self) -> None:
        from ssmprune.engine import trt as trt_mod
        from ssmprune.engine.runtime import EngineRunner

        self.engine = EngineRunner(self.engine_path).activate()
        self.provider = f"{self.engine.loaded.flavour.display} on {trt_mod.current_gpu_arch()}"

    def get_input_metadata_impl(self) -> TensorMetadata:
        return TensorMetadata().add(self.input_name, DataType.FLOAT32, self.input_shape)

    def infer_impl(self, feed_dict) -> OrderedDict:
        x = torch.as_tensor(np.ascontiguousarray(feed_dict[self.input_name]))
        start = time.perf_counter()
        outs = self.engine.infer({self.input_name: x})  # copies in, runs, synchronizes
        self.inference_time = time.perf_counter() - start
        return OrderedDict((name, t.float().cpu().numpy()) for name, t in outs.items())

    def deactivate_impl(self) -> None:
        self.engine.deactivate()
        self.engine = None


@dataclass(frozen=True)
class RunnerContext:
    """What a runtime's runner factory gets: the export and the run's settings.

    engine: the TensorRT engine the ``trt`` runtime runs (``--engine``).
    batch: the batch fed (None: the manifest's; a dynamic-batch export runs 1 to its max).
    """

    directory: Path
    manifest: Manifest
    checkpoint: Optional[str] = None
    threads: int = 0
    engine: Optional[Path] = None
    batch: Optional[int] = None


@dataclass
class Runtime:
    """One runtime ready for Polygraphy's ``Comparator.run``.

    runner: its Polygraphy runner.
    precision: the row of the tolerance table its outputs are judged by.
    provider: what ran it (torch device, ONNX Runtime provider, TensorRT and
        GPU); known once the runner has been activated.
    """

    runner: BaseRunner
    precision: str
    provider: Callable[[], str]


RunnerFactory = Callable[[RunnerContext], Runtime]
RUNNER_FACTORIES: dict[str, RunnerFactory] = {}


def register_runtime(name: str) -> Callable[[RunnerFactory], RunnerFactory]:
    """Register a runtime factory under a ``--runtimes`` name (e.g. ``trt``)."""
    def wrap(factory: RunnerFactory) -> RunnerFactory:
        if name in RUNNER_FACTORIES:
            raise ValueError(f"runtime {name!r} registered twice")
        RUNNER_FACTORIES[name] = factory
        return factory
    return wrap


@register_runtime("torch")
def _torch_runner(ctx: RunnerContext) -> Runtime:
    from ssmprune.exporter.export import model_from_manifest

    m = ctx.manifest
    runner = TorchRunner(model_from_manifest(m, ctx.checkpoint), m.input["name"],
                         m.input_shape(ctx.batch), [o["name"] for o in m.outputs], name="torch")
    return Runtime(runner, m.precision, lambda: str(runner.device))


@register_runtime("onnxrt")
def _onnxrt_runner(ctx: RunnerContext) -> Runtime:
    from ssmprune.exporter.manifest import MODEL_FILE

    session = OnnxrtSessionFromPath(ctx.directory / MODEL_FILE, ctx.threads)
    return Runtime(OnnxrtRunner(session, name="onnxrt"), ctx.manifest.precision,
                   lambda: session.provider)


@register_runtime("trt")
def _trt_runner(ctx: RunnerContext) -> Runtime:
    """The engine at ``ctx.engine``, checked against its manifest, this machine and the export."""
    from ssmprune.engine.errors import EngineFileError
    from ssmprune.engine.runtime import check_engine
    from ssmprune.errors import ConfigError
    from ssmprune.exporter.manifest import MODEL_FILE

    if ctx.engine is None:
        raise ConfigError("the trt runtime needs --engine ENGINE (written by `ssmprune build` "
                          f"from {ctx.directory})")
    engine = check_engine(ctx.engine)  # the file's sha256, TensorRT version, GPU architecture
    built_from = engine.onnx.get("sha256")
    onnx_sha = ctx.manifest.files.get(MODEL_FILE, {}).get("sha256")
    if built_from != onnx_sha:
        raise EngineFileError(
            f"engine {ctx.engine} was built from another ONNX (sha256 {str(built_from)[:12]}...) "
            f"than {ctx.directory / MODEL_FILE} ({str(onnx_sha)[:12]}...): build it again with "
            f"`ssmprune build {ctx.directory}`")
    return engine_runtime(ctx.engine, engine, ctx.batch)


def engine_runtime(engine_path: Path, engine: EngineManifest,
                   batch: Optional[int] = None) -> Runtime:
    """The ``trt`` runtime of a checked engine (``check_engine``) fed ``batch`` (None: its
    static batch, or the smallest of its range): refused in one line where this machine
    cannot run engines or the batch is outside the engine's range; judged by the engine's
    precision."""
    (first,) = engine.onnx["inputs"]
    shape = engine.input_shape(batch, engine_path.name)
    require_engine_runtime(engine_path)
    runner = TrtRunner(engine_path, first["name"], shape, name="trt")
    return Runtime(runner, engine.precision, lambda: runner.provider)
