"""Custom ONNX nodes and TensorRT plugins: bind them, or lower them to their standard-op bodies.

The exported ONNX carries ``ssmprune::SelectiveScan`` / ``ssmprune::TokenGather``
nodes, each with a model-local ONNX function of the same name as its body in
standard ops. TensorRT's parser binds a custom node to the plugin registered
under (op_type, ``plugin_version`` attribute or "1", ``plugin_namespace``
attribute or the node's domain).

Measured with TensorRT-RTX 1.7.1 (``benchmarks/probe_trt_plugins.py``): when a
model-local function of the node's name exists, the parser inlines it even if
a matching plugin creator is registered (also with ENABLE_PLUGIN_OVERRIDE). So
binding does not rely on precedence: for a plugin build the bodies of the bound
ops are removed from the model, for ``--no-plugins`` they are inlined here, and
either way the parser sees exactly one choice.

Plugins come from a provider module, ``ssmprune.plugins.tensorrt``, which must
define ``register(trt, form, ptx_version) -> list[tuple[str, str, str]]``: it
registers its creators in ``trt.get_plugin_registry()`` and returns their
``(namespace, name, version)``; and ``chosen_form(trt, form) -> str``, the
plugin form (``v3`` or ``aot``) a build would use.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import onnx

from ssmprune.engine import trt as trt_mod
from ssmprune.exporter.bodies import check_overloads
from ssmprune.exporter.stages import ExportCheckError, standard_from_plugins
from ssmprune.engine.errors import EngineBuildError, PluginUnavailableError

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
PROVIDER_MODULE = "ssmprune.plugins.tensorrt"


@dataclass(frozen=True, order=True)
class PluginRef:
    """A TensorRT plugin as the parser looks it up."""

    namespace: str
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.namespace}::{self.name} v{self.version}"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "namespace": self.namespace}


def _attr(node: onnx.NodeProto, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a).decode() \
                if a.type == onnx.AttributeProto.STRING else str(onnx.helper.get_attribute_value(a))
    return default


def custom_nodes(model: onnx.ModelProto) -> Counter:
    """Count of the graph's non-standard nodes by the plugin each would bind to.

    Only top-level graph nodes: nodes inside function bodies are what
    lowering produces, and the exporter nests no custom node in a subgraph.
    """
    functions = {(f.domain, f.name) for f in model.functions}
    counts: Counter = Counter()
    for node in model.graph.node:
        if node.domain in STANDARD_DOMAINS:
            continue
        if node.domain not in {"ssmprune"} and (node.domain, node.op_type) in functions:
            continue  # another exporter's helper function (e.g. pkg.torch): not a plugin op
        counts[PluginRef(_attr(node, "plugin_namespace", node.domain), node.op_type,
                         _attr(node, "plugin_version", "1"))] += 1
    return counts


def lower_to_standard_ops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Inline the bodies of the custom nodes; error if one has no body.

    Returns the lowered model and ``{"domain::op": count}`` of what was lowered.
    """
    needed = custom_nodes(model)
    if not needed:
        return model, {}
    functions = {(f.domain, f.name, f.overload) for f in model.functions}
    by_node = Counter()
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            by_node[(node.domain, node.op_type, node.overload)] += 1
    missing = sorted(f"{d}::{o}" + (f" (overload {v})" if v else "")
                     for d, o, v in by_node if (d, o, v) not in functions)
    if missing:
        raise EngineBuildError(
            f"custom node(s) {', '.join(missing)} have no standard-op body in this ONNX, so "
            "--no-plugins cannot lower them: export with a body (or the `standard` flavour), "
            "or build with plugins")
    mismatched = check_overloads(model)
    if mismatched:
        raise EngineBuildError(f"{mismatched[0]}: --no-plugins would build a body that "
                               "disagrees with the node; export the model again")
    try:
        lowered = standard_from_plugins(model)
    except ExportCheckError as err:  # pragma: no cover - onnx's inliner is recursive
        raise EngineBuildError(f"lowering failed: {err}") from None
    lowered_counts: Counter = Counter()
    for (d, o, _), c in by_node.items():
        lowered_counts[f"{d}::{o}"] += c
    return lowered, dict(sorted(lowered_counts.items()))


def drop_bodies(model: onnx.ModelProto, refs: list[PluginRef]) -> onnx.ModelProto:
    """The model without the local functions of ops that plugins will implement."""
    names = {r.name for r in refs}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [f for f in out.functions if not (f.domain not in STANDARD_DOMAINS
                                             and f.name in names)]
    del out.functions[:]
    out.functions.extend(keep)
    return out


def _provider():
    """The plugin provider module, or None when this installation has none."""
    try:
        spec = importlib.util.find_spec(PROVIDER_MODULE)
    except ModuleNotFoundError:  # no ssmprune.plugins package at all
        spec = None
    return None if spec is None else importlib.import_module(PROVIDER_MODULE)


NO_PLUGINS = "build with --no-plugins to lower the custom nodes to standard ops"


def plugin_form(flavour: trt_mod.Flavour, form: Optional[str] = None,
                way_out: str = NO_PLUGINS) -> str:
    """The plugin form (``v3`` / ``aot``) ``flavour`` would bind: ``form`` if given, else
    ``SSMPRUNE_TRT_PLUGINS``, else aot where TensorRT has it. PluginUnavailableError
    when that form cannot be used with ``flavour``."""
    provider = _provider()
    if provider is None:
        raise PluginUnavailableError(f"module {PROVIDER_MODULE} is not in this installation; "
                                     f"{way_out}")
    try:
        return provider.chosen_form(flavour.trt, form)
    except ValueError as err:
        raise PluginUnavailableError(f"{err}; or {way_out}") from None


def nodes_named_by_op(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each custom node named after its op type.

    TensorRT 10.8 and 10.9 hand a decorator plugin's creator the node's name
    where it looks the plugin up by its op name (10.10 passes the op type), so
    a node named otherwise fails there with a KeyError inside tensorrt.plugin.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            node.name = node.op_type
    return out


def register_plugins(flavour: trt_mod.Flavour, needed: list[PluginRef],
                     way_out: str = NO_PLUGINS, form: Optional[str] = None,
                     ptx_version: Optional[int] = None) -> list[PluginRef]:
    """Register ssmprune's plugins (``form``, default ``plugin_form``'s; the aot form's
    kernels in PTX ISA ``ptx_version``) with ``flavour`` and check that every needed
    one is there.

    Raises ``PluginUnavailableError`` naming what is missing, followed by
    ``way_out``.
    """
    if not needed:
        return []
    names = ", ".join(map(str, needed))
    if flavour.is_rtx:
        raise PluginUnavailableError(
            f"{flavour.display} cannot build plugin layers ({names}): its ONNX parser aborts "
            "the process once a Python plugin is created (see README, 'TensorRT-RTX and "
            f"plugins'); {way_out}")
    provider = _provider()
    try:
        provided = set() if provider is None else {
            PluginRef(*r) for r in provider.register(flavour.trt, form, ptx_version)}
    except (AttributeError, TypeError, ValueError) as err:  # a TensorRT without V3 plugins
        raise PluginUnavailableError(
            f"ssmprune's TensorRT plugins could not be registered with {flavour.display} "
            f"({err}); {way_out}") from None
    registered = {PluginRef(*r) for r in trt_mod.registered_plugins(flavour)} | provided
    missing = [r for r in needed if r not in registered]
    if missing:
        where = ("" if provider is not None
                 else f" (module {PROVIDER_MODULE} is not in this installation)")
        raise PluginUnavailableError(
            f"no TensorRT plugin registered for {', '.join(map(str, missing))}{where}; "
            f"{way_out}")
    return sorted(needed)
