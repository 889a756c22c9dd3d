"""ssmprune: deploy token-pruned vision state space models (Vim, PlainMamba)."""

__version__ = "0.1.0"
