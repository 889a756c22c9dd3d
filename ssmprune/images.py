"""Images in, model-ready tensors out: loading, resizing, normalising.

Preprocessing follows the released evaluation pipelines: resize the shorter
side to ``img_size / 0.875`` (bicubic), centre-crop ``img_size``, scale to
[0, 1] and normalise with the model config's mean and std.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ssmprune.errors import BadInputFileError, InputShapeError

CROP_PCT = 0.875
# Colour photos scikit-image ships (no download); stereo_motorcycle is a pair, its left image.
SAMPLE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "stereo_motorcycle")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB; a missing or non-image file is a BadInputFileError."""
    path = Path(path)
    if not path.is_file():
        raise BadInputFileError(f"image {path} does not exist or is not a file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadInputFileError(f"{path} is not a readable image ({err})") from None


def sample_photo(name: str = "chelsea") -> Image.Image:
    """A real photo shipped with scikit-image (no download), as PIL RGB."""
    import skimage.data

    array = getattr(skimage.data, name)()
    return Image.fromarray(array[0] if isinstance(array, tuple) else array).convert("RGB")


def resize_crop(img: Image.Image, img_size: int) -> Image.Image:
    """Resize the shorter side to img_size / 0.875 (bicubic), centre-crop img_size."""
    short = round(img_size / CROP_PCT)
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                     Image.BICUBIC)
    w, h = img.size
    left, top = (w - img_size) // 2, (h - img_size) // 2
    return img.crop((left, top, left + img_size, top + img_size))


def preprocess(img: Image.Image, img_size: int, mean, std, resize: bool = True) -> Tensor:
    """PIL RGB image -> (3, img_size, img_size) fp32, normalised.

    With ``resize=False`` the image must already be img_size x img_size.
    """
    if resize:
        img = resize_crop(img, img_size)
    elif img.size != (img_size, img_size):
        raise InputShapeError(
            f"image is {img.size[0]}x{img.size[1]} but the model takes "
            f"{img_size}x{img_size} (drop --no-resize to resize it)")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - mean_t) / std_t


def batch_from_files(paths, img_size: int, mean, std, in_chans: int = 3,
                     resize: bool = True) -> Tensor:
    """Image files -> (b, 3, img_size, img_size) fp32, normalised with ``mean`` / ``std``.

    ``in_chans`` is what the model takes: images are RGB, so anything but 3 is refused.
    """
    if in_chans != 3:
        raise InputShapeError(f"images are RGB but the model takes {in_chans} channels")
    return torch.stack([preprocess(load_image(p), img_size, mean, std, resize) for p in paths])
