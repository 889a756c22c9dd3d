"""Bounds on everything a user can type or a file can claim, each with its reason.

Every bound is checked before anything is allocated, and a value past one is a
``ConfigError`` (an input image past one, a ``BadInputFileError``): one
``error:`` line, exit 2. Where each is checked:

    option values   the CLI's click callbacks (``Bound.callback``), while the
                    options are parsed: before torch is even imported
    tokens          ``check_tokens`` in ``ModelEntry.config`` (models/registry.py),
                    before ``create_model`` builds anything
    image pixels    ``ssmprune.images.load_image`` from the file's header, before
                    decoding (and PIL's own limit is set to the same number);
                    ``resize_crop`` before it resizes
    input batches   ``check_input_bytes`` where the images' size is known: run's
                    batch, calibrate's sets

This module imports nothing heavy: the CLI uses it while parsing options.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ssmprune.errors import ConfigError

# Patches per image a model is built for. The papers' largest inputs are well
# inside it (Vim reports its speed and memory at 1248 x 1248 px, 78 x 78 =
# 6,084 patches); at the bound Vim-B holds 100 MB per (1, 16385, 1536) fp32
# activation and a 50 MB positional embedding, so one image still fits a
# laptop. 160,000 px for plainmamba_digits asked for 10^8 patches: 11.6 GB
# allocated before the OOM killer stopped it.
MAX_TOKENS = 128 * 128

# The largest --img-size any registered model reaches within MAX_TOKENS (2048 =
# 128 patches of 16 px per side; a test derives it from the registry). The CLI
# checks it while parsing, without importing torch; each model's own, smaller
# or equal, limit follows from its patch size and stride in ``check_tokens``.
MAX_IMG_SIZE = 2048

# Pixels of an input image, checked from the file's header before decoding.
# 8192 x 8192 takes any camera's photos (a 61 MP full-frame sensor is 9504 x
# 6336 = 60.2 M); decoded it is 192 MiB as RGB, 256 MiB as a 32-bit mode, and
# the resize to the model's size starts from that. PIL's own default is 89.5 M
# with a warning and an exception at twice that; ``ssmprune.images`` sets PIL's
# limit to this one and reports both as one line.
MAX_IMAGE_PIXELS = 8192 * 8192

# Inputs in one set: parity's --samples and its images, calibrate's --samples
# and --holdout-samples, run's images. ONNX Runtime's calibration and a parity
# verdict settle within hundreds; 4096 inputs at 224 px are 2.5 GB of fp32.
MAX_SAMPLES = 4096

# Bytes of one set of preprocessed fp32 inputs, held at once (run's batch,
# calibrate's sets): bounds MAX_SAMPLES at large image sizes, e.g. 85 inputs at
# 2048 px.
MAX_INPUT_BYTES = 4 * 2**30

# Static batch of an export (and parity's --batch, which must equal it): 256
# images at 2048 px are 12.9 GB of input alone, past what a deployment batch is.
MAX_BATCH = 256

# Timed runs of `run`: a median of 1000 is as precise as latency gets here;
# more only keeps the machine busy.
MAX_REPEATS = 1000

# Seeds: torch.manual_seed takes [-2**63, 2**64) and numpy's default_rng any
# non-negative integer; non-negative int64 is what both take.
MAX_SEED = 2**63 - 1

# Values in a --keep-ratio or --prune-after list: more than the deepest
# registered model has blocks (24). PruneConfig checks each against the model's
# depth; this keeps the parsing and the error message short.
MAX_LIST = 64

# A number in a message: longer ones are shortened (a 4000-digit --seed).
_SHOWN_DIGITS = 24


def _show(value: int) -> str:
    text = str(value)
    if len(text) <= _SHOWN_DIGITS:
        return text
    return f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


@dataclass(frozen=True)
class Bound:
    """An inclusive integer range an option must lie in, and why."""

    low: int
    high: int
    reason: str

    def check(self, name: str, value: int) -> int:
        """``value`` if it lies in [low, high], else a one-line ConfigError naming ``name``."""
        if not self.low <= value <= self.high:
            raise ConfigError(f"{name} {_show(value)} is out of range {self.low:,}..{self.high:,}:"
                              f" {self.reason}")
        return value

    def callback(self, ctx, param, value):
        """click option callback: checks the parsed value (None passes: the default)."""
        if value is None:
            return None
        return self.check(max(param.opts, key=len), value)


IMG_SIZE = Bound(1, MAX_IMG_SIZE, f"past {MAX_IMG_SIZE} px every model has more than "
                                  f"{MAX_TOKENS:,} patches (ssmprune.limits.MAX_TOKENS)")
SEED = Bound(0, MAX_SEED, "a non-negative 64-bit integer (torch and numpy take it)")
SAMPLES = Bound(1, MAX_SAMPLES, "inputs held at once (ssmprune.limits.MAX_SAMPLES)")
BATCH = Bound(1, MAX_BATCH, "a static batch (ssmprune.limits.MAX_BATCH)")
REPEATS = Bound(1, MAX_REPEATS, "timed runs (ssmprune.limits.MAX_REPEATS)")


def not_empty(ctx, param, value):
    """click argument callback: a MODEL or DIRECTORY given as '' (or blanks) is no name,
    and as a path it would be the current folder."""
    if value is not None and not value.strip():
        raise ConfigError(f"{param.human_readable_name} is empty ({value!r}): give a model "
                          "name (`ssmprune info` lists them) or a path")
    return value


def check_list(name: str, values: list) -> list:
    """A comma-separated option's values, at most MAX_LIST of them."""
    if len(values) > MAX_LIST:
        raise ConfigError(f"{name} has {len(values):,} values; at most {MAX_LIST} "
                          "(ssmprune.limits.MAX_LIST)")
    return values


def check_image_count(n: int) -> int:
    """Images given at once (a run's files, parity's images): at most MAX_SAMPLES."""
    if n > MAX_SAMPLES:
        raise ConfigError(f"{n:,} images given; at most {MAX_SAMPLES:,} are read at once "
                          "(ssmprune.limits.MAX_SAMPLES)")
    return n


def check_input_bytes(what: str, n: int, channels: int, img_size: int) -> None:
    """``n`` preprocessed fp32 inputs of (channels, img_size, img_size) fit MAX_INPUT_BYTES."""
    size = n * channels * img_size * img_size * 4
    if size > MAX_INPUT_BYTES:
        raise ConfigError(f"{n:,} {what} of {channels} x {img_size} x {img_size} fp32 are "
                          f"{size / 2**30:.1f} GiB; at most {MAX_INPUT_BYTES / 2**30:.0f} GiB "
                          "are held at once (ssmprune.limits.MAX_INPUT_BYTES): use fewer")


def patches(config) -> int:
    """Patches per image of a model config: ``num_tokens`` (PlainMamba) or
    ``num_patches`` (Vim, its class token aside); a family's config has one."""
    for name in ("num_tokens", "num_patches"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise TypeError(f"{type(config).__name__} has neither num_tokens nor num_patches: "
                    "ssmprune.limits cannot bound its size")


def largest_img_size(config) -> int:
    """The largest valid img_size whose patches, with ``config``'s other fields, fit
    MAX_TOKENS.

    Patches grow with img_size, so a doubling then a bisection finds the largest
    that fits, without building anything; then the first size below it that the
    config's ``validate`` accepts (that tiles with the patch size and stride).
    """
    def fits(size: int) -> bool:
        return patches(dataclasses.replace(config, img_size=size)) <= MAX_TOKENS

    def valid(size: int) -> bool:
        validate = getattr(dataclasses.replace(config, img_size=size), "validate", None)
        try:
            if validate is not None:
                validate()
        except ConfigError:
            return False
        return True

    low, high = 1, 2
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return next((size for size in range(low, 0, -1) if valid(size)), low)


def check_tokens(name: str, config) -> None:
    """Refuse a config of model ``name`` with more than MAX_TOKENS patches, naming the
    largest img_size it could have."""
    n = patches(config)
    if n > MAX_TOKENS:
        raise ConfigError(
            f"{name}: img_size {config.img_size} gives {n:,} patches per image, more than the "
            f"{MAX_TOKENS:,} ssmprune builds (ssmprune.limits.MAX_TOKENS); at most img_size "
            f"{largest_img_size(config)} for this model")
