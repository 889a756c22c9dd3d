"""Options shared by several commands: model size, seed and pruning."""

from __future__ import annotations

import click

from ssmprune import limits
from ssmprune.errors import ConfigError


def overrides(img_size):
    return {} if img_size is None else {"img_size": img_size}


def img_size_option(fn):
    """--img-size, bounded while parsing (ssmprune.limits.IMG_SIZE)."""
    return click.option("--img-size", type=int, default=None, callback=limits.IMG_SIZE.callback,
                        help="Input resolution (default: the model's).")(fn)


def seed_option(fn):
    """--seed of the random weights, bounded while parsing (ssmprune.limits.SEED)."""
    return click.option("--seed", type=int, default=0, show_default=True,
                        callback=limits.SEED.callback, help="Seed of the random weights.")(fn)


def prune_options(fn):
    """--prune PRESET, or --keep-ratio R --prune-after B,B [--importance] [--alignment]."""
    options = [
        click.option("--prune", "preset", default=None,
                      help="Pruning preset, e.g. vim_s_paper (see `ssmprune info --presets`)."),
        click.option("--keep-ratio", default=None,
                      help="Keep ratio per pruning point: one value or one per point, e.g. 0.7."),
        click.option("--prune-after", default=None,
                      help="1-based blocks after which to prune, e.g. 6,12,18."),
        click.option("--importance", type=click.Choice(["clip", "l1", "l2"]), default=None,
                     help="Token importance (default clip, the paper's)."),
        click.option("--alignment", type=click.Choice(["gap", "none"]), default=None,
                     help="Hidden-state alignment (default gap)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _prune_config(preset, keep_ratio, prune_after, importance, alignment):
    """The PruneConfig or preset name the options ask for, or None for dense."""
    from ssmprune.pruning import PruneConfig

    custom = keep_ratio is not None or prune_after is not None
    if preset and custom:
        raise ConfigError("give either --prune PRESET or --keep-ratio/--prune-after, not both")
    if preset:
        if importance or alignment:
            from ssmprune.pruning.config import PRESETS

            base = PRESETS[preset][1] if preset in PRESETS else None
            if base is not None:
                return preset, PruneConfig(base.keep_ratio, base.prune_after,
                                           importance or base.importance,
                                           alignment or base.alignment)
        return preset, None
    if not custom:
        if importance or alignment:
            raise ConfigError("--importance/--alignment need --prune or --keep-ratio/--prune-after")
        return None, None
    if keep_ratio is None or prune_after is None:
        raise ConfigError("--keep-ratio and --prune-after go together")
    try:
        ratios = tuple(float(r) for r in limits.check_list("--keep-ratio", keep_ratio.split(",")))
        blocks = tuple(int(b) for b in limits.check_list("--prune-after", prune_after.split(",")))
    except ValueError:
        raise ConfigError(f"bad --keep-ratio {keep_ratio!r} or --prune-after {prune_after!r}: "
                          "use comma-separated numbers") from None
    return None, PruneConfig(ratios[0] if len(ratios) == 1 else ratios, blocks,
                             importance or "clip", alignment or "gap")


def prune_arg(preset, keep_ratio, prune_after, importance, alignment):
    name, config = _prune_config(preset, keep_ratio, prune_after, importance, alignment)
    return config if config is not None else name


DEFAULT_MAX_BATCH = 32  # `--batch dynamic`: a server's batcher rarely forms larger batches


def batch_spec(ctx, param, value):
    """``--batch`` of ``export``: N (static) or dynamic[:MAX] -> (batch, max_batch or None)."""
    text = str(value).strip().lower()
    if text == "dynamic" or text.startswith("dynamic:"):
        _, _, high = text.partition(":")
        try:
            top = int(high) if high else DEFAULT_MAX_BATCH
        except ValueError:
            raise ConfigError(f"--batch {value!r}: MAX in dynamic:MAX is a number") from None
        return 1, limits.Bound(2, limits.MAX_BATCH, "the largest batch of a dynamic batch "
                               "(ssmprune.limits.MAX_BATCH; a batch of 1 is --batch 1)"
                               ).check("--batch dynamic:MAX", top)
    try:
        static = int(text)
    except ValueError:
        raise ConfigError(f"--batch {value!r}: give a number or dynamic[:MAX]") from None
    return limits.BATCH.check("--batch", static), None


def batch_range(ctx, param, value):
    """--batch-range MIN:OPT:MAX -> (min, opt, max), each a bounded batch."""
    if value is None:
        return None
    parts = value.split(":")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--batch-range {value!r}: give MIN:OPT:MAX, e.g. 1:8:32")
    return tuple(limits.BATCH.check("--batch-range", int(p)) for p in parts)


def comma_list(ctx, param, value):
    """A repeatable option whose values may also be comma-separated -> one flat tuple."""
    out = []
    for v in value:
        out.extend(t.strip() for t in v.split(",") if t.strip())
    return tuple(out)
