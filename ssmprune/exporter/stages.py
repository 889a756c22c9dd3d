"""The export stages, each a plain function: model -> ExportedProgram -> ONNX.

    fp16_from_model               the model in fp16 behind fp32 input and output
    exported_program_from_model   torch.export at a static shape, one graph
    onnx_from_exported_program    torch.onnx (dynamo) with our translation
                                  table, then the bodies attached
    strip_debug_metadata          torch.onnx's per-node debug strings removed
    attach_bodies                 model-local functions for the custom nodes
    with_default_attributes       function calls spell out omitted defaults
    standard_from_plugins         bodies inlined, no custom domain left
    check_onnx                    onnx.checker (full) and strict shape inference
"""

from __future__ import annotations

import collections
import contextlib
import logging
import warnings
from typing import Iterator, Optional

import onnx
import onnx.inliner
import torch
from torch import Tensor, nn

from ssmprune.exporter import schemas
from ssmprune.exporter.bodies import (
    BODIES,
    BodyFactory,
    check_overloads,
    node_attributes,
    specialized_overload,
)
from ssmprune.exporter.translations import translation_table

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
TORCH_OPS = ("ssmprune.selective_scan.default", "ssmprune.token_gather.default")


class ExportCheckError(RuntimeError):
    """An exported graph that fails its own checks: a bug, not a user error."""


class CastIO(nn.Module):
    """``model`` run in ``dtype`` behind an fp32 input and fp32 outputs.

    Exported, this is one Cast after the graph input and one before the
    output around a graph that computes in ``dtype``: the file keeps the fp32
    export's interface (see ``ssmprune.exporter.export`` for why).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(self.dtype)).float()


def fp16_from_model(model: nn.Module) -> nn.Module:
    """``model`` with fp16 weights (converted in place) behind fp32 input and logits.

    ``nn.Module.half`` converts every floating-point parameter and buffer;
    the models keep what must stay fp32 in fp32 in their forward (Vim's
    residual stream, the norms' statistics, the importance scores), and the
    scan and gather bodies upcast to fp32 internally.
    """
    return CastIO(model.half(), torch.float16).eval()


def exported_program_from_model(model: nn.Module, example: Tensor,
                                max_batch: Optional[int] = None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` at ``example``'s static shape, without gradients; with
    ``max_batch`` the batch (dim 0) is symbolic, 1 to ``max_batch`` (``example``'s: >= 2).

    torch.export either captures the whole forward as one graph or raises,
    so a returned program has no graph break; the custom ops stay single
    nodes thanks to their fake implementations. The token counts a pruned
    model keeps are fixed by its keep ratios, so only the batch can vary.
    """
    dynamic = None
    if max_batch is not None:
        dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    with torch.no_grad(), _quiet_torch_onnx():
        return torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)


def name_batch_dim(model: onnx.ModelProto, name: str) -> None:
    """Rename the input's symbolic batch (torch's ``s77``) to ``name`` wherever it appears
    (inputs, outputs, value_info), so runtimes and the manifest share one name."""
    first = model.graph.input[0].type.tensor_type.shape.dim[0]
    old = first.dim_param
    if not old:
        raise ValueError("the dynamic-batch export's input has a static batch")
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = name


def custom_op_counts(program: torch.export.ExportedProgram) -> dict[str, int]:
    """{torch op name: node count} for the ``ssmprune`` ops of an exported graph."""
    counts = collections.Counter(
        str(node.target) for node in program.graph.nodes
        if node.op == "call_function" and str(node.target).startswith("ssmprune."))
    return {name: counts.get(name, 0) for name in TORCH_OPS}


def onnx_from_exported_program(program: torch.export.ExportedProgram, opset: int,
                               bodies: Optional[dict[str, BodyFactory]] = None
                               ) -> onnx.ModelProto:
    """ONNX through ``torch.onnx.export(dynamo=True)``, custom nodes with bodies attached.

    The graph has one input ``images`` and one output ``logits``.
    """
    with _quiet_torch_onnx():
        program_onnx = torch.onnx.export(
            program, (), dynamo=True, opset_version=opset, optimize=True, verbose=False,
            custom_translation_table=translation_table(), input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], report=False)
    model = strip_debug_metadata(program_onnx.model_proto)
    return attach_bodies(model, BODIES if bodies is None else bodies)


def strip_debug_metadata(model: onnx.ModelProto, keep: tuple[str, ...] = ("namespace",)
                         ) -> onnx.ModelProto:
    """Drop torch.onnx's per-node debug metadata (stack traces with local paths, FX
    node text) but the module path in ``namespace``; it was most of the graph's bytes."""
    for node in model.graph.node:
        props = [p for p in node.metadata_props if p.key in keep]
        del node.metadata_props[:]
        node.metadata_props.extend(props)
    return model


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Silence torch.onnx's noise that says nothing about our model: one warning per
    torchvision op it cannot register ("torchvision is not installed. Skipping
    torchvision::nms") and pytree's LeafSpec FutureWarning (torch 2.13)."""
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry.level
    registry.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registry.setLevel(level)


def model_opset(model: onnx.ModelProto, domain: str = "") -> int:
    return next(o.version for o in model.opset_import if o.domain == domain)


def attach_bodies(model: onnx.ModelProto, bodies: dict[str, BodyFactory]) -> onnx.ModelProto:
    """Add the model-local function of each ``ssmprune`` op the graph uses.

    One function per op: specialized to its nodes' attributes when they all
    share them (the nodes call it by its overload, ``ssmprune.exporter.bodies``),
    else the body that reads them at run time. Never two overloads of one op:
    onnx-tensorrt's parser and ONNX Runtime before 1.27 key local functions by
    name and run one overload for every node. Each body is built for the
    model's default-domain opset, so the function and the graph import the
    same version. Replaces existing bodies of those ops.
    """
    opset = model_opset(model)
    by_op: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in model.graph.node:
        if node.domain == schemas.DOMAIN:
            by_op[node.op_type].append(node)
    made = []
    for op_type, nodes in sorted(by_op.items()):
        specialized = {specialized_overload(n) for n in nodes}
        attributes = node_attributes(nodes[0]) if len(specialized) == 1 else None
        function = bodies[op_type](opset, attributes)
        made.append(function)
        for node in nodes:
            node.overload = function.overload
    keep = [f for f in model.functions if not (f.domain == schemas.DOMAIN and f.name in by_op)]
    del model.functions[:]
    model.functions.extend(keep + made)
    if by_op and not any(o.domain == schemas.DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(schemas.DOMAIN, schemas.VERSION))
    return model


def with_default_attributes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every call of a model-local function spells out the defaults it omits.

    onnx's inliner (1.23) drops a function's default attribute values
    (``attribute_proto``) when the call site omits them, leaving e.g. a
    ``Constant`` with no value that TensorRT rejects as "Invalid Node".
    """
    defaults = {(f.domain, f.name, f.overload): list(f.attribute_proto)
                for f in model.functions}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node) + [n for f in out.functions for n in f.node]
    for node in nodes:
        have = {a.name for a in node.attribute}
        for default in defaults.get((node.domain, node.op_type, node.overload), []):
            if default.name not in have:
                node.attribute.append(default)
    return out


def standard_from_plugins(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ``standard`` flavour: every body inlined, the custom domain removed.

    Also what ``ssmprune build --no-plugins`` hands TensorRT, so the two paths
    build the same graph.
    """
    model = onnx.inliner.inline_local_functions(with_default_attributes(model))
    del model.functions[:]
    keep = [o for o in model.opset_import if o.domain != schemas.DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    left = [n.op_type for n in model.graph.node if n.domain == schemas.DOMAIN]
    if left:
        raise ExportCheckError(f"custom nodes left after inlining: {sorted(set(left))}")
    return model


def check_onnx(model: onnx.ModelProto) -> None:
    """onnx.checker with full_check, then strict shape inference with type checks, and
    every custom node calling the body its attributes name."""
    schemas.register()
    mismatched = check_overloads(model)
    if mismatched:
        raise ExportCheckError(f"exported ONNX fails its checks: {mismatched[0]}")
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                          data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportCheckError(f"exported ONNX fails its checks: {err}") from err


def op_type_counts(model: onnx.ModelProto) -> dict[str, int]:
    """{op type (domain::name for custom domains): count} over the main graph."""
    counts = collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in model.graph.node)
    return dict(counts.most_common())
