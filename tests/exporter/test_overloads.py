"""Scan bodies specialized to their nodes' attributes, called by overload (ONNX IR 10)."""

import numpy as np
import onnx
import pytest
from onnx import helper

from ssmprune.engine.errors import EngineBuildError
from ssmprune.engine.plugins import lower_to_standard_ops
from ssmprune.exporter.bodies import BODIES, check_overloads, scan_overload
from ssmprune.exporter.op_models import body_node_count, run_op_model
from ssmprune.exporter.schemas import DOMAIN, SCAN_INPUTS, SELECTIVE_SCAN, VERSION
from ssmprune.exporter.stages import (
    ExportCheckError,
    attach_bodies,
    check_onnx,
    standard_from_plugins,
)
from ssmprune.parity.references import REFERENCES
from exporter.test_onnx_bodies import max_rel, scan_inputs

VIM = dict(delta_softplus=1, has_z=1)  # every scan of Vim
COMBINATIONS = [VIM, dict(delta_softplus=0, has_z=0), dict(delta_softplus=1, has_z=0),
                dict(delta_softplus=0, has_z=1)]


def scan_model(inputs: dict[str, np.ndarray], combinations: list[dict]) -> onnx.ModelProto:
    """One SelectiveScan node per entry of ``combinations``, on the same inputs, bodies
    attached."""
    nodes = [helper.make_node(SELECTIVE_SCAN, list(SCAN_INPUTS), [f"y{i}"], domain=DOMAIN, **a)
             for i, a in enumerate(combinations)]
    graph = helper.make_graph(
        nodes, "scans",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in inputs.items()],
        [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, inputs["u"].shape)
         for i in range(len(nodes))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid(DOMAIN, VERSION)])
    return attach_bodies(model, BODIES)


def positive_steps(inputs):
    for name in ("delta", "delta_bias"):  # raw steps must be non-negative without softplus
        inputs[name] = np.abs(inputs[name])
    return inputs


def assert_matches_references(model, inputs, combinations):
    outputs = run_op_model(model, inputs)
    for actual, attributes in zip(outputs, combinations):
        reference = REFERENCES[SELECTIVE_SCAN](*inputs.values(), **attributes)[0]
        assert max_rel(actual, reference) <= 1e-5, attributes


def scan_bodies(model):
    return [f for f in model.functions if f.name == SELECTIVE_SCAN]


def test_overload_names_the_attribute_values():
    assert scan_overload({}) == "delta_softplus=0,has_z=1"  # the schema's defaults
    assert scan_overload(dict(delta_softplus=3, has_z=0)) == "delta_softplus=1,has_z=0"


@pytest.mark.parametrize("attributes", COMBINATIONS + [{}], ids=scan_overload)
def test_nodes_sharing_attributes_call_one_body_specialized_to_them(attributes):
    inputs = positive_steps(scan_inputs(2, 3, 17, 4))
    model = scan_model(inputs, [attributes, attributes])
    (body,) = scan_bodies(model)
    assert body.overload == scan_overload(attributes)
    assert [n.overload for n in model.graph.node] == [body.overload] * 2
    assert not any(n.op_type in ("Where", "If") for n in body.node)
    assert check_overloads(model) == []
    check_onnx(model)
    assert_matches_references(model, inputs, [attributes, attributes])


def test_nodes_with_different_attributes_share_the_body_that_reads_them():
    # Never two overloads of one op: ONNX Runtime before 1.27 and onnx-tensorrt key local
    # functions by name, and ONNX Runtime 1.25 and 1.26 ran one of them for every node.
    inputs = positive_steps(scan_inputs(2, 3, 17, 4))
    model = scan_model(inputs, COMBINATIONS)
    (body,) = scan_bodies(model)
    assert body.overload == "" and [n.overload for n in model.graph.node] == [""] * 4
    assert body_node_count(body) == 44
    check_onnx(model)
    assert_matches_references(model, inputs, COMBINATIONS)


@pytest.mark.parametrize("combinations", [[VIM], COMBINATIONS], ids=["specialized", "mixed"])
def test_the_inlined_standard_flavour_keeps_each_nodes_body(combinations):
    inputs = positive_steps(scan_inputs(2, 3, 9, 4, seed=1))
    standard = standard_from_plugins(scan_model(inputs, combinations))
    assert not standard.functions
    assert_matches_references(standard, inputs, combinations)


@pytest.mark.parametrize("edit", ["attribute", "overload"])
def test_a_node_whose_overload_disagrees_with_its_attributes_is_refused(edit):
    model = scan_model(scan_inputs(1, 2, 4, 3), [VIM])
    node = model.graph.node[0]
    if edit == "attribute":  # a hand edit: the plugin would follow it, the body would not
        next(a for a in node.attribute if a.name == "has_z").i = 0
        model.functions.append(BODIES[SELECTIVE_SCAN](20, dict(delta_softplus=1, has_z=0)))
    else:
        node.overload = scan_overload(dict(delta_softplus=0, has_z=1))
        model.functions.append(BODIES[SELECTIVE_SCAN](20, dict(delta_softplus=0, has_z=1)))
    problems = check_overloads(model)
    assert len(problems) == 1 and "but its attributes are" in problems[0]
    with pytest.raises(EngineBuildError, match="disagrees with the node"):
        lower_to_standard_ops(model)
    with pytest.raises(ExportCheckError, match="calls the body for"):
        check_onnx(model)


def test_a_node_calling_a_missing_overload_has_no_body():
    model = scan_model(scan_inputs(1, 2, 4, 3), [VIM])
    model.graph.node[0].overload = "something else"
    with pytest.raises(EngineBuildError, match=r"SelectiveScan \(overload something else\) have"):
        lower_to_standard_ops(model)


def test_vims_body_is_ten_times_smaller_than_the_chunked_one():
    body = BODIES[SELECTIVE_SCAN](20, VIM)
    assert body.overload == "delta_softplus=1,has_z=1"
    assert body_node_count(body) * 10 <= 404
