"""Fuzz: odd images (the corpus's grayscale, RGBA, 16-bit, float, CMYK, EXIF-rotated, 1x1,
one-column, palette, bilevel, huge-header, truncated, empty and not-an-image files, and
generated ones in every PIL mode and format, truncated or not) over every command that reads
images: run (a model by name and an export), visualize, parity --images, calibrate --data."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fuzzing import fuzz_settings, run_checked
from hypothesis import given
from hypothesis import strategies as st
from mutations import CORPUS
from PIL import Image

CORPUS_IMAGES = sorted((CORPUS / "images").iterdir())
# PIL mode -> formats that store it.
MODES = {"1": ["PNG", "BMP", "TIFF"], "L": ["PNG", "JPEG", "BMP", "TIFF", "WEBP"],
         "LA": ["PNG"], "P": ["PNG", "GIF", "BMP"], "RGB": ["PNG", "JPEG", "BMP", "WEBP"],
         "RGBA": ["PNG", "TIFF", "WEBP"], "CMYK": ["JPEG", "TIFF"], "I;16": ["PNG", "TIFF"],
         "I": ["TIFF"], "F": ["TIFF"]}
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tiff", "GIF": ".gif",
          "WEBP": ".webp"}


@st.composite
def images(draw) -> tuple[str, bytes]:
    """(file name, bytes): a corpus image, or a generated one, maybe truncated."""
    if draw(st.booleans()):
        path = draw(st.sampled_from(CORPUS_IMAGES))
        return path.name, path.read_bytes()
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    w, h = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGBA").convert("RGB").convert(mode) \
        if mode not in ("I;16", "I", "F") else Image.fromarray(
            (pixels[..., 0].astype(np.float32) * draw(st.sampled_from([1.0, 257.0, 1 / 255, -3e4]))
             ).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    blob = buffer.getvalue()
    if draw(st.booleans()) and len(blob) > 8:
        blob = blob[:draw(st.integers(1, len(blob) - 1))]
    return f"generated{SUFFIX[fmt]}", blob


def _args(command, ws, image, export_dir):
    return {
        "run-model": ["run", "vim_digits", image, "--repeats", 1],
        "run-export": ["run", export_dir, image, "--repeats", 1],
        "visualize": ["visualize", "vim_digits", "--prune", "vim_digits_top", image, "-o",
                      ws.root / "v.png"],
        "parity": ["parity", export_dir, "--images", image.parent, "--samples", 1],
        "calibrate": ["calibrate", export_dir, "--data", image.parent, "--samples", 2,
                      "--holdout", "none", "-o", ws.root / "int8"],
    }[command]


def _ok(command):
    def image_classified(result):
        assert "top-5 classes" in result.stdout, result.output

    def png_written(result):
        assert "wrote" in result.stdout, result.output

    return {"run-model": image_classified, "run-export": image_classified,
            "visualize": png_written}.get(command)


@pytest.mark.parametrize("command, examples", [("run-model", 20), ("run-export", 20),
                                               ("visualize", 12), ("parity", 10),
                                               ("calibrate", 6)])
def test_odd_images(command, examples, digits_exports, workspace):
    @fuzz_settings(examples)
    @given(image=images(), model=st.sampled_from(sorted(digits_exports)))
    def check(image, model):
        name, blob = image
        with workspace() as ws:
            export_dir = ws.copy_export(digits_exports[model])
            folder = ws.root / "images"
            folder.mkdir()
            (folder / name).write_bytes(blob)
            run_checked(ws, _args(command, ws, folder / name, export_dir), ok=_ok(command))

    check()
