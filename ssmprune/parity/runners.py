"""Polygraphy runners for the runtimes parity compares.

Polygraphy's ``PytRunner`` moves the model to CUDA unconditionally, so the
PyTorch reference runs in ``TorchRunner`` (any device, inference mode).
``SessionFromOnnx`` offers no hook for session options, so the ONNX Runtime
session is built here and handed to Polygraphy's ``OnnxrtRunner``.

``RUNNER_FACTORIES`` maps each ``--runtimes`` name to a factory that builds
its runner for an export; another runtime (TensorRT) registers itself with
``@register_runtime("tensorrt")``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType
from torch import nn

if TYPE_CHECKING:
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


def onnxrt_session(path: Path | bytes, threads: int = 0, optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` on the CPU, with our session options.

    path: the ONNX file, or its serialised bytes.
    threads: intra-op threads, 0 for ONNX Runtime's default.
    optimization: "all", "extended", "basic" or "disabled" graph optimisation.
    """
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnxrt_runner(path: Path, threads: int = 0, name: str = "onnxrt") -> OnnxrtRunner:
    """Polygraphy's ``OnnxrtRunner`` over a session from ``onnxrt_session``."""
    return OnnxrtRunner(lambda: onnxrt_session(path, threads), name=name)


@dataclass(frozen=True)
class RunnerContext:
    """What a runtime's runner factory gets: the export and the run's settings."""

    directory: Path
    manifest: Manifest
    checkpoint: Optional[str] = None
    threads: int = 0


RunnerFactory = Callable[[RunnerContext], BaseRunner]
RUNNER_FACTORIES: dict[str, RunnerFactory] = {}


def register_runtime(name: str) -> Callable[[RunnerFactory], RunnerFactory]:
    """Register a runner factory under a ``--runtimes`` name (e.g. ``tensorrt``)."""
    def wrap(factory: RunnerFactory) -> RunnerFactory:
        if name in RUNNER_FACTORIES:
            raise ValueError(f"runtime {name!r} registered twice")
        RUNNER_FACTORIES[name] = factory
        return factory
    return wrap


@register_runtime("torch")
def _torch_runner(ctx: RunnerContext) -> BaseRunner:
    from ssmprune.exporter.export import model_from_manifest

    m = ctx.manifest
    return TorchRunner(model_from_manifest(m, ctx.checkpoint), m.input["name"], m.input["shape"],
                       [o["name"] for o in m.outputs], name="torch")


@register_runtime("onnxrt")
def _onnxrt_runner(ctx: RunnerContext) -> BaseRunner:
    from ssmprune.exporter.manifest import MODEL_FILE

    return onnxrt_runner(ctx.directory / MODEL_FILE, ctx.threads, name="onnxrt")
