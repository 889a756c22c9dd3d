"""Calibration and evaluation inputs, preprocessed exactly as the model expects.

Every source turns into ``Samples``: (n, c, s, s) float32 arrays for the
model's one input, optional labels, and what was skipped on the way.

    ImageFolderData   a folder of image files, found as ``parity --images``
                      finds them (``ssmprune.images.image_files``: recursive,
                      by suffix, hidden ones skipped), read through
                      ``ssmprune.images`` (resize the shorter side, centre
                      crop, the config's mean / std); unreadable image files
                      are skipped and counted, never fatal
    NpzData           an .npz with arrays keyed by the model's input name
                      (and optionally ``labels``)
    DigitsData        scikit-learn digits (``ssmprune.data.digits``), the
                      held-out or training part, as the digits models take it
    PhotoCropsData    scikit-image's sample photos and seeded random crops of
                      them, resized to the model: real pixels without a download

``data_from_spec`` maps the CLI's ``--data`` text to one of them. A model
config is either a model's config object or the ``config`` dict of a
manifest (the manifest records img_size, in_chans, mean and std).

Dimension glossary: n samples, c in_chans, s img_size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ssmprune.errors import BadInputFileError, ConfigError, InputShapeError
from ssmprune.images import IMAGE_SUFFIXES, SAMPLE_PHOTOS, image_files

LABELS_KEY = "labels"
DIGITS_PARTS = ("held_out", "train")
PHOTOS_SPEC = "skimage"


@dataclass
class Samples:
    """Model inputs from one source.

    x: (n, c, s, s) float32, normalised. labels: (n,) int64 or None.
    skipped: (file, reason) of every file that could not be read.
    """

    x: np.ndarray
    source: str
    labels: Optional[np.ndarray] = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def head(self, n: Optional[int]) -> "Samples":
        """The first ``n`` samples (all of them for None)."""
        if n is None or n >= len(self):
            return self
        return Samples(self.x[:n], self.source, None if self.labels is None else self.labels[:n],
                       self.skipped, self.names[:n])

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self), "labelled": self.labels is not None,
                "skipped": len(self.skipped),
                "skipped_files": [{"file": f, "reason": r} for f, r in self.skipped]}


def _get(config: Any, key: str):
    return config[key] if isinstance(config, dict) else getattr(config, key)


def _check_rgb(config: Any, source: str) -> None:
    if _get(config, "in_chans") != 3:
        raise InputShapeError(f"{source} gives RGB images but the model takes "
                              f"{_get(config, 'in_chans')} channels")


class ImageFolderData:
    """Every image file under ``path`` (``image_files``), as model inputs for ``model_config``.

    Image files that cannot be read are skipped and listed in
    ``Samples.skipped``. No readable image at all is a ``BadInputFileError``.
    With ``resize=False`` every image must already be img_size x img_size
    (an ``InputShapeError`` otherwise: that is a wrong set, not a bad file).
    """

    def __init__(self, path: str | os.PathLike, model_config: Any, resize: bool = True):
        self.path = Path(path)
        self.config = model_config
        self.resize = resize

    def files(self) -> list[Path]:
        """The image files under the folder: ``ssmprune.images.image_files``, the walk
        ``parity --images`` makes too."""
        if not os.path.isdir(self.path):
            raise BadInputFileError(f"calibration folder {self.path} does not exist or is not "
                                    "a directory")
        files = image_files(self.path)
        if not files:
            raise BadInputFileError(f"calibration folder {self.path} holds no image files "
                                    f"(looked for {', '.join(IMAGE_SUFFIXES)} in it and its "
                                    "subfolders)")
        return files

    def load(self, limit: Optional[int] = None) -> Samples:
        """Up to ``limit`` readable images (all for None), in file-name order."""
        import torch

        from ssmprune.images import load_image, preprocess

        _check_rgb(self.config, str(self.path))
        size, mean, std = (_get(self.config, k) for k in ("img_size", "mean", "std"))
        images, names, skipped = [], [], []
        for file in self.files():
            if limit is not None and len(images) >= limit:
                break
            try:
                img = load_image(file)
            except BadInputFileError as err:
                skipped.append((str(file), str(err)))
                continue
            images.append(preprocess(img, size, mean, std, resize=self.resize))
            names.append(str(file))
        if not images:
            raise BadInputFileError(f"calibration folder {self.path} holds no readable image "
                                    f"({len(skipped)} file(s) skipped as unreadable)")
        return Samples(torch.stack(images).numpy(), f"folder:{self.path}", None, skipped, names)


class NpzData:
    """An .npz file with the model inputs under the input's name (and ``labels``, optional).

    The array must be (n, c, s, s) with the exported input's c, s; anything
    else is a set for another model and an ``InputShapeError``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def load(self, input_name: str, sample_shape: Sequence[int],
             limit: Optional[int] = None) -> Samples:
        """The samples under ``input_name``; ``sample_shape`` is (c, s, s)."""
        if not os.path.isfile(self.path):
            raise BadInputFileError(f"calibration file {self.path} does not exist")
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as err:
            raise BadInputFileError(f"{self.path} is not a readable .npz file ({err})") from None
        if input_name not in arrays:
            raise BadInputFileError(f"{self.path} has no array named {input_name!r} (it has "
                                    f"{', '.join(sorted(arrays)) or 'none'})")
        x = arrays[input_name]
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(sample_shape):
            raise InputShapeError(f"{self.path}: {input_name} is {tuple(x.shape)} but the model "
                                  f"takes (n, {', '.join(map(str, sample_shape))}): a set for "
                                  "another model?")
        if x.shape[0] == 0:
            raise BadInputFileError(f"{self.path}: {input_name} holds no samples")
        if not np.issubdtype(x.dtype, np.floating):
            raise BadInputFileError(f"{self.path}: {input_name} is {x.dtype}, not floating point "
                                    "(store preprocessed, normalised inputs)")
        labels = arrays.get(LABELS_KEY)
        if labels is not None and labels.shape != (x.shape[0],):
            raise BadInputFileError(f"{self.path}: labels are {labels.shape}, expected "
                                    f"({x.shape[0]},)")
        # Class indices: integers (bool, float or text labels would be truncated or fail).
        if labels is not None and (labels.dtype == bool
                                   or not np.issubdtype(labels.dtype, np.integer)):
            raise BadInputFileError(f"{self.path}: labels are {labels.dtype}, not integer "
                                    "class indices")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise BadInputFileError(f"{self.path}: {input_name} holds NaN or inf")
        samples = Samples(x, f"npz:{self.path}",
                          None if labels is None else labels.astype(np.int64))
        return samples.head(limit)


class DigitsData:
    """scikit-learn digits, one part of the fixed split, as inputs for ``model_config``."""

    def __init__(self, model_config: Any, part: str = "held_out"):
        if part not in DIGITS_PARTS:
            raise ConfigError(f"digits: part must be one of {', '.join(DIGITS_PARTS)}, "
                              f"got {part!r}")
        self.config = model_config
        self.part = part

    def load(self, limit: Optional[int] = None) -> Samples:
        from types import SimpleNamespace

        from ssmprune.data.digits import split_for_model

        cfg = SimpleNamespace(**{k: _get(self.config, k)
                                 for k in ("img_size", "in_chans", "mean", "std")})
        x, labels = split_for_model(cfg, self.part)
        return Samples(x.numpy(), f"digits:{self.part}", labels.numpy()).head(limit)


class PhotoCropsData:
    """scikit-image's photos: each whole (resized and centre-cropped like any image),
    then seeded random crops (a random square of 30-100 % of the shorter side,
    mirrored half the time) resized to the model, until ``count`` samples.

    Two instances with different ``seed`` (or ``photos``) give different crops:
    calibrate on one, evaluate on the other.
    """

    def __init__(self, model_config: Any, count: int = 64, seed: int = 0,
                 photos: Sequence[str] = SAMPLE_PHOTOS, whole: bool = True):
        self.config = model_config
        self.count = count
        self.seed = seed
        self.photos = tuple(photos)
        self.whole = whole

    def load(self, limit: Optional[int] = None) -> Samples:
        import torch
        from PIL import Image

        from ssmprune.images import preprocess, sample_photo

        _check_rgb(self.config, "scikit-image photos")
        size, mean, std = (_get(self.config, k) for k in ("img_size", "mean", "std"))
        count = self.count if limit is None else min(self.count, limit)
        photos = []
        for name in self.photos:
            photos.append((name, sample_photo(name)))
        rng = np.random.default_rng(self.seed)
        images, names = [], []
        if self.whole:
            for name, img in photos[:count]:
                images.append(preprocess(img, size, mean, std))
                names.append(f"skimage:{name}")
        while len(images) < count:
            name, img = photos[int(rng.integers(len(photos)))]
            w, h = img.size
            side = int(min(w, h) * rng.uniform(0.3, 1.0))
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = img.crop((left, top, left + side, top + side)).resize((size, size),
                                                                          Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            images.append(preprocess(crop, size, mean, std, resize=False))
            names.append(f"skimage:{name}@{left},{top},{side}")
        return Samples(torch.stack(images).numpy(), f"skimage-crops:seed{self.seed}", None, [],
                       names)


def data_from_spec(spec: str, model_config: Any, input_name: str, resize: bool = True,
                   seed: int = 0, count: int = 64):
    """The source a ``--data`` text names, as an object with ``load(limit)``.

    ``digits`` or ``digits:held_out`` / ``digits:train``; ``skimage`` (photos
    and random crops, seeded by ``seed``); a directory (image folder); an
    ``.npz`` file. An empty text is refused: as a path it is the working folder.
    """
    if not spec.strip():
        raise BadInputFileError(f"the data is empty ({spec!r}): give a folder of images, an "
                                ".npz file, 'digits' or 'skimage'")
    if spec == "digits" or spec.startswith("digits:"):
        return DigitsData(model_config, spec.partition(":")[2] or "held_out")
    if spec == PHOTOS_SPEC:
        return PhotoCropsData(model_config, count=count, seed=seed)
    path = Path(spec)
    if os.path.isdir(path):  # os.path: False for a name too long, where Path raises
        return ImageFolderData(path, model_config, resize)
    if path.suffix == ".npz":
        shape = (_get(model_config, "in_chans"), _get(model_config, "img_size"),
                 _get(model_config, "img_size"))
        npz = NpzData(path)
        return _Bound(lambda limit: npz.load(input_name, shape, limit))
    if not os.path.exists(path):
        raise BadInputFileError(f"calibration data {spec} does not exist (give a folder of "
                                "images, an .npz file, 'digits' or 'skimage')")
    raise BadInputFileError(f"calibration data {spec} is neither a folder of images nor an "
                            ".npz file")


@dataclass
class _Bound:
    """A loader whose model-specific arguments are already bound."""

    fn: Any

    def load(self, limit: Optional[int] = None) -> Samples:
        return self.fn(limit)


# A dynamic-batch export is calibrated and judged in batches of up to this many samples
# (the results do not depend on it; the time does).
DYNAMIC_FEED_BATCH = 32


def batches(x: np.ndarray, batch: int, pad: bool = True) -> list[np.ndarray]:
    """(n, ...) -> contiguous chunks of ``batch``; with ``pad`` (a static batch) the last is
    padded to ``batch`` with its first sample, else it is left short."""
    out = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if pad and len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), axis=0)])
        out.append(np.ascontiguousarray(chunk))
    return out


def default_holdout(model: str) -> str:
    """The held-out set a calibration of ``model`` is judged on unless told: the digits
    models' held-out split, else scikit-image photo crops (of another seed than the data)."""
    from ssmprune.models.digits import EMBEDDED

    return "digits:held_out" if model in EMBEDDED else PHOTOS_SPEC
