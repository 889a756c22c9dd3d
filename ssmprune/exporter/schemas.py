"""ONNX schemas of the custom domain ``ssmprune`` (opset version 1).

The exported file carries each op as a node ``ssmprune::SelectiveScan`` or
``ssmprune::TokenGather``: the name, version and domain TensorRT's parser
binds a plugin to. Registering their schemas with the ``onnx`` package (once,
at import) lets ``onnx.checker`` validate those nodes and shape inference
type them; ONNX Runtime runs them through the model-local function of the
same (domain, name) that ``bodies`` writes.

SelectiveScan(u, delta, A, B, C, D, z, delta_bias, gap) -> y
    The contract of ``ssmprune.ops.selective_scan`` with every input present:
    the translation passes zeros for a missing D, delta_bias or gap (the same
    result), and for a missing z it passes u with ``has_z=0`` (z unused).
    u, delta, z: (b d l) T; A: (d n) fp32; B, C: (b n l) T; D, delta_bias:
    (d) fp32; gap: (b l) int32/int64. y: (b d l) T.
    Attributes: delta_softplus (int, default 0), has_z (int, default 1).

TokenGather(scores, positions, x) -> (kept_positions, x_kept)
    The contract of ``ssmprune.ops.token_gather`` for one gathered tensor
    (the translation concatenates several along their last axis and splits
    them after). scores: (b m) fp32; positions: (b m) int64; x: (b m ...).
    kept_positions: (b k') int64; x_kept: (b k' ...), k' = k + (protect >= 0).
    Attributes: k (int, required), protect (int, default -1),
    insert_at (int, default 0).

Both carry the plugin's lookup keys as STRING attributes, ``plugin_namespace``
("ssmprune") and ``plugin_version`` ("1"), as TensorRT's ONNX parser reads them
(``FallbackPluginImporter``): TensorRT before 10.10 looks a plugin up by these
attributes only (not by the node's domain), and 10.7 and later prefer a
registered plugin over the node's model-local function only when the node has
``plugin_namespace``. The parser hands the creator only the attributes the
creator declares as fields, so these two never reach a plugin. The exporter
writes every attribute explicitly: the parser fills in no defaults, and a
decorator plugin's ``aot_impl`` takes all of its attributes, in order.
"""

from __future__ import annotations

from onnx import TensorProto, defs, helper
from onnx.shape_inference import InferenceContext

DOMAIN = "ssmprune"
VERSION = 1
SELECTIVE_SCAN = "SelectiveScan"
TOKEN_GATHER = "TokenGather"

SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "gap")
SCAN_OUTPUTS = ("y",)
SCAN_ATTRIBUTES = {"delta_softplus": 0, "has_z": 1}
GATHER_INPUTS = ("scores", "positions", "x")
GATHER_OUTPUTS = ("kept_positions", "x_kept")
GATHER_ATTRIBUTES = {"k": None, "protect": -1, "insert_at": 0}
PLUGIN_NAMESPACE = DOMAIN
PLUGIN_VERSION = str(VERSION)
#: The plugin lookup attributes every custom node carries (STRING).
PLUGIN_ATTRIBUTES = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_INTS = ["tensor(int32)", "tensor(int64)"]
_SCAN_TYPES = {"u": "T", "delta": "T", "A": "F", "B": "T", "C": "T", "D": "F", "z": "T",
               "delta_bias": "F", "gap": "I"}

_P = defs.OpSchema.FormalParameter
_A = defs.OpSchema.Attribute
_INT = defs.OpSchema.AttrType.INT


def _plugin_attributes() -> list:
    return [_A(name, helper.make_attribute(name, value), f"TensorRT plugin lookup key ({value})")
            for name, value in PLUGIN_ATTRIBUTES.items()]


def _int_attr(ctx: InferenceContext, name: str, default: int) -> int:
    attr = ctx.get_attribute(name)
    return default if attr is None else attr.i


def _infer_selective_scan(ctx: InferenceContext) -> None:
    """y has u's type and shape."""
    ctx.set_output_type(0, ctx.get_input_type(0))


def _infer_token_gather(ctx: InferenceContext) -> None:
    """kept_positions (b k') int64, x_kept (b k' ...) with x's element type."""
    k = _int_attr(ctx, "k", 0) + (1 if _int_attr(ctx, "protect", -1) >= 0 else 0)
    x_type = ctx.get_input_type(2)
    elem = x_type.tensor_type.elem_type
    if not x_type.tensor_type.HasField("shape"):
        ctx.set_output_type(1, helper.make_tensor_type_proto(elem, None))
        return
    dims = list(x_type.tensor_type.shape.dim)
    batch = dims[0].dim_value if dims[0].HasField("dim_value") else dims[0].dim_param or None
    rest = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims[2:]]
    ctx.set_output_type(0, helper.make_tensor_type_proto(TensorProto.INT64, [batch, k]))
    ctx.set_output_type(1, helper.make_tensor_type_proto(elem, [batch, k, *rest]))


def _selective_scan_schema() -> defs.OpSchema:
    schema = defs.OpSchema(
        SELECTIVE_SCAN, DOMAIN, VERSION,
        doc="Selective scan with alignment gaps (ssmprune.ops.selective_scan).",
        inputs=[_P(name, _SCAN_TYPES[name]) for name in SCAN_INPUTS],
        outputs=[_P("y", "T")],
        type_constraints=[("T", _FLOATS, "activations"), ("F", ["tensor(float)"], "fp32 params"),
                          ("I", _INTS, "gap counts")],
        attributes=[_A("delta_softplus", helper.make_attribute("delta_softplus", 0),
                       "1: dt = softplus(delta + delta_bias)"),
                    _A("has_z", helper.make_attribute("has_z", 1), "0: no silu(z) gate"),
                    *_plugin_attributes()],
    )
    schema.set_type_and_shape_inference_function(_infer_selective_scan)
    return schema


def _token_gather_schema() -> defs.OpSchema:
    schema = defs.OpSchema(
        TOKEN_GATHER, DOMAIN, VERSION,
        doc="Top-k token gather in original order (ssmprune.ops.token_gather).",
        inputs=[_P("scores", "S"), _P("positions", "P"), _P("x", "T")],
        outputs=[_P("kept_positions", "P"), _P("x_kept", "T")],
        type_constraints=[("S", ["tensor(float)"], "scores"), ("P", ["tensor(int64)"], "positions"),
                          ("T", _FLOATS, "gathered tensor")],
        attributes=[_A("k", _INT, "unprotected tokens kept", required=True),
                    _A("protect", helper.make_attribute("protect", -1),
                       "protected token, -1: none"),
                    _A("insert_at", helper.make_attribute("insert_at", 0),
                       "output index of the protected token"),
                    *_plugin_attributes()],
    )
    schema.set_type_and_shape_inference_function(_infer_token_gather)
    return schema


def register() -> None:
    """Register both schemas with ``onnx.defs``; a second call does nothing."""
    for make in (_selective_scan_schema, _token_gather_schema):
        schema = make()
        if not defs.has(schema.name, schema.since_version, DOMAIN):
            defs.register_schema(schema)


register()
