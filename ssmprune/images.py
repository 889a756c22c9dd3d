"""Images in, model-ready tensors out: loading, resizing, normalising, finding.

Preprocessing follows the released evaluation pipelines: resize the shorter
side to ``img_size / 0.875`` (bicubic), centre-crop ``img_size``, scale to
[0, 1] and normalise with the model config's mean and std.

Every file becomes 8-bit RGB the same way (``to_rgb``):

    8-bit modes   L, 1, P (with its transparency), CMYK, YCbCr, LAB, HSV, RGBA,
                  LA, PA, RGBa, La: PIL's conversion to RGB; alpha is dropped,
                  as the training loaders' ``convert("RGB")`` drops it
    I;16*         16-bit: scaled by the bit depth, v / 65535 * 255
    I             32-bit integers: as 16-bit data when every value lies in
                  0..65535 (PIL opens some 16-bit files so), else stretched
                  over the image's own range, min..max -> 0..255
    F             floats: v * 255 when every value lies in 0..1, else stretched
                  over min..max; NaN or inf is a BadInputFileError

Nothing is clipped and nothing is changed silently beyond these rules; the
EXIF orientation is applied first (``ImageOps.exif_transpose``), so a phone
photo is upright. Sizes are bounded (``ssmprune.limits``): a file whose header
claims more than MAX_IMAGE_PIXELS is refused before it is decoded, and so is
a resize that would exceed it (an extreme aspect ratio).

Folders are walked one way for every command (``image_files``): recursively,
files with an image suffix (``IMAGE_SUFFIXES``, any case), hidden files and
folders skipped, symlinked folders not followed, sorted by relative path.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ssmprune import limits
from ssmprune.errors import BadInputFileError, InputShapeError

CROP_PCT = 0.875
# Colour photos scikit-image ships (no download); stereo_motorcycle is a pair, its left image.
SAMPLE_PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "stereo_motorcycle")
# What a folder walk picks up (compared lower-case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".pnm")
# The formats PIL may open. Not every plugin: EPS, for one, runs Ghostscript on
# the file; a model input needs none of the others. JPEG includes MPO (a JPEG
# with extra pictures, as phone cameras write it).
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

# PIL's decompression-bomb limit, set deliberately: it warns past this many
# pixels and raises past twice as many; load_image turns both into one line.
Image.MAX_IMAGE_PIXELS = limits.MAX_IMAGE_PIXELS
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")
_16_BIT_MAX = 65535


def _too_large(path, pixels: int | None, size: tuple[int, int] | None = None) -> BadInputFileError:
    shape = f"{size[0]}x{size[1]}, " if size else ""
    count = f"{pixels:,} pixels" if pixels is not None else "more pixels"
    return BadInputFileError(
        f"{path}: the image is too large ({shape}{count}); at most "
        f"{limits.MAX_IMAGE_PIXELS:,} are read (ssmprune.limits.MAX_IMAGE_PIXELS): "
        "downscale it first")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as 8-bit RGB, upright (EXIF orientation applied).

    Raises BadInputFileError (one line) for a missing file, a file that is not
    a readable image of IMAGE_FORMATS, one past MAX_IMAGE_PIXELS (checked from
    the header, before decoding) and a float image holding NaN or inf.
    """
    path = Path(path)
    if not os.path.isfile(path):  # os.path: False for a name too long, where Path raises
        raise BadInputFileError(f"image {path} does not exist or is not a file")
    try:
        with warnings.catch_warnings():
            # PIL's DecompressionBombWarning (past the limit) becomes an error like
            # its DecompressionBombError (past twice the limit).
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                w, h = img.size
                if w * h > limits.MAX_IMAGE_PIXELS:
                    raise _too_large(path, w * h, (w, h))
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img, path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        found = _PIL_PIXELS.search(str(err))
        raise _too_large(path, int(found.group(1)) if found else None) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInputFileError(f"{path} is not a readable image ({first})") from None


def _deep_to_8_bit(img: Image.Image, name) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-channel image as 8-bit L (rules: module doc)."""
    a = np.asarray(img).astype(np.float64)
    if not np.isfinite(a).all():
        raise BadInputFileError(f"{name}: the {img.mode} image holds NaN or inf values")
    low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scaled = a / _16_BIT_MAX * 255
    elif img.mode == "I" and low >= 0 and high <= _16_BIT_MAX:
        scaled = a / _16_BIT_MAX * 255
    elif img.mode == "F" and low >= 0 and high <= 1:
        scaled = a * 255
    elif high > low:
        scaled = (a - low) / (high - low) * 255
    else:  # a constant image outside the ranges above: no contrast to keep
        scaled = np.zeros_like(a)
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(img: Image.Image, name="image") -> Image.Image:
    """``img`` of any PIL mode as 8-bit RGB by the rules of the module docstring.

    ``name`` (e.g. the file) goes into the error of a float image with NaN or inf.
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _deep_to_8_bit(img, name)
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a transparent palette goes to RGB directly
    elif img.mode == "La":
        img = img.convert("LA")  # PIL has no La -> RGB conversion
    return img if img.mode == "RGB" else img.convert("RGB")


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder``, by the one rule of the module docstring.

    Raises BadInputFileError when ``folder`` is not a directory or a subfolder
    cannot be listed. An empty result is the caller's to judge.
    """
    root = Path(folder)
    if not os.path.isdir(root):
        raise BadInputFileError(f"{root} does not exist or is not a directory")

    def unreadable(err: OSError):
        raise BadInputFileError(f"cannot list {err.filename}: {err.strerror}")

    found = []
    for top, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def expand_image_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given and folders walked by ``image_files``, in order; at most MAX_SAMPLES.

    A folder without image files is a BadInputFileError, and so is an empty path (as a
    Path it is the working folder: an unset shell variable would walk it).
    """
    out: list[str] = []
    for given in paths:
        if not os.fspath(given).strip():
            raise BadInputFileError(f"an image path is empty ({os.fspath(given)!r})")
        p = Path(given)
        if os.path.isdir(p):
            found = image_files(p)
            if not found:
                raise BadInputFileError(f"{p} holds no image files (looked for "
                                        f"{', '.join(IMAGE_SUFFIXES)} in it and its subfolders)")
            out += map(str, found)
        else:
            out.append(str(p))
        limits.check_image_count(len(out))
    return out


def sample_photo(name: str = "chelsea") -> Image.Image:
    """A real photo shipped with scikit-image (no download), as PIL RGB."""
    import skimage.data

    array = getattr(skimage.data, name)()
    return Image.fromarray(array[0] if isinstance(array, tuple) else array).convert("RGB")


def resize_crop(img: Image.Image, img_size: int) -> Image.Image:
    """Resize the shorter side to img_size / 0.875 (bicubic), centre-crop img_size.

    An image so elongated that the resize would pass MAX_IMAGE_PIXELS is an
    InputShapeError, before anything is resized.
    """
    short = round(img_size / CROP_PCT)
    w, h = img.size
    scale = short / min(w, h)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    if size[0] * size[1] > limits.MAX_IMAGE_PIXELS:
        raise InputShapeError(
            f"image is {w}x{h}: resizing its shorter side to {short} px would make it "
            f"{size[0]}x{size[1]} ({size[0] * size[1]:,} pixels, more than "
            f"{limits.MAX_IMAGE_PIXELS:,}: ssmprune.limits.MAX_IMAGE_PIXELS); crop it nearer "
            "to a square first")
    img = img.resize(size, Image.BICUBIC)
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
    The number of files and the batch's bytes are bounded (``ssmprune.limits``)
    before any file is read.
    """
    paths = list(paths)
    if in_chans != 3:
        raise InputShapeError(f"images are RGB but the model takes {in_chans} channels")
    limits.check_image_count(len(paths))
    limits.check_input_bytes("images", len(paths), in_chans, img_size)
    batch = []
    for p in paths:
        try:
            batch.append(preprocess(load_image(p), img_size, mean, std, resize))
        except InputShapeError as err:
            raise InputShapeError(f"{p}: {err}") from None
    return torch.stack(batch)
