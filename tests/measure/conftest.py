"""Shared fixtures of the measurement tests: one small sweep of vim_digits (its exports
serve the bench and eval tests too) and an ImageFolder of scikit-image photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import invoke

# keep ratio 0.9 with the preset's blocks, importance and alignment is vim_digits_top.
SWEEP_ARGS = ["vim_digits", "--keep-ratios", "1.0,0.9", "--precisions", "fp32,int8",
              "--data", "digits:held_out", "--calibration-samples", "32", "--iterations", "2",
              "--warmup", "1", "--batch", "8", "--threads", "1"]


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory):
    """(folder, sweep.json, the CLI's stdout) of `ssmprune sweep` on vim_digits."""
    out = tmp_path_factory.mktemp("sweep") / "vim_digits"
    result, stdout, stderr = invoke("sweep", *SWEEP_ARGS, "-o", out)
    assert result.exit_code == 0, stderr
    return out, json.loads((out / "sweep.json").read_text()), stdout


@pytest.fixture(scope="session")
def pruned_export(digits_sweep):
    """vim_digits pruned as vim_digits_top (keep ratio 0.9), fp32, static batch 8."""
    return digits_sweep[0] / "points" / "r0.9" / "fp32"


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """An ImageFolder of 10 classes (folders c0..c9), two crops of scikit-image photos
    each, as PNG; returns (root, [(file, class folder)])."""
    from ssmprune.images import SAMPLE_PHOTOS, sample_photo

    root = tmp_path_factory.mktemp("photos") / "set"
    rng = np.random.default_rng(0)
    files = []
    photos = [sample_photo(name) for name in SAMPLE_PHOTOS]
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            img = photos[(2 * c + i) % len(photos)]
            w, h = img.size
            side = int(min(w, h) * rng.uniform(0.4, 1.0))
            left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            path = root / f"c{c}" / f"img{i}.png"
            img.crop((left, top, left + side, top + side + i * 7)).save(path)
            files.append((path, f"c{c}"))
    return root, files
