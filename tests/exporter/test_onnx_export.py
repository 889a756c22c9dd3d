"""torch.export and ONNX export of every model family, dense and pruned (small configs)."""

import numpy as np
import onnx
import pytest
import torch
from exporter.export_cases import (  # noqa: F401  (fixture)
    CASES,
    assert_custom_nodes,
    FAMILY_SMALL,
    PRUNE_SMALL,
    SCANS_PER_BLOCK,
    exports,
)

from ssmprune.exporter import stages
from ssmprune.exporter.manifest import MODEL_FILE
from ssmprune.exporter.schemas import DOMAIN, SELECTIVE_SCAN, TOKEN_GATHER
from ssmprune.models import create_model, model_names
from ssmprune.models.registry import get_entry
from ssmprune.parity.runners import onnxrt_session


def load(result) -> onnx.ModelProto:
    return onnx.load(str(result.directory / MODEL_FILE))


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    return onnxrt_session(path, threads=1).run(None, {stages.INPUT_NAME: x})[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_program_has_one_node_per_op_call(case):
    c = CASES[case]
    model = create_model(c.model, prune=c.prune, **c.overrides)
    program = stages.exported_program_from_model(model, torch.randn(2, *model.input_shape()))
    assert stages.custom_op_counts(program) == {
        "ssmprune.selective_scan.default": c.scans, "ssmprune.token_gather.default": c.gathers}


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("prune", [None, PRUNE_SMALL], ids=["dense", "pruned"])
def test_every_registered_model_exports_as_one_graph(name, prune):
    """torch.export of every registered model (small overrides of its family's config)."""
    family = get_entry(name).family.name
    overrides = FAMILY_SMALL[family]  # a new family needs small overrides here
    model = create_model(name, prune=prune, **overrides)
    program = stages.exported_program_from_model(model, torch.randn(1, *model.input_shape()))
    assert stages.custom_op_counts(program) == {
        "ssmprune.selective_scan.default": SCANS_PER_BLOCK[family] * overrides["depth"],
        "ssmprune.token_gather.default": len(prune.prune_after) if prune else 0}


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_has_the_expected_custom_nodes_and_checks(case, exports):
    c, result = CASES[case], exports.get(case)
    model = load(result)
    custom = {(n.domain, n.op_type) for n in model.graph.node} - {("", n.op_type) for n in
                                                                  model.graph.node}
    assert custom <= {(DOMAIN, SELECTIVE_SCAN), (DOMAIN, TOKEN_GATHER)}
    assert_custom_nodes(case, result, model)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 20), (DOMAIN, 1)}
    stages.check_onnx(model)  # checker (full) and strict shape inference
    for node in model.graph.node:
        if node.op_type == SELECTIVE_SCAN:
            attrs = {a.name: a.i for a in node.attribute}
            assert attrs["delta_softplus"] == 1
            assert attrs["has_z"] == (1 if c.model.startswith("vim") else 0)
            assert len(node.input) == 9 and all(node.input)


@pytest.mark.parametrize("case", sorted(CASES))
def test_standard_flavor_has_no_custom_domain_and_same_outputs(case, exports):
    plugins = load(exports.get(case))
    standard = stages.standard_from_plugins(load(exports.get(case)))
    stages.check_onnx(standard)
    assert not standard.functions
    assert all(o.domain != DOMAIN for o in standard.opset_import)
    assert all(n.domain in ("", "ai.onnx") for n in standard.graph.node)
    shape = [d.dim_value for d in plugins.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(run_onnx(standard.SerializeToString(), x),
                               run_onnx(plugins.SerializeToString(), x), rtol=0, atol=1e-6)


def test_standard_flavor_export_writes_no_custom_nodes(exports):
    result = exports.get("vim_pruned", flavor="standard")
    model = load(result)
    assert result.custom_nodes == {}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert [op["torch_nodes"] for op in result.manifest.custom_ops] == [6, 2]


@pytest.mark.parametrize("opset", [18, 23])
def test_other_opsets(opset, exports):
    model = load(exports.get("plainmamba_pruned", opset=opset))
    assert {(o.domain, o.version) for o in model.opset_import} == {("", opset), (DOMAIN, 1)}
    assert {o.version for f in model.functions for o in f.opset_import if o.domain == ""} == {opset}
    stages.check_onnx(model)


def test_batch_is_static(exports):
    result = exports.get("vim_pruned", batch=3)
    model = load(result)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 3, 32, 32] == result.manifest.input["shape"]
    assert result.manifest.outputs[0]["shape"] == [3, 100]


def test_file_is_weights_plus_a_small_graph(exports):
    """No per-node debug strings; real-size files are within 5 % (tests/parity, slow)."""
    result = exports.get("vim_dense")
    assert result.file_bytes - result.weight_bytes < 100_000
    keys = {p.key for n in load(result).graph.node for p in n.metadata_props}
    assert keys <= {"namespace"}


class GatherVariants(torch.nn.Module):
    """token_gather with no tensor, and with tensors of mixed dtypes and ranks."""

    def forward(self, scores):
        from ssmprune.ops.token_gather import token_gather

        positions = torch.arange(scores.shape[1]).expand(scores.shape[0], -1)
        (kept,) = token_gather(scores, positions, [], 3, 1, 1)
        halves = scores[..., None].expand(-1, -1, 2).half()
        kept2, a, b = token_gather(scores, positions, [halves, (2 * scores)[..., None, None]], 2)
        return kept, kept2, a.float(), b


def test_token_gather_translation_variants():
    scores = torch.randn(2, 6)
    program = stages.exported_program_from_model(GatherVariants(), scores)
    model = stages.onnx_from_exported_program(program, 20)
    stages.check_onnx(model)
    assert stages.op_type_counts(model)[f"{DOMAIN}::{TOKEN_GATHER}"] == 2
    session = onnxrt_session(model.SerializeToString(), threads=1)
    actual = session.run(None, {session.get_inputs()[0].name: scores.numpy()})
    for a, e in zip(actual, GatherVariants()(scores)):
        assert a.dtype == e.numpy().dtype and a.shape == tuple(e.shape)
        np.testing.assert_array_equal(a, e.numpy())
