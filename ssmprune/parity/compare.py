"""``ssmprune parity``: PyTorch vs ONNX Runtime (vs TensorRT) on the same inputs.

The runners run under Polygraphy's ``Comparator.run`` on random inputs and
real photos; the metrics come from its ``RunResults``, per runtime and
output, against the first runtime (the reference):

    max_abs   max |actual - reference|
    mean_abs  mean |actual - reference|
    max_rel   max over samples of max |actual - reference| / max |reference|
    top1      fraction of samples whose arg-max class agrees

Tolerances come from ``tolerances.TOLERANCES`` by the file's precision (the
manifest's, which ``read_export`` checks against the ONNX file); a
comparison with a TensorRT engine built at another precision than its export
(e.g. fp16 builder flags) is judged by the engine's. Every output of every
runtime is reported before the verdict, with what ran each runtime.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ssmprune.errors import BadInputFileError, ConfigError, InputShapeError
from ssmprune.exporter.manifest import Manifest, checkpoint_in_export, read_export
from ssmprune.parity.tolerances import tolerance_for

RUNTIMES = ("torch", "onnxrt")  # the default comparison; runners.RUNNER_FACTORIES has all
ENGINE_RUNTIME = "trt"
DEFAULT_SAMPLES = 16
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class Comparison:
    """One runtime against the reference on one output, over every sample."""

    runtime: str
    reference: str
    output: str
    max_abs: float
    mean_abs: float
    max_rel: float
    top1_agreement: float
    samples: int
    tolerance: str
    passed: bool
    precision: str  # the tolerance table's row it was judged by


@dataclass
class ParityReport:
    """The verdict, every comparison, and what ran each runtime.

    providers: runtime -> what ran it: the torch device, the ONNX Runtime
    execution provider, the TensorRT flavour and GPU.
    """

    passed: bool
    comparisons: list[Comparison]
    precision: str
    batch: int
    inputs: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    providers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"passed": self.passed,
                "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
                "precision": self.precision, "batch": self.batch, "inputs": self.inputs,
                "sources": self.sources, "providers": self.providers}


def _image_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if os.path.isdir(p):  # os.path: False for a name too long, where Path raises
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise BadInputFileError(f"{p} holds no image files")
            files += found
        else:
            files.append(p)
    return files


def parity_samples(manifest: Manifest, images: Sequence[str] = (), samples: int = DEFAULT_SAMPLES,
                   seed: int = 0, batch: Optional[int] = None
                   ) -> tuple[np.ndarray, dict[str, int], list[str]]:
    """Inputs for a parity run: real photos and seeded random images.

    Without ``images``, half of ``samples`` are photos scikit-image ships
    (``SAMPLE_PHOTOS``, mirrored after the first eight), the rest random normal
    images; with ``images`` (files or directories), all of them plus random
    ones up to ``samples``. The total is rounded up to whole batches with
    random ones. Returns (n, c, h, w) fp32, counts by kind, photo names.
    """
    import torch

    from ssmprune.images import SAMPLE_PHOTOS, load_image, preprocess, sample_photo

    cfg = manifest.config
    c, size = cfg["in_chans"], cfg["img_size"]
    real, names = [], []
    if images:
        if c != 3:
            raise InputShapeError(f"images are RGB but {manifest.model} takes {c} channels")
        for f in _image_files(images):
            real.append(preprocess(load_image(f), size, cfg["mean"], cfg["std"]))
            names.append(str(f))
    elif c == 3:
        for i in range((samples + 1) // 2):
            name = SAMPLE_PHOTOS[i % len(SAMPLE_PHOTOS)]
            x = preprocess(sample_photo(name), size, cfg["mean"], cfg["std"])
            flip = (i // len(SAMPLE_PHOTOS)) % 2 == 1
            real.append(x.flip(-1) if flip else x)
            names.append(f"skimage:{name}" + (" (mirrored)" if flip else ""))
    batch = manifest.batch if batch is None else batch
    total = max(samples, len(real))
    total = -(-total // batch) * batch
    generator = torch.Generator().manual_seed(seed)
    random = torch.randn((total - len(real), c, size, size), generator=generator)
    x = torch.cat([torch.stack(real), random]) if real else random
    return x.numpy(), {"real": len(real), "random": total - len(real)}, names


def _compare(runtime: str, reference: str, output: str, actual: np.ndarray,
             expected: np.ndarray, precision: str) -> Comparison:
    """Metrics of one output over all samples; arrays are (samples, ...)."""
    a = actual.reshape(actual.shape[0], -1).astype(np.float64)
    e = expected.reshape(expected.shape[0], -1).astype(np.float64)
    diff = np.abs(a - e)
    scale = np.maximum(np.abs(e).max(axis=1), 1e-12)
    rel = diff.max(axis=1) / scale  # per sample
    max_rel = float(rel.max())
    top1 = float((a.argmax(axis=1) == e.argmax(axis=1)).mean())
    tol = tolerance_for(precision, output)
    ok = ((tol.max_rel is None or float((rel <= tol.max_rel).mean()) >= tol.share)
          and (tol.top1 is None or top1 >= tol.top1)
          and bool(np.isfinite(a).all()))
    return Comparison(runtime, reference, output, float(diff.max()), float(diff.mean()), max_rel,
                      top1, int(a.shape[0]), tol.describe(), ok, precision)


def _judged_precision(runtime: str, reference: str, precisions: dict[str, str],
                      export_precision: str) -> str:
    """The precision a comparison is judged by: a side that does not run at the export's own
    precision (an engine built with fp16 flags) sets it, whichever side it is on."""
    other = [precisions[r] for r in (runtime, reference) if precisions[r] != export_precision]
    return other[0] if other else export_precision


def run_parity(path: str | Path, images: Sequence[str] = (),
               runtimes: Sequence[str] = RUNTIMES, samples: int = DEFAULT_SAMPLES,
               checkpoint: Optional[str] = None, batch: Optional[int] = None,
               threads: int = 0, seed: int = 0, engine: Optional[str | Path] = None
               ) -> ParityReport:
    """Compare ``runtimes`` on the export at ``path``; the first runtime is the reference.

    ``engine`` is the TensorRT engine the ``trt`` runtime runs, built from
    this export (its manifest's ONNX sha256 must be the export's).
    Raises ``SsmpruneError`` for bad input (no manifest, sha256 mismatch, a
    file not written by ssmprune, a batch the file was not exported for,
    unknown runtimes, an engine of another ONNX, no GPU or TensorRT for
    ``trt``); a failed comparison is reported with ``passed=False``.
    """
    from ssmprune.parity.runners import RUNNER_FACTORIES, RunnerContext

    unknown = [r for r in runtimes if r not in RUNNER_FACTORIES]
    if unknown or len(runtimes) < 2 or len(set(runtimes)) != len(runtimes):
        raise ConfigError(f"--runtimes needs two or more of {', '.join(RUNNER_FACTORIES)} "
                          f"(the first is the reference), got {','.join(runtimes)}")
    if engine is not None and ENGINE_RUNTIME not in runtimes:
        raise ConfigError(f"--engine is run by the {ENGINE_RUNTIME} runtime: add it, e.g. "
                          f"--runtimes torch,onnxrt,{ENGINE_RUNTIME}")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    # The manifest is checked against the file before it picks a tolerance row: read_export
    # refuses a precision, input or output model.onnx does not have.
    directory, manifest = read_export(path)
    if checkpoint is None:
        in_folder = checkpoint_in_export(directory, manifest)
        checkpoint = str(in_folder) if in_folder is not None else None
    if batch is not None and not manifest.dynamic and batch != manifest.batch:
        raise InputShapeError(f"{directory} was exported for batch {manifest.batch}, not {batch}; "
                              f"export it again with --batch {batch} (or --batch dynamic)")
    b = manifest.check_batch(manifest.batch if batch is None else batch, str(directory))
    # Every runtime is set up (and refused, e.g. trt without a GPU) before any of them runs.
    context = RunnerContext(directory, manifest, checkpoint, threads,
                            Path(engine) if engine is not None else None, b)
    built = {runtime: RUNNER_FACTORIES[runtime](context) for runtime in runtimes}
    x, counts, names = parity_samples(manifest, images, samples, seed, b)
    input_name = manifest.input["name"]
    feeds = [OrderedDict([(input_name, x[i:i + b])]) for i in range(0, len(x), b)]

    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        results = Comparator.run([built[r].runner for r in runtimes], data_loader=feeds)
    outputs = {name: {o: np.concatenate([it[o] for it in iterations])
                      for o in iterations[0].keys()}
               for name, iterations in results}
    reference = runtimes[0]
    precisions = {r: built[r].precision for r in runtimes}
    comparisons = [
        _compare(runtime, reference, output, outputs[runtime][output],
                 outputs[reference][output],
                 _judged_precision(runtime, reference, precisions, manifest.precision))
        for runtime in runtimes[1:] for output in outputs[reference]]
    return ParityReport(all(c.passed for c in comparisons), comparisons, manifest.precision,
                        b, counts, names,
                        {r: built[r].provider() for r in runtimes})
