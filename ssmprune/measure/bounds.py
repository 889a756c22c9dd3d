"""Bounds on the options of ``bench``, ``eval`` and ``sweep``, each with its reason.

Same rules as ``ssmprune.limits`` (whose ``Bound`` they are): checked while the
options are parsed, before torch is imported or anything is allocated; this
module imports nothing heavy.
"""

from __future__ import annotations

from ssmprune.errors import ConfigError
from ssmprune.limits import MAX_BATCH, MAX_LIST, MAX_REPEATS, Bound, check_list

# Warm-up runs per (target, runtime, batch): a few settle caches and allocators;
# past MAX_REPEATS they only keep the machine busy.
WARMUP = Bound(0, MAX_REPEATS, "warm-up runs (ssmprune.limits.MAX_REPEATS)")
# Timed rounds; each round runs every target once.
ITERATIONS = Bound(1, MAX_REPEATS, "timed rounds (ssmprune.limits.MAX_REPEATS)")
# --seconds: timed rounds until this much time has passed, per runtime and batch.
# An hour per group is past any useful benchmark on one machine.
MAX_SECONDS = 3600.0
# Intra-op threads of torch and ONNX Runtime: more than any machine here has cores.
THREADS = Bound(1, 1024, "intra-op threads")
# Inputs per forward when ``eval`` runs a model by name (exported files use
# their static batch).
EVAL_BATCH = Bound(1, MAX_BATCH, "inputs per forward (ssmprune.limits.MAX_BATCH)")
# Lines of a --labels file: the largest classification heads in use (ImageNet-21k,
# 21,841 classes) fit.
MAX_LABELS = 100_000


def check_seconds(ctx, param, value):
    """click callback of --seconds: None, or 0 < S <= MAX_SECONDS."""
    if value is None:
        return None
    if not 0 < value <= MAX_SECONDS:
        raise ConfigError(f"--seconds {value:g} is out of range (0, {MAX_SECONDS:g}]: seconds of "
                          "timed rounds per runtime and batch")
    return value


def int_list(name: str, text: str, bound: Bound) -> tuple[int, ...]:
    """A comma-separated list of integers, each within ``bound``, at most MAX_LIST of them."""
    values = check_list(name, [v for v in text.split(",") if v.strip()])
    try:
        out = tuple(int(v) for v in values)
    except ValueError:
        raise ConfigError(f"bad {name} {text!r}: use comma-separated integers, e.g. 1,8") from None
    if not out:
        raise ConfigError(f"{name} is empty")
    for v in out:
        bound.check(name, v)
    return tuple(dict.fromkeys(out))


def ratio_list(name: str, text: str) -> tuple[float, ...]:
    """Keep ratios in (0, 1], comma-separated, at most MAX_LIST, duplicates dropped."""
    values = check_list(name, [v for v in text.split(",") if v.strip()])
    try:
        out = tuple(float(v) for v in values)
    except ValueError:
        raise ConfigError(f"bad {name} {text!r}: use comma-separated numbers, e.g. "
                          "1.0,0.9,0.8") from None
    if not out:
        raise ConfigError(f"{name} is empty")
    for v in out:
        if not 0 < v <= 1:
            raise ConfigError(f"{name}: {v:g} is not a keep ratio in (0, 1] (1.0 = dense)")
    return tuple(dict.fromkeys(out))


def name_list(name: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list of names from ``allowed``, duplicates dropped."""
    values = [v.strip() for v in check_list(name, text.split(",")) if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ConfigError(f"{name} {text!r}: choose from {', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


__all__ = ["WARMUP", "ITERATIONS", "THREADS", "EVAL_BATCH", "MAX_SECONDS", "MAX_LABELS",
           "MAX_LIST", "check_seconds", "int_list", "ratio_list", "name_list"]
