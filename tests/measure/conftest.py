"""Shared fixtures of the measurement tests: one small sweep of vim_digits (its exports
serve the bench and eval tests too) and an ImageFolder of scikit-image photos."""

from __future__ import annotations

import json

import numpy as np
import pytest

from measure.measure_cases import HELD_OUT_SUBSET, SWEEP_ARGS

from cli_helpers import invoke


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory):
    """The first HELD_OUT_SUBSET held-out digits as vim_digits inputs: an .npz (x, labels)."""
    from ssmprune.calibration.data import DigitsData
    from ssmprune.models import create_model

    samples = DigitsData(create_model("vim_digits").config).load(HELD_OUT_SUBSET)
    path = tmp_path_factory.mktemp("npz") / "held_out_96.npz"
    np.savez(path, x=samples.x, labels=samples.labels)
    return path


@pytest.fixture(scope="session")
def digits_sweep(tmp_path_factory, digits_npz):
    """(folder, sweep.json, the CLI's stdout) of `ssmprune sweep` on vim_digits."""
    out = tmp_path_factory.mktemp("sweep") / "vim_digits"
    result, stdout, stderr = invoke("sweep", *SWEEP_ARGS, "--data", digits_npz, "-o", out)
    assert result.exit_code == 0, stderr
    return out, json.loads((out / "sweep.json").read_text()), stdout


@pytest.fixture(scope="session")
def pruned_export(tmp_path_factory):
    """vim_digits pruned as vim_digits_top (keep ratio 0.9), fp32, static batch 8 (the
    sweep's own exports take a dynamic batch)."""
    from ssmprune.exporter import ExportOptions, export

    return export(ExportOptions("vim_digits", prune="vim_digits_top", batch=8),
                  tmp_path_factory.mktemp("static8") / "vim_digits_top").directory


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
