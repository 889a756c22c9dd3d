"""scikit-learn's digits as model inputs: a fixed split, upsampling, normalisation.

The data set is the UCI optical handwritten digits test set that ships inside
scikit-learn (``sklearn.datasets.load_digits``): 1,797 real 8 x 8 scans of
handwritten digits, grey levels 0..16, ten classes of about 180 each. Nothing
is downloaded.

The split is fixed: a stratified 80 / 20 train / held-out split with seed 0
(``sklearn.model_selection.train_test_split``), 1,437 training and 360
held-out scans (35 to 37 per class). Everything that reports an accuracy on
digits (the experiment, the tests, later the calibration) uses the held-out
part, and nothing is ever trained on it.

Model inputs: a scan is scaled to [0, 1] (divided by 16), upsampled bilinearly
to the model's ``img_size``, replicated to the model's ``in_chans`` channels
(3: the RGB pipeline sees a grey image) and normalised with the config's
``mean`` and ``std``. The digits models store ``DIGITS_MEAN`` / ``DIGITS_STD``
there: the mean and standard deviation of every pixel of the training scans
in [0, 1] (``training_mean_std`` recomputes them).

Dimension glossary: n scans, s img_size, c in_chans.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ssmprune.errors import ConfigError

NUM_CLASSES = 10
SCAN_SIZE = 8
MAX_GREY = 16.0  # scans hold grey levels 0..16
SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
PARTS = ("train", "held_out")

# Per-pixel mean and std of the training scans (seed-0 split) in [0, 1];
# ``training_mean_std()`` recomputes them and a test checks they agree.
DIGITS_MEAN = 0.305383
DIGITS_STD = 0.376119


@dataclass(frozen=True)
class DigitsSplit:
    """One part of the digits split, as numpy arrays.

    scans: (n, 8, 8) float32, grey levels 0..16 as scikit-learn gives them.
    labels: (n,) int64, the digit 0..9.
    index: (n,) int64, each scan's row in ``load_digits()`` (sorted ascending).
    """

    scans: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@lru_cache(maxsize=4)
def _split_indices(seed: int) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, held_out = train_test_split(
        np.arange(len(labels)), test_size=HELD_OUT_FRACTION, random_state=seed,
        stratify=labels)
    return {"train": np.sort(train), "held_out": np.sort(held_out)}


@lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def load_split(part: str, seed: int = SPLIT_SEED) -> DigitsSplit:
    """The ``train`` or ``held_out`` part of the stratified 80 / 20 split.

    The same ``seed`` always gives the same split; the default seed 0 is the
    split every shipped number uses. Other seeds exist for variance studies.
    """
    if part not in PARTS:
        raise ConfigError(f"digits: part must be one of {', '.join(PARTS)}, got {part!r}")
    index = _split_indices(seed)[part]
    scans, labels = _all_digits()
    return DigitsSplit(scans[index].copy(), labels[index].copy(), index.astype(np.int64))


def training_mean_std(seed: int = SPLIT_SEED) -> tuple[float, float]:
    """Mean and std of every pixel of the training scans scaled to [0, 1]."""
    grey = load_split("train", seed).scans.astype(np.float64) / MAX_GREY
    return float(grey.mean()), float(grey.std())


def upsample(scans: np.ndarray | Tensor, img_size: int) -> Tensor:
    """Scans (n, 8, 8) in 0..16 -> grey images (n, 1, s, s) float32 in [0, 1].

    Bilinear, ``align_corners=False``, no antialiasing (it only enlarges).
    """
    x = torch.as_tensor(np.asarray(scans, dtype=np.float32) if not isinstance(scans, Tensor)
                        else scans.float())
    if x.dim() != 3 or tuple(x.shape[1:]) != (SCAN_SIZE, SCAN_SIZE):
        raise ConfigError(f"digits: scans must be (n, {SCAN_SIZE}, {SCAN_SIZE}), "
                          f"got {tuple(x.shape)}")
    grey = (x / MAX_GREY)[:, None]
    if img_size == SCAN_SIZE:
        return grey.contiguous()
    out = F.interpolate(grey, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return out.clamp_(0.0, 1.0)


def normalize(grey: Tensor, mean, std, in_chans: int = 3) -> Tensor:
    """Grey images (n, 1, s, s) in [0, 1] -> (n, in_chans, s, s) float32.

    The grey channel is replicated to ``in_chans`` channels, then each channel
    is normalised with its ``mean`` / ``std`` entry.
    """
    if len(mean) != in_chans or len(std) != in_chans:
        raise ConfigError(f"digits: mean/std need {in_chans} values each")
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return (grey.float().expand(-1, in_chans, -1, -1) - mean_t) / std_t


def to_model_inputs(scans: np.ndarray | Tensor, config: Any) -> Tensor:
    """Scans (n, 8, 8) in 0..16 -> model inputs (n, in_chans, s, s) float32.

    ``config`` is a model config (``img_size``, ``in_chans``, ``mean``, ``std``),
    e.g. ``model.config``.
    """
    return normalize(upsample(scans, config.img_size), config.mean, config.std,
                     config.in_chans)


def split_for_model(config: Any, part: str = "held_out",
                    seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """One part of the split as model inputs for ``config`` (e.g. ``model.config``).

    Returns (images (n, in_chans, s, s) float32, labels (n,) int64); n is 360
    for ``held_out`` and 1,437 for ``train`` with the default seed.
    """
    split = load_split(part, seed)
    return to_model_inputs(split.scans, config), torch.from_numpy(split.labels)


def held_out_for_model(config: Any) -> tuple[Tensor, Tensor]:
    """The held-out split (seed 0) as model inputs: the evaluation and calibration set.

    Returns (images (360, in_chans, s, s) float32, labels (360,) int64).
    """
    return split_for_model(config, "held_out", SPLIT_SEED)


@torch.inference_mode()
def accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor,
             batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on images (n, c, s, s), labels (n,)."""
    if len(labels) == 0:
        raise ConfigError("digits: accuracy of an empty set")
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start:start + batch_size])
        correct += int((logits.argmax(-1) == labels[start:start + batch_size]).sum())
    return correct / len(labels)
