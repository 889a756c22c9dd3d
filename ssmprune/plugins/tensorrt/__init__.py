"""ssmprune's TensorRT plugins: ``SelectiveScan`` and ``TokenGather``, namespace
``ssmprune``, version 1, launching the Triton kernels of ``plugins.triton``.

Two forms of the same ops, from one contract per op (``selective_scan``,
``token_gather``, built on ``spec``):

- ``v3``: Python IPluginV3 plugins (any TensorRT with the V3 interfaces,
  10.0 and later). Build and run need Python, torch and Triton in the process:
  the data-centre path.
- ``quick``: the decorator form (``tensorrt.plugin``) with an ahead-of-time
  implementation: the Triton kernels are compiled to PTX at build time and
  embedded in the engine, so the engine runs where there is no Python (an edge
  device's C++ runtime). Needs ``tensorrt.plugin.aot_impl`` (TensorRT >= 10.9).

``register(trt)`` is what ``ssmprune.engine.plugins`` calls: it registers one
form with the module's plugin registry (``SSMPRUNE_TRT_PLUGINS=v3|aot``
chooses; default: aot where available, else v3) and returns the
``(namespace, name, version)`` of each plugin.
"""

from __future__ import annotations

import os
from typing import Any

from ssmprune.plugins.tensorrt import selective_scan, token_gather
from ssmprune.plugins.tensorrt.spec import NAMESPACE, VERSION, OpSpec

SPECS: tuple[OpSpec, ...] = (selective_scan.SPEC, token_gather.SPEC)
FORM_VAR = "SSMPRUNE_TRT_PLUGINS"
FORMS = ("v3", "aot")

# The registry keeps raw pointers to Python creators: they must stay alive.
_REGISTERED: dict[tuple[str, str], list[Any]] = {}


def has_aot(trt: Any) -> bool:
    """True where ``<trt>.plugin`` has ahead-of-time implementations."""
    try:
        plugin = __import__(f"{trt.__name__}.plugin", fromlist=["aot_impl"])
    except ImportError:
        return False
    return hasattr(plugin, "aot_impl")


def chosen_form(trt: Any) -> str:
    """``v3`` or ``aot``: ``SSMPRUNE_TRT_PLUGINS`` if set, else aot where available."""
    form = os.environ.get(FORM_VAR) or ("aot" if has_aot(trt) else "v3")
    if form not in FORMS:
        raise ValueError(f"{FORM_VAR}={form!r}: use one of {', '.join(FORMS)}")
    if form == "aot" and not has_aot(trt):
        raise ValueError(f"{FORM_VAR}=aot needs tensorrt.plugin.aot_impl (TensorRT >= 10.9); "
                         f"{trt.__name__} {getattr(trt, '__version__', '')} has none")
    return form


def register(trt: Any) -> list[tuple[str, str, str]]:
    """Register both plugins with ``trt``'s plugin registry (once per module and form)."""
    form = chosen_form(trt)
    key = (trt.__name__, form)
    if key not in _REGISTERED:
        if form == "aot":
            from ssmprune.plugins.tensorrt import quick

            _REGISTERED[key] = quick.register(trt)
        else:
            from ssmprune.plugins.tensorrt.v3 import plugin_classes

            creators = [plugin_classes(trt, spec)[1]() for spec in SPECS]
            registry = trt.get_plugin_registry()
            for creator in creators:
                registry.register_creator(creator, NAMESPACE)
            _REGISTERED[key] = creators
    return [(NAMESPACE, spec.name, VERSION) for spec in SPECS]
