"""ToP pruning configuration: keep ratios, pruning points, importance, alignment.

The schedule is static: with a static input size every token count is known
before tracing, so an exported graph has fixed shapes. Token counts follow the
released ToP-ViM code (PAPER.md, "The released schedule"):

* with a class token (Vim), a pruning point on N tokens keeps
  ``K = ceil((N - 1) * r)``, plus one if that is even, so the K - 1 kept
  patches are an even number and the class token sits exactly in the middle;
* without one (PlainMamba) it keeps ``K = ceil(N * r)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from ssmprune.errors import ConfigError

IMPORTANCE = ("clip", "l1", "l2")
ALIGNMENT = ("gap", "none")
MIN_TOKENS = 2


@dataclass(frozen=True)
class PruneConfig:
    """Where and how much to prune.

    keep_ratio: one ratio for every pruning point, or one per point, in (0, 1].
    prune_after: 1-based block indices after which tokens are pruned.
    importance: ``clip`` (the paper's sum_d max(0, y)), ``l1`` or ``l2``.
    alignment: ``gap`` (pruned positions decay the scan state) or ``none``.
    """

    keep_ratio: Union[float, tuple[float, ...]] = 0.8
    prune_after: tuple[int, ...] = ()
    importance: str = "clip"
    alignment: str = "gap"

    def __post_init__(self):
        object.__setattr__(self, "prune_after", tuple(int(b) for b in self.prune_after))
        if isinstance(self.keep_ratio, (list, tuple)):
            object.__setattr__(self, "keep_ratio", tuple(float(r) for r in self.keep_ratio))
        else:
            object.__setattr__(self, "keep_ratio", float(self.keep_ratio))
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"importance must be one of {', '.join(IMPORTANCE)}, "
                              f"got {self.importance!r}")
        if self.alignment not in ALIGNMENT:
            raise ConfigError(f"alignment must be one of {', '.join(ALIGNMENT)}, "
                              f"got {self.alignment!r}")
        if list(self.prune_after) != sorted(set(self.prune_after)):
            raise ConfigError(f"prune_after must be strictly increasing block indices, "
                              f"got {list(self.prune_after)}")
        ratios = self.ratios
        if len(ratios) != len(self.prune_after):
            raise ConfigError(f"{len(ratios)} keep ratios for {len(self.prune_after)} "
                              "pruning points")
        for r in ratios:
            if not 0.0 < r <= 1.0:
                raise ConfigError(f"keep ratio {r} is outside (0, 1]")

    @property
    def ratios(self) -> tuple[float, ...]:
        """One keep ratio per pruning point."""
        if isinstance(self.keep_ratio, tuple):
            return self.keep_ratio
        return (self.keep_ratio,) * len(self.prune_after)

    def token_schedule(self, tokens: int, depth: int, has_cls: bool) -> list[int]:
        """Tokens entering each of ``depth`` blocks, starting from ``tokens``."""
        for b in self.prune_after:
            if not 1 <= b < depth:
                raise ConfigError(f"cannot prune after block {b}: the model has {depth} "
                                  f"blocks (valid: 1 to {depth - 1})")
        counts, current = [], tokens
        points = dict(zip(self.prune_after, self.ratios))
        for block in range(1, depth + 1):
            counts.append(current)
            if block in points:
                current = kept_tokens(current, points[block], has_cls)
        return counts


def kept_tokens(tokens: int, ratio: float, has_cls: bool) -> int:
    """Token count after one pruning point (see the module docstring)."""
    if has_cls:
        k = math.ceil((tokens - 1) * ratio - 1e-9)
        if k % 2 == 0:  # never past `tokens`: k = tokens - 1 even means tokens odd
            k += 1
    else:
        k = math.ceil(tokens * ratio - 1e-9)
    if k < MIN_TOKENS:
        raise ConfigError(f"keep ratio {ratio} leaves {k} token(s) of {tokens}; "
                          f"at least {MIN_TOKENS} must remain")
    return k


# Presets. Vim: the released ToP-ViM schedules. PlainMamba's presets are
# registered next to the model (ssmprune/models/plainmamba.py), where the
# comment above them derives the keep ratio from L3's 41.6 % FLOPs reduction.
PRESETS: dict[str, tuple[str, PruneConfig]] = {
    "vim_t_paper": ("vim_t", PruneConfig(0.8, (10, 20))),
    "vim_s_paper": ("vim_s", PruneConfig(0.8, (5, 10, 15))),
}


def register_preset(name: str, model: str, config: PruneConfig) -> None:
    if name in PRESETS:
        raise ValueError(f"preset {name!r} registered twice")
    PRESETS[name] = (model, config)


def resolve(prune: Union[None, str, PruneConfig], model_name: str) -> PruneConfig | None:
    """A PruneConfig from a config, a preset name or None.

    A preset made for another model is an error: its blocks and ratios were
    chosen for that model's depth and FLOPs.
    """
    if prune is None or isinstance(prune, PruneConfig):
        return prune
    if prune not in PRESETS:
        raise ConfigError(f"unknown pruning preset {prune!r}; choose one of: "
                          f"{', '.join(PRESETS)}")
    model, config = PRESETS[prune]
    if model != model_name:
        raise ConfigError(f"pruning preset {prune!r} is for {model}, not {model_name}")
    return config
