"""ToP token pruning: configuration, schedules, importance, alignment gaps."""

from ssmprune.pruning.config import PRESETS, PruneConfig, kept_tokens, resolve

__all__ = ["PRESETS", "PruneConfig", "kept_tokens", "resolve"]
