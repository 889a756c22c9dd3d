"""A TARGET of ``bench`` / ``eval`` / ``sweep``: something runnable, with its preprocessing.

    model name      ``vim_s``: the PyTorch reference (``models.construct.build_model``),
                    pruned by the pruning options when given; runtime ``torch`` (CPU)
    pruning preset  ``vim_s_paper``: its model, pruned by it; runtime ``torch``
    export          a folder of ``ssmprune export`` / ``calibrate``, or its model.onnx:
                    ONNX Runtime through ``parity.runners.onnxrt_session``; runtime
                    ``onnxrt`` (and ``torch``: the reference rebuilt from the manifest)
    engine          a file of ``ssmprune build``: TensorRT, runtime ``trt`` (needs a GPU)

A model name wins over a folder of that name (write ``./NAME``), as in ``run``.
Exported files are checked against their manifests (``predict.load_deployed``).

``Target.config`` is what preprocessing needs (img_size, in_chans, mean, std), a
plain dict for every kind. An exported file runs the batches of its manifest
(``batch_range``: one static batch, or 1 to max_batch); ``batch_skip`` is the one
place that decides whether a target runs at a batch.

Dimension glossary: n inputs, b batch, c in_chans, s img_size, k classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ssmprune.errors import ConfigError

RUNTIMES = ("torch", "onnxrt", "trt")
CONFIG_KEYS = ("img_size", "in_chans", "mean", "std")


@dataclass
class Target:
    """One thing to measure.

    name: the TARGET text as given.
    kind: "model" (PyTorch, by name or preset), "export" or "engine".
    model: the registered model name; prune: the preset name, "custom", or None (dense).
    precision: fp32, fp16, int8, fp8. weights: where the weights come from, one line.
    config: img_size, in_chans, mean, std (preprocessing). num_classes: k.
    input_name: the input's name; input_shape: (b, c, s, s) of an exported file at its
        default batch, else None; batch_range: (smallest, largest) batch an exported file
        runs ((b, b) for a static batch b, (1, max) for a dynamic one), None for a model.
    runtimes: the runtimes it can run in, its own first.
    file_bytes: size of the exported file or engine; for a model, its fp32 weights.
    gflops: the model's GFLOPs (models only; None for files).
    """

    name: str
    kind: str
    model: str
    prune: Optional[str]
    precision: str
    weights: str
    config: dict[str, Any]
    num_classes: int
    input_name: str
    input_shape: Optional[tuple] = None
    batch_range: Optional[tuple[int, int]] = None
    runtimes: tuple[str, ...] = ("torch",)
    file_bytes: int = 0
    gflops: Optional[float] = None
    module: Any = None  # the nn.Module of a model target
    onnx_file: Optional[Path] = None
    deployed: Any = None  # predict.Deployed of an export or engine
    _reference: Any = field(default=None, repr=False)

    @property
    def static_batch(self) -> Optional[int]:
        """The one batch a static exported file runs; None for a model or a dynamic batch."""
        low, high = self.batch_range or (None, None)
        return low if low is not None and low == high else None

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        s = self.config["img_size"]
        return (self.config["in_chans"], s, s)

    def describe(self) -> dict[str, Any]:
        """The JSON record of the target (``bench`` / ``eval`` / ``sweep`` output)."""
        return {"name": self.name, "kind": self.kind, "model": self.model, "prune": self.prune,
                "precision": self.precision, "weights": self.weights,
                "static_batch": self.static_batch,
                "batch_range": None if self.batch_range is None else list(self.batch_range),
                "runtimes": list(self.runtimes),
                "file_mib": round(self.file_bytes / 2**20, 3),
                "gflops": self.gflops, "img_size": self.config["img_size"],
                "num_classes": self.num_classes}

    def open(self, runtime: str, threads: Optional[int] = None) -> "Runner":
        """A runner of this target in ``runtime`` (one of ``self.runtimes``)."""
        if runtime not in self.runtimes:
            raise ConfigError(f"{self.name} ({self.kind}) does not run in {runtime}; it runs in "
                              f"{', '.join(self.runtimes)}")
        if runtime == "torch":
            if self.module is None:
                from ssmprune.exporter.export import model_from_manifest

                if self._reference is None:
                    self._reference = model_from_manifest(self.deployed.manifest).eval()
                return TorchRunner(self._reference)
            return TorchRunner(self.module)
        if runtime == "onnxrt":
            return OnnxrtRunner(self.onnx_file, self.input_name, threads)
        return EngineRunner(self.deployed)


def batch_skip(target: Target, batch: int) -> Optional[str]:
    """Why ``target`` cannot run at ``batch`` (one line), or None when it can.

    The one batch check of the measurement commands: a model runs any batch; an
    exported file the batches of its manifest's range (``Manifest.batch_range``: its
    static batch, or 1 to ``max_batch`` for a dynamic one).
    """
    if target.batch_range is None:
        return None
    low, high = target.batch_range
    if low <= batch <= high:
        return None
    if low == high:
        return (f"{target.name}: static batch {low} (its manifest's input shape); batch "
                f"{batch} skipped (export again with --batch {batch})")
    return (f"{target.name}: dynamic batch {low} to {high}; batch {batch} skipped (export "
            f"again with --batch dynamic:{batch})")


class Runner:
    """Runs one target on numpy inputs (b, c, s, s) float32 -> logits (b, k) float32."""

    where: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TorchRunner(Runner):
    """A PyTorch module on the CPU, in inference mode."""

    def __init__(self, module):
        import torch

        self.module, self.torch = module.eval(), torch
        self.where = f"PyTorch {torch.__version__}, CPU, {torch.get_num_threads()} threads"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(np.ascontiguousarray(x))).float().numpy()


class OnnxrtRunner(Runner):
    """An ONNX Runtime session made by ``parity.runners.onnxrt_session`` (exact int8)."""

    def __init__(self, path: Path, input_name: str, threads: Optional[int]):
        import onnxruntime as ort

        from ssmprune.parity.runners import onnxrt_session

        self.session = onnxrt_session(path, threads or 0)
        self.input_name = input_name
        self.where = f"ONNX Runtime {ort.__version__}, {self.session.get_providers()[0]}" + (
            f", {threads} threads" if threads else "")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]


class EngineRunner(Runner):
    """A TensorRT engine through the parity ``TrtRunner`` (GPU)."""

    def __init__(self, deployed):
        self.runner = deployed.runtime.runner
        self.input_name = deployed.input_name
        self.runner.activate()
        self.where = deployed.where()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.runner.infer({self.input_name: np.ascontiguousarray(x)})
        return next(iter(out.values()))

    def close(self) -> None:
        self.runner.deactivate()


def logits_in_batches(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                      batch: int, fixed: bool) -> np.ndarray:
    """Logits (n, k) of ``x`` (n, c, s, s) in forwards of ``batch``; with ``fixed`` (a static
    batch) the last is padded (``calibration.data.batches``) and the padding dropped."""
    from ssmprune.calibration.data import batches

    outs = [run(chunk) for chunk in batches(x, batch, pad=fixed)]
    return np.concatenate(outs)[:len(x)] if outs else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class ModelOptions:
    """What builds a model target: checkpoint, seed, pruning (a preset name, a
    PruneConfig or None) and ``create_model`` overrides (img_size)."""

    checkpoint: Optional[str] = None
    seed: int = 0
    prune: Any = None
    overrides: dict = field(default_factory=dict)

    @property
    def given(self) -> bool:
        return self.checkpoint is not None or self.prune is not None or bool(self.overrides)


def is_model_spec(spec: str) -> bool:
    """Whether TARGET text names a model or a pruning preset (not a file)."""
    from ssmprune.models import model_names
    from ssmprune.pruning.config import PRESETS

    return spec in model_names() or spec in PRESETS


def check_model_options(specs: list[str], options: ModelOptions) -> None:
    """Model options given but no model target to take them: a ``ConfigError`` (they
    would be silently ignored)."""
    if options.given and not any(is_model_spec(s) for s in specs):
        files = "is an exported file" if len(specs) == 1 else "are exported files"
        raise ConfigError(f"--checkpoint, --img-size and the pruning options build a model by "
                          f"name; {', '.join(specs)} {files} whose weights, size and pruning "
                          "are fixed: drop them")


def resolve_targets(specs: list[str], options: ModelOptions = ModelOptions()) -> list[Target]:
    """Every TARGET text as a ``Target`` (``check_model_options`` first)."""
    check_model_options(specs, options)
    return [resolve_target(s, options) for s in specs]


def resolve_target(spec: str, options: ModelOptions = ModelOptions()) -> Target:
    """One TARGET text (see the module docstring) as a ``Target``."""
    from ssmprune.models import model_names
    from ssmprune.pruning.config import PRESETS

    if spec in model_names():
        return model_target(spec, spec, options)
    if spec in PRESETS:
        if options.prune is not None:
            raise ConfigError(f"{spec} is a pruning preset (its model pruned by it); the pruning "
                              "options apply to model names: drop them or name the model")
        model, _ = PRESETS[spec]
        return model_target(spec, model, ModelOptions(options.checkpoint, options.seed, spec,
                                                      options.overrides))
    return file_target(spec)


def model_target(name: str, model: str, options: ModelOptions) -> Target:
    """The PyTorch reference of ``model`` built as ``options`` say."""
    from ssmprune.models.construct import build_model
    from ssmprune.models.summary import describe

    net, weights = build_model(model, options.checkpoint, options.seed, prune=options.prune,
                               **options.overrides)
    cfg = net.config
    facts = describe(net)
    prune = options.prune if isinstance(options.prune, str) else (
        "custom" if getattr(net, "prune", None) is not None else None)
    return Target(name=name, kind="model", model=model, prune=prune, precision="fp32",
                  weights=weights, config={k: _plain(getattr(cfg, k)) for k in CONFIG_KEYS},
                  num_classes=int(cfg.num_classes), input_name="images",
                  runtimes=("torch",), file_bytes=sum(p.numel() * 4 for p in net.parameters()),
                  gflops=facts["gflops"], module=net)


def file_target(spec: str) -> Target:
    """An export folder, its .onnx, or an engine, checked (``predict.load_deployed``)."""
    from ssmprune.exporter.manifest import MODEL_FILE
    from ssmprune.predict import load_deployed

    deployed = load_deployed(spec)
    m = deployed.manifest
    path = Path(spec)
    prune = (m.prune_preset or "custom") if m.prune else None
    weights = (f"checkpoint {Path(m.weights['checkpoint']).name}" if "checkpoint" in m.weights
               else f"seeded random weights (seed {m.weights.get('seed')})")
    num_classes = int(m.outputs[0]["shape"][-1])
    common = dict(name=spec, model=m.model, prune=prune, weights=weights,
                  config={k: m.config[k] for k in CONFIG_KEYS}, num_classes=num_classes,
                  input_name=deployed.input_name, input_shape=tuple(deployed.input_shape),
                  batch_range=tuple(deployed.batch_range), deployed=deployed)
    if path.is_dir() or path.suffix == ".onnx":
        onnx_file = path / MODEL_FILE if path.is_dir() else path
        return Target(kind="export", precision=m.precision, runtimes=("onnxrt", "torch"),
                      file_bytes=onnx_file.stat().st_size, onnx_file=onnx_file, **common)
    return Target(kind="engine", precision=deployed.runtime.precision, runtimes=("trt",),
                  file_bytes=path.stat().st_size, **common)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
