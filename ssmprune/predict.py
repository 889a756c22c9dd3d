"""Running a model for ``ssmprune run``: the PyTorch reference, or an exported file.

The reference is built by name (``ssmprune.models.construct``); this module
times it and ranks its classes. An export folder (or its .onnx) runs in ONNX
Runtime and an engine from ``ssmprune build`` in TensorRT, both through the
parity runners (``ssmprune.parity.runners``), with images preprocessed as the
export's manifest says. Exported files have a
static batch: ``timed_batches`` pads the last batch with its last image and
returns only the real images' outputs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ssmprune.errors import BadInputFileError

if TYPE_CHECKING:
    from polygraphy.backend.base import BaseRunner

    from ssmprune.exporter.manifest import Manifest
    from ssmprune.parity.runners import Runtime

@torch.inference_mode()
def timed_forward(model: nn.Module, x: Tensor, repeats: int = 3) -> tuple[Tensor, list[float]]:
    """Run ``model(x)`` once to warm up, then ``repeats`` times; latencies in ms."""
    logits = model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        logits = model(x)
        times.append((time.perf_counter() - start) * 1e3)
    return logits, times


def top_k(logits: Tensor, k: int = 5) -> list[list[tuple[int, float]]]:
    """Per sample, the k best (class index, probability) pairs."""
    probs = logits.float().softmax(-1)
    values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]


def names_a_file(arg: str) -> bool:
    """Whether ``run``'s MODEL argument is a path (export, .onnx, engine) rather than a model name.

    A registered model name wins over a folder of that name (write ``./NAME``);
    anything else that exists, has a path separator or a file suffix is a path.
    """
    from ssmprune.models import model_names

    if arg in model_names():
        return False
    return os.path.exists(arg) or "/" in arg or Path(arg).suffix != ""


@dataclass
class Deployed:
    """An exported model ready to run outside PyTorch.

    path: the export folder, .onnx or engine file given.
    manifest: its export manifest (an engine's: the export it was built from);
        images are preprocessed by ``manifest.config`` (img_size, mean, std).
    runtime: the runner, its precision and what runs it.
    label: "ONNX Runtime 1.32.0" before its provider; "" for an engine, whose
        provider names the TensorRT flavour and GPU.
    input_name, input_shape: the input at its default batch, (batch, c, h, w) fp32.
    batch_range: (smallest, largest) batch it runs: (b, b) for a static batch b;
        a dynamic-batch export's 1 to its max, an engine's profile.
    """

    path: Path
    manifest: Manifest
    runtime: Runtime
    label: str
    input_name: str
    input_shape: tuple[int, ...]
    batch_range: tuple[int, int]

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def dynamic(self) -> bool:
        return self.batch_range[0] != self.batch_range[1]

    def batch_for(self, n: int) -> int:
        """The batch to run ``n`` images in: the static batch, or n within the range."""
        low, high = self.batch_range
        return min(max(n, low), high)

    def describe(self) -> str:
        """One line: model, pruning, precision, batch and weights."""
        m = self.manifest
        pruned = f"pruned ({m.prune_preset or 'custom'})" if m.prune else "dense"
        weights = (f"weights from {m.weights['checkpoint']}" if "checkpoint" in m.weights
                   else f"seeded random weights (seed {m.weights.get('seed')})")
        batch = (f"dynamic batch {self.batch_range[0]} to {self.batch_range[1]}" if self.dynamic
                 else f"static batch {self.batch}")
        return f"{self.path}: {m.model} {pruned}, {self.runtime.precision}, {batch}, {weights}"

    def where(self) -> str:
        """What ran it, e.g. "ONNX Runtime 1.32.0, CPUExecutionProvider" or
        "TensorRT 10.13.0.35 on sm_90"; known once the runner has been activated."""
        return ", ".join(p for p in (self.label, self.runtime.provider()) if p)


def load_deployed(path: str | os.PathLike) -> Deployed:
    """An export folder or its .onnx (ONNX Runtime), or an engine file (TensorRT).

    The export's files are checked against the sha256 in its manifest; an
    engine against its manifest, this machine's TensorRT and GPU. Bad input
    is a one-line ``SsmpruneError``.
    """
    path = Path(path)
    if not os.path.exists(path):  # os.path: False for a name too long, where Path raises
        raise BadInputFileError(f"{path} does not exist (expected a model name, an export "
                                "folder, an .onnx file or an engine)")
    if path.is_dir() or path.suffix == ".onnx":
        return _onnx_deployed(path)
    return _engine_deployed(path)


def _onnx_deployed(path: Path) -> Deployed:
    import onnxruntime as ort

    from ssmprune.exporter.manifest import read_export
    from ssmprune.parity.runners import RUNNER_FACTORIES, RunnerContext

    # The manifest's schema, every file's size and sha256, model.onnx against the manifest.
    directory, manifest = read_export(path)
    runtime = RUNNER_FACTORIES["onnxrt"](RunnerContext(directory, manifest))
    return Deployed(path, manifest, runtime, f"ONNX Runtime {ort.__version__}",
                    manifest.input["name"], manifest.input_shape(), manifest.batch_range())


def _engine_deployed(path: Path) -> Deployed:
    from ssmprune.engine.manifest import manifest_path
    from ssmprune.engine.runtime import check_engine
    from ssmprune.exporter.manifest import Manifest
    from ssmprune.parity.runners import engine_runtime

    engine = check_engine(path)  # manifest, size and sha256, TensorRT version, GPU architecture
    if engine.source is None:
        raise BadInputFileError(f"engine {path} was built from a bare .onnx file: its manifest "
                                "has no export manifest to preprocess images by; build it from "
                                "an `ssmprune export` folder")
    manifest = Manifest.from_dict(engine.source, f"{manifest_path(path)} (its source export)")
    runtime = engine_runtime(path, engine)
    return Deployed(path, manifest, runtime, "", runtime.runner.input_name,
                    runtime.runner.input_shape, engine.batch_limits())


def timed_batches(runner: BaseRunner, input_name: str, x: Tensor, batch: int,
                  repeats: int = 3) -> tuple[np.ndarray, list[float]]:
    """Run ``x`` (n, c, h, w) fp32 through a Polygraphy runner in batches of ``batch``.

    The images go in batches of ``batch``, the last padded by repeating its
    last image. One warm-up run, one run per batch, then ``repeats`` timed runs
    of the first batch (the runner's own inference time, in ms). Returns the
    first output for the n real images, (n, ...), and the latencies.
    """
    n = x.shape[0]
    pad = -n % batch
    if pad:
        x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
    feeds = [{input_name: x[i:i + batch].contiguous().numpy()} for i in range(0, len(x), batch)]
    with runner:
        runner.infer(feeds[0])
        outputs = [next(iter(runner.infer(feed).values())) for feed in feeds]
        times = []
        for _ in range(repeats):
            runner.infer(feeds[0])
            times.append(runner.last_inference_time() * 1e3)
    return np.concatenate(outputs)[:n], times
