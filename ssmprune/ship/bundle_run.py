#!/usr/bin/env python3
"""Classify images with the engine(s) of this bundle (written by ``ssmprune bundle``).

Needs Python 3.9+, numpy, TensorRT (or TensorRT-RTX, as the README says) and an NVIDIA
driver; Pillow only to read image files (without it, give ``.npy`` inputs). Nothing
else: not torch, not ssmprune.

    python run.py IMAGE_OR_NPY... [--engine FILE] [--top K] [--repeats N] [--no-resize]
    python run.py --check                      # the sums only
    python run.py IMAGE... --preprocess-only OUT.npy   # the input batch, no TensorRT

What it does, in this order, each failure one ``error:`` line and exit status 2:

1. checks every file ``SHA256SUMS`` lists against its sha256 (what ``sha256sum -c
   SHA256SUMS`` checks) before anything in the folder is read or loaded;
2. picks the engine: ``--engine``, the only one, or the one built for this GPU;
3. prepares the inputs exactly as ``ssmprune run`` does: an image is read as 8-bit RGB
   (EXIF orientation applied), its shorter side resized to img_size / 0.875 (bicubic),
   centre-cropped to img_size, scaled to [0, 1] and normalised by the mean and std the
   engine's manifest records; a ``.npy`` file holds inputs already prepared, float32
   (3, H, W) or (N, 3, H, W);
4. imports TensorRT, checks its version and this GPU against the manifest, loads the
   engine and runs the images in batches of the engine's batch (a static batch is
   filled by repeating the last image; only the given images are reported);
5. prints the top classes per image (with the names of ``labels.txt``, if there is one)
   and the median latency.

GPU memory is handled through the CUDA driver library (libcuda, via ctypes), so no CUDA
Python package is needed.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

SUMS_FILE = "SHA256SUMS"
LABELS_FILE = "labels.txt"
ENGINE_KIND = "ssmprune-engine"
MANIFEST_SUFFIX = ".json"
# ssmprune.images: the released evaluation pipelines' crop, and the size bounds.
CROP_PCT = 0.875
MAX_IMAGE_PIXELS = 8192 * 8192
MAX_INPUTS = 4096  # images or .npy samples in one run (ssmprune.limits.MAX_SAMPLES)
MAX_MANIFEST_BYTES = 1 << 20
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
_16_BIT_MAX = 65535
# TensorRT's Python module per flavour, in order of preference (TensorRT-RTX ships as
# ``tensorrt_rtx`` in NVIDIA's SDK and as ``tensorrt_rtx_bindings`` on PyPI).
TRT_MODULES = {"tensorrt": ("tensorrt",), "tensorrt_rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings")}
TRT_NAMES = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT-RTX"}
_SUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
USER_ERROR_EXIT = 2


class BundleError(Exception):
    """A problem with the bundle, the inputs or this machine: printed as one line, exit 2."""


# ---------------------------------------------------------------------------- sums


def read_sums(folder: Path) -> dict[str, str]:
    """``SHA256SUMS`` (sha256sum's format: ``HEX  NAME``) as {name: sha256}; names are
    plain file names of ``folder``."""
    path = folder / SUMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: this folder is not a complete ssmprune bundle "
                          "(every bundle lists its files' sha256 there)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        found = _SUM_LINE.fullmatch(line)
        name = found.group(2) if found else ""
        if not found or name in (".", "..") or "/" in name or "\\" in name or name in sums:
            raise BundleError(f"{path} line {number} is not 'SHA256  FILE' for a file of this "
                              "folder (listed once)")
        sums[name] = found.group(1)
    if not sums:
        raise BundleError(f"{path} lists no files")
    return sums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sums(folder: Path, sums: dict[str, str]) -> None:
    """Every listed file exists, is a regular file inside ``folder`` and has its sha256."""
    root = folder.resolve()
    for name, expected in sums.items():
        path = folder / name
        real = path.resolve()
        if real.parent != root or not real.is_file():
            raise BundleError(f"{name}, listed in {SUMS_FILE}, is missing or not a regular "
                              "file of the bundle")
        if sha256_of(real) != expected:
            raise BundleError(f"{name} does not match its sha256 in {SUMS_FILE}: the file is "
                              "corrupted or was replaced; refusing to load anything (copy the "
                              "bundle again)")


# ---------------------------------------------------------------------------- engines


@dataclass
class Engine:
    """An engine of the bundle and the fields of its manifest that running it needs."""

    file: str
    flavour: str          # tensorrt | tensorrt_rtx
    version: str          # of TensorRT that built it
    version_compatible: bool
    targets: Optional[list[str]]   # sm_XY; None: TensorRT-RTX's defaults
    built_on: Optional[str]
    hardware_compatible: bool
    plugin_form: Optional[str]
    ptx_version: Optional[str]
    input_name: str
    input_shape: list[int]         # batch -1 when dynamic
    batch_range: Optional[list[int]]
    img_size: int
    in_chans: int
    mean: list[float]
    std: list[float]
    model: str


def _field(data: Any, *keys: str, kind: Any = None, where: str = "") -> Any:
    value = data
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise BundleError(f"{where} has no {'.'.join(keys)}: not a manifest ssmprune "
                              "wrote")
        value = value[key]
    if kind is not None and not isinstance(value, kind):
        raise BundleError(f"{where}: {'.'.join(keys)} has the wrong type")
    return value


def read_engine(folder: Path, manifest_name: str) -> Engine:
    """The engine whose manifest is ``manifest_name`` (``X.engine.json``). The file passed
    its sum check already; the fields read here are type-checked, nothing more."""
    path = folder / manifest_name
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_name} is larger than 1 MiB: not a manifest ssmprune wrote")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(f"{manifest_name} is not valid JSON ({err})") from None
    w = manifest_name
    if not isinstance(data, dict) or data.get("kind") != ENGINE_KIND:
        raise BundleError(f"{manifest_name} is not an ssmprune engine manifest")
    file = _field(data, "engine", "file", kind=str, where=w)
    if manifest_name != file + MANIFEST_SUFFIX:
        raise BundleError(f"{manifest_name} describes engine {file!r}, not "
                          f"{manifest_name[:-len(MANIFEST_SUFFIX)]!r}")
    if data.get("source") is None:
        raise BundleError(f"{manifest_name} has no export manifest to preprocess images by")
    (first,) = _field(data, "onnx", "inputs", kind=list, where=w)[:1] or [None]
    if not isinstance(first, dict):
        raise BundleError(f"{manifest_name} records no engine input")
    cfg = _field(data, "source", "config", kind=dict, where=w)
    flavour = _field(data, "tensorrt", "flavour", kind=str, where=w)
    if flavour not in TRT_MODULES:
        raise BundleError(f"{manifest_name}: unknown TensorRT flavour {flavour[:40]!r}")
    gpu = _field(data, "gpu", kind=dict, where=w)
    return Engine(
        file=file, flavour=flavour,
        version=_field(data, "tensorrt", "version", kind=str, where=w),
        version_compatible=bool(data.get("version_compatible", False)),
        targets=gpu.get("targets"), built_on=gpu.get("built_on"),
        hardware_compatible=bool(gpu.get("hardware_compatible", False)),
        plugin_form=data.get("plugin_form"), ptx_version=data.get("ptx_version"),
        input_name=_field(first, "name", kind=str, where=w),
        input_shape=_field(first, "shape", kind=list, where=w),
        batch_range=data.get("batch_range"),
        img_size=_field(cfg, "img_size", kind=int, where=w),
        in_chans=_field(cfg, "in_chans", kind=int, where=w),
        mean=[float(v) for v in _field(cfg, "mean", kind=list, where=w)],
        std=[float(v) for v in _field(cfg, "std", kind=list, where=w)],
        model=str(data["source"].get("model", "?")))


def bundle_engines(folder: Path, sums: dict[str, str]) -> list[Engine]:
    """Every engine the sums list (by its ``.engine.json`` manifest), sorted by file."""
    manifests = sorted(n for n in sums if n.endswith(".engine" + MANIFEST_SUFFIX))
    engines = [read_engine(folder, n) for n in manifests]
    unlisted = [e.file for e in engines if e.file not in sums]
    if unlisted:
        raise BundleError(f"{', '.join(unlisted)} is not listed in {SUMS_FILE}: its sha256 "
                          "cannot be checked; refusing it")
    for e, name in zip(engines, manifests):
        recorded = json.loads((folder / name).read_text(encoding="utf-8"))["engine"]
        if recorded.get("sha256") != sums[e.file]:
            raise BundleError(f"{e.file}: its manifest records another sha256 than "
                              f"{SUMS_FILE}: not the engine its manifest describes")
    if not engines:
        raise BundleError(f"{SUMS_FILE} lists no engine manifest (*.engine.json)")
    return engines


# Jetson's integrated GPUs: engines are not portable across platforms, so a hardware-
# compatible engine built on a discrete GPU does not load there.
JETSON_ARCHS = ("sm_72", "sm_87", "sm_101", "sm_110")


def engine_runs_on(engine: Engine, arch: str) -> bool:
    if engine.hardware_compatible:
        return int(arch[3:]) >= 80 and arch not in JETSON_ARCHS
    if engine.targets is not None:
        return arch in engine.targets
    return engine.built_on in (None, arch)


def pick_engine(engines: list[Engine], asked: Optional[str], arch: Optional[str]) -> Engine:
    """``asked`` (a file name), the only engine, or the one for GPU ``arch`` (None: not
    known yet; then more than one engine is a question for later: returns None)."""
    if asked is not None:
        for e in engines:
            if asked in (e.file, e.file + MANIFEST_SUFFIX):
                return e
        raise BundleError(f"--engine {asked}: not an engine of this bundle (it has "
                          f"{', '.join(e.file for e in engines)})")
    if len(engines) == 1:
        return engines[0]
    if arch is None:
        return None  # type: ignore[return-value]
    fitting = [e for e in engines if engine_runs_on(e, arch)]
    if not fitting:
        raise BundleError(f"no engine of this bundle is built for this GPU ({arch}): it has "
                          + "; ".join(f"{e.file} for {', '.join(e.targets or ['its defaults'])}"
                                      for e in engines))
    return fitting[0]


# ---------------------------------------------------------------------------- inputs
# The same rules as ssmprune.images (load_image, to_rgb, resize_crop, preprocess).


def _pil():
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        return None
    return Image, ImageOps, UnidentifiedImageError


def _deep_to_8_bit(img, Image, name: str):
    """A 16-bit, 32-bit integer or float single-channel image as 8-bit L."""
    a = np.asarray(img).astype(np.float64)
    if not np.isfinite(a).all():
        raise BundleError(f"{name}: the {img.mode} image holds NaN or inf values")
    low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16"):
        scaled = a / _16_BIT_MAX * 255
    elif img.mode == "I" and low >= 0 and high <= _16_BIT_MAX:
        scaled = a / _16_BIT_MAX * 255
    elif img.mode == "F" and low >= 0 and high <= 1:
        scaled = a * 255
    elif high > low:
        scaled = (a - low) / (high - low) * 255
    else:
        scaled = np.zeros_like(a)
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(img, Image, name: str = "image"):
    """``img`` of any PIL mode as 8-bit RGB (ssmprune.images.to_rgb's rules)."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _deep_to_8_bit(img, Image, name)
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif img.mode == "La":
        img = img.convert("LA")
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: Path):
    """An image file as 8-bit RGB, upright; Pillow needed."""
    pil = _pil()
    if pil is None:
        raise BundleError(f"{path}: reading image files needs Pillow (`pip install pillow`); "
                          "without it give .npy inputs (prepared with --preprocess-only on a "
                          "machine that has it)")
    Image, ImageOps, UnidentifiedImageError = pil
    import warnings

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise BundleError(f"{path}: the image is too large ({w}x{h}); at most "
                                      f"{MAX_IMAGE_PIXELS:,} pixels are read: downscale it")
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img, Image, str(path))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BundleError(f"{path}: the image is too large; at most {MAX_IMAGE_PIXELS:,} "
                          "pixels are read: downscale it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BundleError(f"{path} is not a readable image ({first})") from None


def resize_crop(img, img_size: int):
    """Resize the shorter side to img_size / 0.875 (bicubic), centre-crop img_size."""
    from PIL import Image

    short = round(img_size / CROP_PCT)
    w, h = img.size
    scale = short / min(w, h)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise BundleError(f"image is {w}x{h}: resizing its shorter side to {short} px would "
                          f"make it {size[0]}x{size[1]}; crop it nearer to a square first")
    img = img.resize(size, Image.BICUBIC)
    w, h = img.size
    left, top = (w - img_size) // 2, (h - img_size) // 2
    return img.crop((left, top, left + img_size, top + img_size))


def preprocess(img, img_size: int, mean, std, resize: bool = True) -> np.ndarray:
    """PIL RGB image -> (3, img_size, img_size) float32, normalised (as ssmprune's)."""
    if resize:
        img = resize_crop(img, img_size)
    elif img.size != (img_size, img_size):
        raise BundleError(f"image is {img.size[0]}x{img.size[1]} but the model takes "
                          f"{img_size}x{img_size} (drop --no-resize to resize it)")
    arr = np.asarray(img, dtype=np.float32) / 255.0
    x = arr.transpose(2, 0, 1)
    mean_a = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_a = np.asarray(std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean_a) / std_a)


def load_npy(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """Prepared inputs from a .npy file: float32 ``shape`` or (N, *shape); no pickles."""
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"{path} is not a readable .npy file ({err})") from None
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or tuple(a.shape[1:]) != shape or a.dtype != np.float32:
        raise BundleError(f"{path} holds {a.dtype} {tuple(a.shape)}; the model takes float32 "
                          f"{shape} or (N, {', '.join(map(str, shape))}), prepared as "
                          "--preprocess-only writes it")
    if len(a) > MAX_INPUTS:
        raise BundleError(f"{path} holds {len(a)} inputs, more than {MAX_INPUTS}")
    x = np.array(a)
    if not np.isfinite(x).all():
        raise BundleError(f"{path} holds NaN or inf values")
    return x


def prepare_inputs(paths: list[str], engine: Engine, resize: bool
                   ) -> tuple[np.ndarray, list[str]]:
    """(n, c, s, s) float32 inputs and one name per input."""
    if engine.in_chans != 3:
        raise BundleError(f"images are RGB but the model takes {engine.in_chans} channels")
    shape = (engine.in_chans, engine.img_size, engine.img_size)
    arrays, names = [], []
    for text in paths:
        path = Path(text)
        if not path.is_file():
            raise BundleError(f"input {path} does not exist or is not a file")
        if path.suffix.lower() == ".npy":
            x = load_npy(path, shape)
            arrays.append(x)
            names += [path.name if len(x) == 1 else f"{path.name}[{i}]" for i in range(len(x))]
        else:
            arrays.append(preprocess(load_image(path), engine.img_size, engine.mean,
                                     engine.std, resize)[None])
            names.append(str(path))
        if len(names) > MAX_INPUTS:
            raise BundleError(f"more than {MAX_INPUTS} inputs in one run")
    return np.concatenate(arrays), names


# ---------------------------------------------------------------------------- CUDA


class Cuda:
    """The few CUDA driver calls running an engine needs, through libcuda and ctypes."""

    def __init__(self):
        names = [ctypes.util.find_library("cuda"), "libcuda.so.1", "libcuda.so", "nvcuda.dll"]
        self.lib = None
        for name in filter(None, names):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise BundleError("no NVIDIA driver here (libcuda not found): running an engine "
                              "needs an NVIDIA GPU and its driver")
        self._call("cuInit", 0)
        count = ctypes.c_int(0)
        self._call("cuDeviceGetCount", ctypes.byref(count))
        if count.value < 1:
            raise BundleError("the NVIDIA driver sees no GPU")
        self.device = ctypes.c_int(0)
        self._call("cuDeviceGet", ctypes.byref(self.device), 0)
        self.context = ctypes.c_void_p()
        self._call("cuDevicePrimaryCtxRetain", ctypes.byref(self.context), self.device)
        self._call("cuCtxSetCurrent", self.context)

    def _call(self, name: str, *args) -> None:
        status = getattr(self.lib, name)(*args)
        if status != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(text))
            raise BundleError(f"CUDA {name} failed: "
                              f"{(text.value or b'error %d' % status).decode()}")

    def arch(self) -> str:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._call("cuDeviceGetAttribute", ctypes.byref(major), 75, self.device)  # CC major
        self._call("cuDeviceGetAttribute", ctypes.byref(minor), 76, self.device)  # CC minor
        return f"sm_{major.value}{minor.value}"

    def driver_version(self) -> tuple[int, int]:
        v = ctypes.c_int(0)
        self._call("cuDriverGetVersion", ctypes.byref(v))
        return v.value // 1000, (v.value % 1000) // 10

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64(0)
        self._call("cuMemAlloc_v2", ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1)))
        return ptr.value

    def free(self, ptr: int) -> None:
        self._call("cuMemFree_v2", ctypes.c_uint64(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._call("cuMemcpyHtoD_v2", ctypes.c_uint64(ptr), array.ctypes.data_as(ctypes.c_void_p),
                   ctypes.c_size_t(array.nbytes))

    def to_host(self, array: np.ndarray, ptr: int) -> np.ndarray:
        self._call("cuMemcpyDtoH_v2", array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr),
                   ctypes.c_size_t(array.nbytes))
        return array

    def stream_create(self) -> int:
        """A new blocking stream (ordered with the synchronous copies), as an int handle."""
        stream = ctypes.c_void_p()
        self._call("cuStreamCreate", ctypes.byref(stream), 0)
        return stream.value or 0

    def stream_destroy(self, stream: int) -> None:
        self._call("cuStreamDestroy_v2", ctypes.c_void_p(stream))

    def synchronize(self, stream: int) -> None:
        self._call("cuStreamSynchronize", ctypes.c_void_p(stream))


def driver_max_ptx(cuda: tuple[int, int]) -> int:
    """The newest PTX ISA (84 = 8.4) a driver of CUDA version ``cuda`` loads
    (ssmprune.plugins.ptx.driver_max_ptx)."""
    major, minor = cuda
    if major >= 13:
        return 90 + 10 * (major - 13) + minor
    if major == 12:
        return 80 + minor - (minor >= 6)
    return 70 + minor if major == 11 else 0


# ---------------------------------------------------------------------------- TensorRT


def import_tensorrt(flavour: str, version: str):
    """The TensorRT module of ``flavour``; a missing one is one line naming what to install."""
    import importlib

    for name in TRT_MODULES[flavour]:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
        except OSError as err:  # the bindings import, their libraries do not load
            raise BundleError(f"{name} is installed but its libraries do not load ({err})") \
                from None
    modules = " or ".join(TRT_MODULES[flavour])
    raise BundleError(f"{TRT_NAMES[flavour]} is not installed (Python module {modules}): this "
                      f"engine needs {TRT_NAMES[flavour]} {version}; see README.md")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split(".") if p.isdigit())


def check_versions(engine: Engine, trt, cuda: Cuda, arch: str) -> None:
    """This TensorRT, GPU and driver can run ``engine``, as far as its manifest tells."""
    have = str(getattr(trt, "__version__", "?"))
    if have != engine.version:
        same_major = version_tuple(have)[:1] == version_tuple(engine.version)[:1]
        if not (engine.version_compatible and same_major
                and version_tuple(have) >= version_tuple(engine.version)):
            raise BundleError(f"{engine.file} was built with {TRT_NAMES[engine.flavour]} "
                              f"{engine.version}, this machine has {have}: an engine runs only "
                              "on the TensorRT version that built it (see README.md)")
    if not engine_runs_on(engine, arch):
        raise BundleError(f"{engine.file} was built for "
                          f"{', '.join(engine.targets or [str(engine.built_on)])}, this GPU is "
                          f"{arch}")
    if engine.plugin_form == "aot" and engine.ptx_version:
        built = version_tuple(engine.ptx_version)
        accepted = driver_max_ptx(cuda.driver_version())
        if len(built) == 2 and 10 * built[0] + built[1] > accepted:
            raise BundleError(f"{engine.file}'s plugin kernels are PTX {engine.ptx_version}, "
                              f"newer than this NVIDIA driver loads: update the driver")
    if engine.plugin_form not in (None, "aot"):
        raise BundleError(f"{engine.file} holds {engine.plugin_form} plugins, which need "
                          "ssmprune's Python plugins: not runnable from a bundle")


def _nptype(trt, dtype) -> np.dtype:
    if hasattr(trt, "nptype"):
        return np.dtype(trt.nptype(dtype))
    names = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64,
             "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
    return np.dtype(names[str(dtype).rsplit(".", 1)[-1]])


def batches(x: np.ndarray, engine: Engine) -> tuple[list[np.ndarray], list[int]]:
    """``x`` in the batches the engine takes, and how many real inputs each holds. A static
    batch b: chunks of b, the last filled by repeating its last input; a dynamic one: chunks
    of up to its largest batch, one below its smallest filled up to it."""
    static = engine.input_shape[0]
    low, high = (static, static) if static > 0 else \
        ((engine.batch_range or [1, 1, len(x)])[0], (engine.batch_range or [1, 1, len(x)])[2])
    chunks, real = [], []
    for i in range(0, len(x), high):
        chunk = x[i:i + high]
        pad = max(low, len(chunk)) - len(chunk) if static < 0 else high - len(chunk)
        chunks.append(np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk)
        real.append(len(chunk))
    return chunks, real


def run_engine(trt, cuda: Cuda, folder: Path, engine: Engine, sha256: str, x: np.ndarray,
               repeats: int) -> tuple[np.ndarray, list[float], int]:
    """Logits of the n inputs ``x`` (first output), latencies (ms) of the first batch, and
    the batch size used. The engine's bytes are checked against ``sha256`` once more as
    they are loaded (the file could have changed since the sums were checked)."""
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    if engine.version_compatible:
        # A version-compatible plan carries its own lean runtime, which TensorRT runs only
        # once told the plan is trusted (its sha256 was checked above and is again below).
        runtime.engine_host_code_allowed = True
    data = (folder / engine.file).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError(f"{engine.file} changed since its sum was checked; refusing it")
    if hasattr(runtime, "get_engine_validity"):  # TensorRT-RTX says why before loading
        validity, diagnostics = runtime.get_engine_validity(data)
        if validity == trt.EngineValidity.INVALID:
            flags = getattr(trt, "EngineInvalidityDiagnostics", None)
            reasons = [m for m, v in getattr(flags, "__members__", {}).items()
                       if int(diagnostics) & int(v)]
            raise BundleError(f"{TRT_NAMES[engine.flavour]} cannot run {engine.file} here: "
                              f"{', '.join(reasons) or 'invalid'}")
    loaded = runtime.deserialize_cuda_engine(data)
    if loaded is None:
        raise BundleError(f"TensorRT could not deserialize {engine.file}")
    context = loaded.create_execution_context()
    names = [loaded.get_tensor_name(i) for i in range(loaded.num_io_tensors)]
    inputs = [n for n in names if loaded.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    if inputs != [engine.input_name]:
        raise BundleError(f"{engine.file} takes inputs {inputs}, its manifest says "
                          f"{engine.input_name}")
    outputs = [n for n in names if n not in inputs]
    chunks, real = batches(x, engine)
    most = max(len(c) for c in chunks)
    buffers: dict[str, int] = {}
    # A stream of its own: TensorRT synchronises the device around runs on the default one.
    stream = cuda.stream_create()
    try:
        def infer(chunk: np.ndarray) -> np.ndarray:
            if not context.set_input_shape(engine.input_name, chunk.shape):
                raise BundleError(f"{engine.file} does not take a batch of {len(chunk)} "
                                  f"(input shape {chunk.shape})")
            hosts = {engine.input_name: chunk.astype(
                _nptype(trt, loaded.get_tensor_dtype(engine.input_name)))}
            for n in outputs:
                hosts[n] = np.empty(tuple(context.get_tensor_shape(n)),
                                    _nptype(trt, loaded.get_tensor_dtype(n)))
            for n in names:
                if n not in buffers:  # sized for the largest batch
                    buffers[n] = cuda.alloc(hosts[n].nbytes // len(chunk) * most)
                context.set_tensor_address(n, buffers[n])
            cuda.to_device(buffers[engine.input_name], hosts[engine.input_name])
            if not context.execute_async_v3(stream):
                raise BundleError(f"TensorRT failed to run {engine.file}")
            cuda.synchronize(stream)
            return cuda.to_host(hosts[outputs[0]], buffers[outputs[0]])

        infer(chunks[0])  # warm-up
        logits = np.concatenate([infer(c)[:k] for c, k in zip(chunks, real)])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            infer(chunks[0])
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        for ptr in buffers.values():
            cuda.free(ptr)
        cuda.stream_destroy(stream)
    return logits, times, len(chunks[0])


# ---------------------------------------------------------------------------- output


def read_labels(folder: Path, sums: dict[str, str]) -> Optional[list[str]]:
    if LABELS_FILE not in sums:
        return None
    return [line.strip() for line in (folder / LABELS_FILE).read_text("utf-8").splitlines()
            if line.strip()]


def top_k(logits: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per input, the k best (class, probability) pairs (softmax in float64)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[(int(c), float(p[c])) for c in row] for row, p in zip(order, probs)]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run.py", description="Classify images with this bundle's engine (TensorRT).")
    parser.add_argument("inputs", nargs="*", help="image files (needs Pillow) or .npy files of "
                        "prepared float32 inputs, (3, H, W) or (N, 3, H, W)")
    parser.add_argument("--engine", help="engine file of the bundle to run (default: the one "
                        "built for this GPU)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per input (1-100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (1-1000)")
    parser.add_argument("--no-resize", action="store_true",
                        help="require images already at the model's size")
    parser.add_argument("--check", action="store_true", help="check the sums and stop")
    parser.add_argument("--preprocess-only", metavar="OUT.npy",
                        help="write the prepared input batch to OUT.npy and stop (no TensorRT)")
    args = parser.parse_args(argv)
    if not 1 <= args.top <= 100 or not 1 <= args.repeats <= 1000:
        parser.error("--top takes 1 to 100, --repeats 1 to 1000")
    if not args.check and not args.inputs:
        parser.error("give at least one image or .npy file (or --check)")
    if len(args.inputs) > MAX_INPUTS:
        parser.error(f"at most {MAX_INPUTS} inputs")
    return args


def main(argv: Optional[list[str]] = None, folder: Optional[Path] = None) -> int:
    args = parse_args(argv)
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent
    try:
        sums = read_sums(folder)
        check_sums(folder, sums)
        engines = bundle_engines(folder, sums)
        if args.check:
            print(f"{len(sums)} files match {SUMS_FILE}; engines: "
                  f"{', '.join(e.file for e in engines)}")
            return 0
        engine = pick_engine(engines, args.engine, None)
        x, names = prepare_inputs(args.inputs, engine or engines[0], not args.no_resize)
        if args.preprocess_only:
            np.save(args.preprocess_only, x)
            print(f"wrote {args.preprocess_only}: float32 {tuple(x.shape)}")
            return 0
        flavours = {e.flavour for e in ([engine] if engine else engines)}
        trt = (import_tensorrt(next(iter(flavours)), (engine or engines[0]).version)
               if len(flavours) == 1 else None)
        cuda = Cuda()
        arch = cuda.arch()
        engine = engine or pick_engine(engines, None, arch)
        trt = trt or import_tensorrt(engine.flavour, engine.version)
        check_versions(engine, trt, cuda, arch)
        logits, times, batch = run_engine(trt, cuda, folder, engine, sums[engine.file], x,
                                           args.repeats)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    labels = read_labels(folder, sums)
    print(f"{engine.file}: {engine.model} on {arch} with {TRT_NAMES[engine.flavour]} "
          f"{getattr(trt, '__version__', '?')}, batch {batch}")
    for name, best in zip(names, top_k(logits, args.top)):
        shown = ", ".join(f"{c}{f' ({labels[c]})' if labels and c < len(labels) else ''}: "
                          f"{p:.4f}" for c, p in best)
        print(f"{name}: top-{len(best)} classes {shown}")
    med = sorted(times)[len(times) // 2]
    print(f"latency {med:.2f} ms per batch of {batch} (median of {len(times)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
