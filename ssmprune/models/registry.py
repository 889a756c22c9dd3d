"""Registry of model families and named model configurations.

A family is a config dataclass plus the ``nn.Module`` class built from it; a
named model is a family plus the config values that differ from the family's
defaults. Model modules register themselves at import time, so adding a model
adds lines to its own module and edits no switch here. A family's config has
``img_size`` and ``num_tokens`` or ``num_patches``: ``ssmprune.limits`` bounds
the patches a config asks for before any model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from ssmprune.errors import ConfigError, UnknownModelError
from ssmprune.limits import check_tokens


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    model_cls: type[nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: Family
    values: dict[str, Any]
    description: str

    def config(self, **overrides: Any):
        """The entry's config with ``overrides`` applied; unknown keys are errors."""
        fields = {f.name for f in dataclasses.fields(self.family.config_cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown override(s) {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(fields))}"
            )
        cfg = self.family.config_cls(**{**self.values, **overrides})
        validate = getattr(cfg, "validate", None)
        if validate is not None:
            validate()
        # Before anything is built from it: a size past the token bound would
        # allocate its positional embedding and activations first (limits.py).
        check_tokens(self.name, cfg)
        return cfg


_FAMILIES: dict[str, Family] = {}
_MODELS: dict[str, ModelEntry] = {}


def register_family(name: str, config_cls: type, model_cls: type[nn.Module]) -> Family:
    if name in _FAMILIES:
        raise ValueError(f"model family {name!r} registered twice")
    family = Family(name, config_cls, model_cls)
    _FAMILIES[name] = family
    return family


def register_model(name: str, family: Family, description: str, **values: Any) -> None:
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"model {name!r}: unknown config fields {sorted(unknown)}")
    _MODELS[name] = ModelEntry(name, family, dict(values), description)


def model_names() -> list[str]:
    """Every registered model name, in registration order."""
    return list(_MODELS)


def get_entry(name: str) -> ModelEntry:
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; choose one of: {', '.join(_MODELS)}"
        ) from None
