"""Images in (ssmprune/images.py): every mode converted honestly to 8-bit RGB, EXIF
orientation applied, sizes bounded before decoding, one rule for walking image folders.

Before: a 16-bit PNG came out almost white (mean 254.5: PIL clips I;16 to 8 bits), a
float TIFF black (mean 0.0002), EXIF rotation was ignored, a PNG claiming 14000 x 14000
was PIL's DecompressionBombError traceback, and ``parity --images DIR`` ignored DIR's
subfolders while ``calibrate --data DIR`` walked them.
"""

import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from exporter.export_cases import vim_digits_export  # noqa: F401  (session fixture)
from PIL import Image

import ssmprune.parity.compare
from cli_helpers import assert_one_line_error, invoke
from ssmprune import limits
from ssmprune.calibration import ImageFolderData
from ssmprune.errors import BadInputFileError, ConfigError, InputShapeError
from ssmprune.images import image_files, load_image, preprocess, to_rgb


def _rgb(path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning on the way
        img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.float64)


def _gradient(h=64, w=64) -> np.ndarray:
    """0..1 left to right, the same on every row."""
    return np.tile(np.linspace(0.0, 1.0, w), (h, 1))


# ---------------------------------------------------------------------------
# Deep and float images: scaled by bit depth or real range, never clipped
# ---------------------------------------------------------------------------

def test_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.round(_gradient() * 65535).astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = _rgb(path)
    assert rgb.mean() == pytest.approx(127.5, abs=0.6)  # was 254.5
    assert rgb[:, 0].max() == 0 and rgb[:, -1].min() == 255
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_dark_16_bit_png_stays_dark(tmp_path):
    path = tmp_path / "dark.png"
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(path)
    assert np.all(_rgb(path) == round(1000 / 257))  # 4, not 255


def test_float_tiff_in_unit_range_is_times_255(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(_gradient().astype(np.float32)).save(path)
    assert Image.open(path).mode == "F"
    rgb = _rgb(path)
    assert rgb.mean() == pytest.approx(127.5, abs=0.6)  # was 0.0002
    assert rgb.min() == 0 and rgb.max() == 255


def test_float_tiff_outside_unit_range_is_stretched_over_its_range(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray((_gradient() * 4 - 1).astype(np.float32)).save(path)  # -1 .. 3
    rgb = _rgb(path)
    assert rgb.min() == 0 and rgb.max() == 255
    assert rgb.mean() == pytest.approx(127.5, abs=0.6)


def test_float_tiff_with_nan_is_refused(tmp_path):
    path = tmp_path / "nan.tif"
    a = _gradient().astype(np.float32)
    a[3, 5] = np.nan
    Image.fromarray(a).save(path)
    with pytest.raises(BadInputFileError, match="NaN or inf"):
        load_image(path)


@pytest.mark.parametrize("values, expected", [
    (np.array([[0, 65535], [257, 32896]]), np.array([[0, 255], [1, 128]])),   # 16-bit data
    (np.array([[-100, 0], [100, 100]]), np.array([[0, 128], [255, 255]])),    # its range
])
def test_32_bit_integer_image(tmp_path, values, expected):
    path = tmp_path / "i32.tif"
    Image.fromarray(values.astype(np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert np.array_equal(_rgb(path)[..., 0], expected)


# ---------------------------------------------------------------------------
# Colour modes and orientation
# ---------------------------------------------------------------------------

def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red
    assert Image.open(path).mode == "CMYK"
    assert np.abs(_rgb(path).reshape(-1, 3).mean(0) - (255, 0, 0)).max() < 3


def test_exif_orientation_is_applied(tmp_path):
    """A 40 x 20 JPEG, white on its left half, tagged orientation 6 (rotate 90 degrees
    clockwise to display): upright it is 20 x 40 with the white half on top."""
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(path, exif=exif.tobytes(), quality=95)
    rgb = _rgb(path)
    assert rgb.shape == (40, 20, 3)
    assert rgb[:18].mean() > 250 and rgb[22:].mean() < 5


@pytest.mark.parametrize("mode, value, expected", [
    ("RGBA", (10, 120, 230, 0), (10, 120, 230)),  # alpha dropped, as the training loaders do
    ("LA", (77, 128), (77, 77, 77)),
    ("L", 200, (200, 200, 200)),
    ("1", 1, (255, 255, 255)),
])
def test_modes_with_alpha_or_grey_become_rgb(tmp_path, mode, value, expected):
    path = tmp_path / f"{mode}.png"
    Image.new(mode, (8, 8), value).save(path)
    assert np.all(_rgb(path).reshape(-1, 3) == expected)


def test_palette_with_transparency_is_rgb_without_a_warning(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 250, 20, 30] + [0] * 762)
    img.info["transparency"] = 0
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)
    assert np.all(_rgb(path).reshape(-1, 3) == (250, 20, 30))


def test_one_pixel_image_preprocesses(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (255, 0, 0)).save(path)
    x = preprocess(load_image(path), 32, (0.0,) * 3, (1.0,) * 3)
    assert x.shape == (3, 32, 32)
    assert x[0].min() == pytest.approx(1.0) and x[1].abs().max() == pytest.approx(0.0)


def test_to_rgb_of_every_mode_is_8_bit_rgb():
    for mode in ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I", "I;16", "F", "PA",
                 "La", "RGBa", "HSV", "LAB"):
        out = to_rgb(Image.new(mode, (3, 2)), "x")
        assert out.mode == "RGB" and out.size == (3, 2), mode


# ---------------------------------------------------------------------------
# Sizes: bounded from the header, before anything is decoded
# ---------------------------------------------------------------------------

def _png_claiming(path, width, height):
    """A small valid PNG whose IHDR is patched to claim ``width`` x ``height``."""
    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [14000, 9000, 8193])  # past PIL's error, past its warning
def test_image_past_the_pixel_bound_is_one_line(tmp_path, side):
    path = _png_claiming(tmp_path / "bomb.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(BadInputFileError) as info:
            load_image(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{side * side:,} pixels" in message and f"{limits.MAX_IMAGE_PIXELS:,}" in message


def test_image_at_the_pixel_bound_is_read(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("1", (limits.MAX_IMAGE_PIXELS // 2048, 2048)).save(path)
    assert load_image(path).size == (limits.MAX_IMAGE_PIXELS // 2048, 2048)


@pytest.fixture(scope="module")
def real_bomb(tmp_path_factory):
    """A real 14000 x 14000 PNG (1-bit, 24 kB on disk, 196 million pixels)."""
    path = tmp_path_factory.mktemp("bomb") / "huge.png"
    Image.new("1", (14000, 14000)).save(path)
    return path


@pytest.mark.parametrize("command", ["run", "visualize", "parity", "calibrate"])
def test_real_huge_png_is_one_line_in_every_command(real_bomb, tmp_path, command, monkeypatch,
                                                    vim_digits_export):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    args = {
        "run": ["run", "vim_digits", real_bomb],
        "visualize": ["visualize", "vim_digits", real_bomb, "-o", "v.png"],
        "parity": ["parity", "export", "--images", real_bomb.parent],
        "calibrate": ["calibrate", "export", "--data", real_bomb.parent, "-o", "out"],
    }[command]
    if command in ("parity", "calibrate"):  # `ssmprune export vim_digits -o export`
        shutil.copytree(vim_digits_export, tmp_path / "export")
    result, _, err = invoke(*args)
    if command == "calibrate":
        # a calibration folder skips unreadable files; this one holds nothing else
        assert_one_line_error(result, err, "no readable image")
    else:
        assert_one_line_error(result, err, "196,000,000 pixels", "downscale")


def test_extreme_aspect_ratio_is_refused_before_resizing(tmp_path):
    path = tmp_path / "line.png"
    Image.new("L", (1, 60000)).save(path)
    img = load_image(path)
    with pytest.raises(InputShapeError, match="1x60000") as info:
        preprocess(img, 224, (0.5,) * 3, (0.5,) * 3)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------
# Folders: one walker for parity --images and calibrate --data
# ---------------------------------------------------------------------------

def _tree(root):
    for rel in ("b.png", "a.JPG", "sub/c.png", "sub/deeper/d.tif", "z/e.webp",
                ".hidden/f.png", "sub/.g.png", "notes.txt", "sub/labels.csv"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix in (".txt", ".csv"):
            path.write_text("x")
        else:
            Image.new("RGB", (8, 8), (len(rel) * 10, 0, 0)).save(
                path, format={".JPG": "JPEG", ".webp": "WEBP", ".tif": "TIFF"}.get(path.suffix,
                                                                                    "PNG"))
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)


EXPECTED = ["a.JPG", "b.png", "sub/c.png", "sub/deeper/d.tif", "z/e.webp"]


def test_image_files_walks_subfolders_in_one_order(tmp_path):
    _tree(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path)] == EXPECTED


def test_calibrate_and_parity_read_the_same_files(tmp_path, monkeypatch):
    _tree(tmp_path / "images")
    folder = tmp_path / "images"
    calibrate_files = ImageFolderData(folder, None).files()
    seen = {}

    def capture(directory, images, *args, **kwargs):
        seen["images"] = list(images)
        raise ConfigError("stop here")

    monkeypatch.setattr(ssmprune.parity.compare, "run_parity", capture)
    result, _, err = invoke("parity", tmp_path, "--images", folder)
    assert_one_line_error(result, err, "stop here")
    assert [str(p) for p in calibrate_files] == seen["images"]
    assert [p.relative_to(folder).as_posix() for p in calibrate_files] == EXPECTED


def test_parity_folder_without_images_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    result, _, err = invoke("parity", tmp_path, "--images", tmp_path / "empty")
    assert_one_line_error(result, err, "no image files")


def test_parity_image_count_is_bounded(tmp_path):
    """Counted before any is read: the files can be empty."""
    for i in range(limits.MAX_SAMPLES + 1):
        (tmp_path / f"{i}.png").touch()
    result, _, err = invoke("parity", tmp_path, "--images", tmp_path)
    assert_one_line_error(result, err, f"{limits.MAX_SAMPLES + 1:,} images",
                          f"at most {limits.MAX_SAMPLES:,}")


# ---------------------------------------------------------------------------
# Damaged files: a user error or an image, nothing else
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "GIF", "WEBP", "BMP", "PPM"])
def test_damaged_image_files_are_user_errors(tmp_path, fmt):
    """Bytes flipped at random, or the file cut short: each loads or is one
    BadInputFileError; no other exception reaches the caller."""
    import io
    import random

    good = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(good, format=fmt)
    data = good.getvalue()
    rng = random.Random(fmt)
    path = tmp_path / f"damaged.{fmt.lower()}"
    for i in range(60):
        damaged = bytearray(data[: rng.randrange(len(data))] if i % 3 == 0 else data)
        for _ in range(0 if i % 3 == 0 else rng.randint(1, 10)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(bytes(damaged))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns about some (truncated TIFF reads)
            try:
                assert load_image(path).mode == "RGB"
            except BadInputFileError as err:
                assert "\n" not in str(err)
