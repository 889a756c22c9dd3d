"""Calibration data sources: image folders (good, corrupt, empty), .npz, digits, photo crops."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ssmprune.calibration import DigitsData, ImageFolderData, NpzData, PhotoCropsData
from ssmprune.errors import BadInputFileError, InputShapeError

CONFIG = SimpleNamespace(img_size=32, in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))


def _image(path, size=(40, 30), value=100):
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_folder_skips_corrupt_files_and_counts_them(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    _image(tmp_path / "sub" / "b.jpg", value=200)
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    samples = ImageFolderData(tmp_path, CONFIG).load()
    assert samples.x.shape == (2, 3, 32, 32) and samples.x.dtype == np.float32
    # notes.txt is no image file (ssmprune.images.image_files): not read, not counted
    assert len(samples.skipped) == 1
    assert {p.split("/")[-1] for p, _ in samples.skipped} == {"c.jpg"}
    # Normalised with the config's mean and std: a flat 100/255 image.
    expected = (100 / 255 - 0.5) / 0.2
    assert np.allclose(samples.x[0, 0], expected, atol=1e-5)
    assert samples.describe()["skipped"] == 1


def test_folder_limit(tmp_path):
    for i in range(3):
        _image(tmp_path / f"{i}.png")
    assert len(ImageFolderData(tmp_path, CONFIG).load(limit=2)) == 2


@pytest.mark.parametrize("content", ["empty", "non_images", "missing"])
def test_folder_without_images_is_an_error(tmp_path, content):
    folder = tmp_path / "images"
    if content != "missing":
        folder.mkdir()
    if content == "non_images":
        (folder / "a.txt").write_text("x")
        (folder / "b.png").write_bytes(b"garbage")
    with pytest.raises(BadInputFileError):
        ImageFolderData(folder, CONFIG).load()


def test_folder_no_resize_needs_the_model_size(tmp_path):
    _image(tmp_path / "a.png", size=(64, 64))
    with pytest.raises(InputShapeError, match="no-resize"):
        ImageFolderData(tmp_path, CONFIG, resize=False).load()
    _image(tmp_path / "a.png", size=(32, 32))
    assert len(ImageFolderData(tmp_path, CONFIG, resize=False).load()) == 1


def test_folder_config_from_manifest_dict(tmp_path):
    _image(tmp_path / "a.png")
    config = {"img_size": 16, "in_chans": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert ImageFolderData(tmp_path, config).load().x.shape == (1, 3, 16, 16)


def test_npz(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", images=x, labels=np.arange(5))
    samples = NpzData(tmp_path / "cal.npz").load("images", (3, 32, 32), limit=4)
    assert np.array_equal(samples.x, x[:4]) and list(samples.labels) == [0, 1, 2, 3]
    with pytest.raises(InputShapeError, match="another model"):
        NpzData(tmp_path / "cal.npz").load("images", (3, 64, 64))
    with pytest.raises(BadInputFileError, match="no array named"):
        NpzData(tmp_path / "cal.npz").load("pixels", (3, 32, 32))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BadInputFileError):
        NpzData(tmp_path / "bad.npz").load("images", (3, 32, 32))


@pytest.mark.parametrize("labels", [np.arange(5) + 0.7, np.arange(5) > 2,
                                    np.array(["cat"] * 5)])
def test_npz_labels_must_be_class_indices(tmp_path, labels):
    x = np.zeros((5, 3, 32, 32), np.float32)
    np.savez(tmp_path / "cal.npz", images=x, labels=labels)
    with pytest.raises(BadInputFileError, match="not integer class indices"):
        NpzData(tmp_path / "cal.npz").load("images", (3, 32, 32))


def test_digits_held_out():
    samples = DigitsData(CONFIG).load()
    assert samples.x.shape == (360, 3, 32, 32) and samples.labels.shape == (360,)
    assert len(DigitsData(CONFIG, "train").load(limit=10)) == 10


def test_photo_crops_are_seeded():
    a = PhotoCropsData(CONFIG, count=10, seed=0).load()
    b = PhotoCropsData(CONFIG, count=10, seed=0).load()
    c = PhotoCropsData(CONFIG, count=10, seed=1, whole=False).load()
    assert a.x.shape == (10, 3, 32, 32) and np.array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
