"""ssmprune's TensorRT plugins: ``SelectiveScan`` and ``TokenGather``, namespace
``ssmprune``, version 1, launching the Triton kernels of ``ops.triton``.

Two forms of the same ops, from one contract per op (``selective_scan``,
``token_gather``, built on ``spec``):

- ``v3``: Python IPluginV3 plugins (any TensorRT with the V3 interfaces,
  10.0 and later). Build and run need Python, torch and Triton in the process:
  the data-centre path.
- ``quick``: the decorator form (``tensorrt.plugin``) with an ahead-of-time
  implementation: the Triton kernels are compiled to PTX at build time and
  embedded in the engine, so the engine runs where there is no Python (an edge
  device's C++ runtime). Needs ``tensorrt.plugin.aot_impl`` (TensorRT >= 10.9).

``register(trt, form, ptx_version)`` is what ``ssmprune.engine.plugins``
calls: it registers one form with the module's plugin registry (default:
``SSMPRUNE_TRT_PLUGINS=v3|aot`` if set, else aot where available, else v3)
and returns the ``(namespace, name, version)`` of each plugin. Both forms
register the same (namespace, name, version), which TensorRT's registry holds
once: one process holds one form, and asking for the other is an error that
says so (never a silent run of the first form's creators).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ssmprune.plugins.forms import FORM_VAR, FORMS
from ssmprune.plugins.tensorrt import selective_scan, token_gather
from ssmprune.plugins.tensorrt.spec import NAMESPACE, VERSION, OpSpec

SPECS: tuple[OpSpec, ...] = (selective_scan.SPEC, token_gather.SPEC)

# The registry keeps raw pointers to Python creators: they must stay alive.
# (TensorRT module name, form) -> what was registered.
_REGISTERED: dict[tuple[str, str], list[Any]] = {}


class PluginFormError(ValueError):
    """A plugin form that cannot be used here, or that clashes with the one registered."""


def has_aot(trt: Any) -> bool:
    """True where ``<trt>.plugin`` has ahead-of-time implementations."""
    try:
        plugin = __import__(f"{trt.__name__}.plugin", fromlist=["aot_impl"])
    except ImportError:
        return False
    return hasattr(plugin, "aot_impl")


def chosen_form(trt: Any, form: Optional[str] = None) -> str:
    """``form`` if given, else ``SSMPRUNE_TRT_PLUGINS`` if set, else aot where available;
    checked against what ``trt`` offers."""
    form = form or os.environ.get(FORM_VAR) or ("aot" if has_aot(trt) else "v3")
    if form not in FORMS:
        raise PluginFormError(f"{FORM_VAR}={form!r}: use one of {', '.join(FORMS)}")
    if form == "aot" and not has_aot(trt):
        raise PluginFormError(
            f"the aot plugin form needs tensorrt.plugin.aot_impl (TensorRT >= 10.9); "
            f"{trt.__name__} {getattr(trt, '__version__', '')} has none: set {FORM_VAR}=v3")
    return form


def registered_form(trt: Any) -> Optional[str]:
    """The form this process registered with ``trt``, or None."""
    return next((f for (name, f) in _REGISTERED if name == trt.__name__), None)


def _refuse_taken(trt: Any, form: str) -> None:
    """PluginFormError when any of our plugins is already in the registry (another form,
    or a creator someone else registered under our names)."""
    registry = trt.get_plugin_registry()
    taken = [s.name for s in SPECS if registry.get_creator(s.name, VERSION, NAMESPACE)]
    if taken:
        raise PluginFormError(
            f"{NAMESPACE}::{', '.join(taken)} v{VERSION} is already registered in this process "
            f"by another creator, so the {form} form cannot be: TensorRT holds one creator per "
            "name; use one plugin form per process")


def register(trt: Any, form: Optional[str] = None, ptx_version: Optional[int] = None
             ) -> list[tuple[str, str, str]]:
    """Register both plugins with ``trt``'s plugin registry (once per process).

    ``form``: v3 or aot (None: ``chosen_form``). ``ptx_version``: the PTX ISA
    the aot form compiles its kernels in (84 = 8.4; None: ``ptx.choose``'s
    default at build time). PluginFormError for a form that is unavailable or
    that clashes with the form already registered.
    """
    form = chosen_form(trt, form)
    held = registered_form(trt)
    if held is not None and held != form:
        raise PluginFormError(
            f"this process already registered the {held} form of ssmprune's plugins, and "
            f"TensorRT holds one creator per name: the {form} form needs a new process "
            f"({FORM_VAR}={form})")
    key = (trt.__name__, form)
    if form == "aot":
        from ssmprune.plugins.tensorrt import quick

        quick.SETTINGS.ptx_version = ptx_version
    if key not in _REGISTERED:
        _refuse_taken(trt, form)
        if form == "aot":
            _REGISTERED[key] = quick.register(trt)
        else:
            from ssmprune.plugins.tensorrt.v3 import plugin_classes

            creators = [plugin_classes(trt, spec)[1]() for spec in SPECS]
            registry = trt.get_plugin_registry()
            for creator in creators:
                if not registry.register_creator(creator, NAMESPACE):
                    raise PluginFormError(f"TensorRT refused the creator of "
                                          f"{NAMESPACE}::{creator.name}")
            _REGISTERED[key] = creators
    return [(NAMESPACE, spec.name, VERSION) for spec in SPECS]
