"""The decorator-form plugins under NVIDIA's own ``tensorrt.plugin``, and their launch contracts.

NVIDIA's package (pure Python, from the ``tensorrt-cu13-bindings`` wheel) runs
here over a stand-in for TensorRT's compiled core (``nvidia_qdp``): its
decorators validate our ``register`` / ``autotune`` / ``aot_impl`` functions,
and its plugin classes are driven as TensorRT's builder drives them, with the
fields TensorRT's ONNX parser makes from the exported nodes.

The contract: TensorRT launches an AOT kernel with every input pointer in node
order, then the integer arguments ``aot_impl`` returned (32-bit each), then
every output pointer. For every node configuration the exporter can emit, the
expectation is derived from the node (its inputs, outputs, shapes and
attributes) and checked against the PTX entry NVIDIA's plugin class hands
TensorRT, which Triton's ptxas then assembles for each data-centre and edge
GPU architecture at the capped PTX version.
"""

import re
import subprocess

import numpy as np
import onnx
import pytest

import nvidia_qdp
from exporter.export_cases import exports  # noqa: F401  (session fixture)
from ssmprune.engine import trt as trt_mod
from ssmprune.engine.errors import PluginUnavailableError
from ssmprune.engine.plugins import PluginRef, custom_nodes, register_plugins
from ssmprune.exporter.manifest import MODEL_FILE
from ssmprune.exporter.schemas import DOMAIN, GATHER_ATTRIBUTES, SCAN_ATTRIBUTES
from ssmprune.plugins import tensorrt as trt_plugins
from ssmprune.plugins.tensorrt import quick
from ssmprune.plugins import ptx
from ssmprune.ops.triton import aot

#: A CUDA 12.4 driver, common on data-centre machines: kernels capped at PTX 8.4.
DRIVER = (12, 4)
ARCHS = (80, 86, 87, 89, 90)
FIELDS = {"SelectiveScan": list(SCAN_ATTRIBUTES), "TokenGather": list(GATHER_ATTRIBUTES)}
EXPORTS = [("vim_dense", "fp32"), ("vim_pruned", "fp32"), ("plainmamba_dense", "fp32"),
           ("plainmamba_pruned", "fp32"), ("vim_pruned", "fp16"), ("plainmamba_pruned", "fp16")]


RELEASES = [None, *nvidia_qdp.OLDER_RELEASES]  # None: the installed wheel (11.4)


@pytest.fixture
def nvidia(monkeypatch):
    """Loads NVIDIA's tensorrt.plugin (a release, default the installed wheel's) on the
    stand-in core, in a fresh process's state. A test calls it after exporting: with a
    module ``tensorrt`` in ``sys.modules``, torch.onnx's own probe for TensorRT fails."""
    def load(release=None):
        trt = nvidia_qdp.load(monkeypatch, release)
        monkeypatch.setattr(trt_plugins, "_REGISTERED", {})
        monkeypatch.setattr(quick, "SETTINGS", quick.AotSettings())
        monkeypatch.setattr(ptx, "driver_cuda_version", lambda: DRIVER)
        return trt
    return load


@pytest.mark.parametrize("release", RELEASES, ids=lambda r: r or "installed")
def test_nvidias_decorators_accept_both_ops(nvidia, release):
    trt = nvidia(release)
    # On the code before this test existed, NVIDIA's _validate_aot_impl refused scan_aot:
    # "No return annotation found for aot_impl function".
    refs = trt_plugins.register(trt, form="aot")
    assert refs == [(DOMAIN, "SelectiveScan", "1"), (DOMAIN, "TokenGather", "1")]
    from tensorrt.plugin._lib import QDP_REGISTRY, _TemplatePluginCreator

    for _, name, version in refs:
        creator = trt.get_plugin_registry().get_creator(name, version, DOMAIN)
        assert isinstance(creator, _TemplatePluginCreator)
        assert [f.name for f in creator.field_names] == FIELDS[name]
        # Declared as the INT32 fields TensorRT's parser hands over.
        assert {f.type for f in creator.field_names} == {nvidia_qdp.PluginFieldType.INT32}
        definition = QDP_REGISTRY[f"{DOMAIN}::{name}"]
        assert definition.aot_impl_func is not None and definition.impl_func is None
        assert definition.aot_impl_attr_names == FIELDS[name]


def test_one_plugin_form_per_process(nvidia):
    trt = nvidia()
    trt_plugins.register(trt, form="aot")
    with pytest.raises(trt_plugins.PluginFormError, match="already registered the aot form"):
        trt_plugins.register(trt, form="v3")
    flavour = trt_mod.Flavour("tensorrt", trt, trt.__version__)
    with pytest.raises(PluginUnavailableError, match="needs a new process"):
        register_plugins(flavour, [PluginRef(DOMAIN, "SelectiveScan", "1")], form="v3")


def test_a_creator_already_under_our_names_is_refused(nvidia, monkeypatch):
    trt = nvidia()
    trt_plugins.register(trt, form="aot")
    monkeypatch.setattr(trt_plugins, "_REGISTERED", {})  # another module registered them
    with pytest.raises(trt_plugins.PluginFormError, match="already registered in this process"):
        trt_plugins.register(trt, form="aot")


# ---- the exported nodes, as TensorRT's parser reads them ----------------------------------------

def _model(exports, case, dtype):  # noqa: F811
    result = exports.get(case, precision=dtype)
    return onnx.shape_inference.infer_shapes(onnx.load(str(result.directory / MODEL_FILE)))


@pytest.mark.parametrize("case, dtype", EXPORTS)
def test_exported_nodes_carry_what_every_parser_reads(exports, case, dtype):  # noqa: F811
    model = _model(exports, case, dtype)
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    assert nodes
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        # TensorRT 10.3: the lookup reads STRING attributes plugin_version / plugin_namespace
        # (an attribute of another type reads as ""), not the node's domain.
        for name, value in (("plugin_namespace", DOMAIN), ("plugin_version", "1")):
            assert attrs[name].type == onnx.AttributeProto.STRING
            assert attrs[name].s.decode() == value
        # The parser fills in no defaults, and aot_impl takes every field in order.
        assert all(attrs[f].type == onnx.AttributeProto.INT for f in FIELDS[node.op_type])
    assert set(custom_nodes(model)) <= {PluginRef(DOMAIN, n, "1") for n in FIELDS}


# ---- launch contracts --------------------------------------------------------------------------

def _io(model, node):
    """(stand-in DataType, static shape) of each node input, and of each output."""
    known = {v.name: v.type.tensor_type for v in [*model.graph.value_info, *model.graph.input,
                                                  *model.graph.output]}
    for init in model.graph.initializer:
        known[init.name] = onnx.helper.make_tensor_type_proto(init.data_type,
                                                              init.dims).tensor_type
    for n in model.graph.node:
        if n.op_type == "Constant":
            t = next(a.t for a in n.attribute if a.name == "value")
            known[n.output[0]] = onnx.helper.make_tensor_type_proto(t.data_type,
                                                                    t.dims).tensor_type

    def desc(name):
        t = known[name]
        return nvidia_qdp.ONNX_TYPES[t.elem_type], tuple(d.dim_value for d in t.shape.dim)

    return [desc(i) for i in node.input], [desc(o) for o in node.output]


def _configurations(model):
    """One (node, inputs, outputs) per distinct configuration of the model's custom nodes."""
    seen = {}
    for node in model.graph.node:
        if node.domain != DOMAIN:
            continue
        inputs, outputs = _io(model, node)
        attrs = tuple(sorted((a.name, a.i) for a in node.attribute
                             if a.type == onnx.AttributeProto.INT))
        seen.setdefault((node.op_type, tuple(inputs), attrs), (node, inputs, outputs))
    return list(seen.values())


def _expected_leading_scalars(node, inputs):
    """The integer arguments the node itself fixes, in aot_impl's order."""
    attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
    if node.op_type == "SelectiveScan":
        _, d, length = inputs[0][1]
        return [d, length]
    m = inputs[0][1][1]
    k, protect, insert_at = attrs["k"], attrs["protect"], attrs["insert_at"]
    return [m, k, protect, insert_at if protect >= 0 else k, k + (protect >= 0)]


def _assemble(ptx_text, tmp_path):
    from triton.backends.nvidia.compiler import get_ptxas

    target = re.search(r"\.target\s+(\w+)", ptx_text).group(1)
    (tmp_path / "k.ptx").write_text(ptx_text)
    done = subprocess.run([get_ptxas(aot.DEFAULT_ARCH).path, f"--gpu-name={target}",
                           str(tmp_path / "k.ptx"), "-o", str(tmp_path / "k.cubin")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _check_contract(trt, node, inputs, outputs, arch, tmp_path):
    creator = trt.get_plugin_registry().get_creator(node.op_type, "1", DOMAIN)
    layer = nvidia_qdp.build_aot_layer(
        trt, node.op_type, DOMAIN, nvidia_qdp.parser_fields(creator, node), inputs,
        nvidia_qdp.QuickPluginCreationRequest.UNKNOWN)  # no `aot` attribute, no network flag
    assert layer.outputs == outputs  # the types and shapes the plugin gave TensorRT
    entry = aot.entry_parameters(layer.ptx)
    n_in, n_out, n_scalars = len(node.input), len(node.output), len(layer.scalars)
    assert len(entry) == n_in + n_scalars + n_out
    assert [p.is_pointer for p in entry] == [True] * n_in + [False] * n_scalars + [True] * n_out
    assert all(p.ptx_type == ".u64" for p in entry if p.is_pointer)
    assert all(p.ptx_type in (".u32", ".s32", ".b32") for p in entry[n_in:n_in + n_scalars])
    assert set(layer.scalar_types) <= {nvidia_qdp.PluginArgDataType.INT32}
    assert layer.scalars[:len(_expected_leading_scalars(node, inputs))] == \
        _expected_leading_scalars(node, inputs)
    assert layer.launch["grid_x"] == inputs[0][1][0]  # one program row per batch element
    assert layer.launch["block_x"] % aot.WARP_SIZE == 0
    version = re.search(r"\.version\s+(\S+)", layer.ptx).group(1)
    assert version == ptx.as_text(ptx.choose(arch, None, DRIVER))
    assert re.search(r"\.target\s+sm_(\d+)", layer.ptx).group(1) == str(arch)
    _assemble(layer.ptx, tmp_path)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("case, dtype", EXPORTS)
def test_aot_launch_contract_of_every_exported_node(nvidia, exports, case, dtype, arch,  # noqa: F811
                                                     monkeypatch, tmp_path):
    configurations = _configurations(_model(exports, case, dtype))
    trt = nvidia()
    monkeypatch.setattr(quick, "build_arch", lambda: arch)
    trt_plugins.register(trt, form="aot")
    assert {n.op_type for n, _, _ in configurations} == (
        {"SelectiveScan", "TokenGather"} if "pruned" in case else {"SelectiveScan"})
    for node, inputs, outputs in configurations:
        _check_contract(trt, node, inputs, outputs, arch, tmp_path)


@pytest.mark.parametrize("release", nvidia_qdp.OLDER_RELEASES)
def test_older_releases_build_both_layers(nvidia, exports, release, tmp_path):  # noqa: F811
    # tensorrt.plugin 10.9 to 11.1 read a field declared `int` with int(array of one),
    # which NumPy >= 2.4 refuses ("only 0-dimensional arrays can be converted"): the
    # attributes are declared as int32 arrays instead.
    configurations = _configurations(_model(exports, "vim_pruned", "fp32"))
    trt = nvidia(release)
    trt_plugins.register(trt, form="aot")
    for op in ("SelectiveScan", "TokenGather"):
        node, inputs, outputs = next(c for c in configurations if c[0].op_type == op)
        _check_contract(trt, node, inputs, outputs, aot.DEFAULT_ARCH, tmp_path)


def _variant(node, inputs, float_type, gap_type, has_z, softplus):
    """A scan node of another configuration the schema admits: activations, gap type,
    z gate and softplus changed; D, delta_bias and gap present as the exporter writes them
    (zeros stand in for absent ones)."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    for a in out.attribute:
        if a.name == "has_z":
            a.i = has_z
        elif a.name == "delta_softplus":
            a.i = softplus
    t_slots = (0, 1, 3, 4, 6)  # u, delta, B, C, z
    changed = [(float_type if i in t_slots else gap_type if i == 8 else t, shape)
               for i, (t, shape) in enumerate(inputs)]
    return out, changed, [(float_type, inputs[0][1])]


@pytest.mark.parametrize("has_z", [0, 1])
@pytest.mark.parametrize("gap_type", ["INT32", "INT64"])
@pytest.mark.parametrize("float_type", ["FLOAT", "HALF", "BF16"])
def test_aot_launch_contract_of_every_scan_configuration(nvidia, exports, float_type,  # noqa: F811
                                                         gap_type, has_z, tmp_path):
    model = _model(exports, "vim_pruned", "fp32")
    node, inputs, _ = next(c for c in _configurations(model) if c[0].op_type == "SelectiveScan")
    trt = nvidia()
    trt_plugins.register(trt, form="aot")
    variant = _variant(node, inputs, nvidia_qdp.DataType[float_type],
                       nvidia_qdp.DataType[gap_type], has_z, softplus=has_z)
    _check_contract(trt, *variant, aot.DEFAULT_ARCH, tmp_path)


def test_a_node_without_an_attribute_breaks_the_aot_plugin(nvidia, exports):  # noqa: F811
    # Why the exporter writes every attribute: the parser fills in no defaults, and
    # NVIDIA's plugin passes aot_impl only the fields it was given.
    model = _model(exports, "vim_pruned", "fp32")
    node, inputs, _ = next(c for c in _configurations(model) if c[0].op_type == "SelectiveScan")
    trt = nvidia()
    trt_plugins.register(trt, form="aot")
    stripped = onnx.NodeProto()
    stripped.CopyFrom(node)
    keep = [a for a in stripped.attribute if a.name != "has_z"]
    del stripped.attribute[:]
    stripped.attribute.extend(keep)
    creator = trt.get_plugin_registry().get_creator("SelectiveScan", "1", DOMAIN)
    with pytest.raises(TypeError, match="has_z"):
        nvidia_qdp.build_aot_layer(trt, "SelectiveScan", DOMAIN,
                                   nvidia_qdp.parser_fields(creator, stripped), inputs)


def test_aot_kernels_refuse_dynamic_shapes(nvidia):
    trt = nvidia()
    trt_plugins.register(trt, form="aot")
    creator = trt.get_plugin_registry().get_creator("TokenGather", "1", DOMAIN)
    plugin = creator.create_plugin("TokenGather", DOMAIN, nvidia_qdp.PluginFieldCollection([
        nvidia_qdp.PluginField(n, np.array([v], np.int32), nvidia_qdp.PluginFieldType.INT32)
        for n, v in (("k", 4), ("protect", 0), ("insert_at", 1))]),
        nvidia_qdp.TensorRTPhase.BUILD, nvidia_qdp.QuickPluginCreationRequest.UNKNOWN)
    f32, i64 = nvidia_qdp.DataType.FLOAT, nvidia_qdp.DataType.INT64
    plugin.get_output_data_types([f32, i64, f32], [2, 2, 3])
    builder = nvidia_qdp.IExprBuilder()
    batch = nvidia_qdp.IDimensionExpr()  # a dynamic batch
    exprs = []
    for dims in ((batch, 9), (batch, 9), (batch, 9, 16)):
        e = nvidia_qdp.DimsExprs(len(dims))
        for i, d in enumerate(dims):
            e[i] = d if isinstance(d, nvidia_qdp.IDimensionExpr) else builder.constant(d)
        exprs.append(e)
    plugin.get_output_shapes(exprs, [], builder)
    in_out = [nvidia_qdp._tensor_desc(t, s) for t, s in
              ((f32, (2, 9)), (i64, (2, 9)), (f32, (2, 9, 16)), (i64, (2, 5)), (f32, (2, 5, 16)))]
    plugin.get_supported_format_combinations(in_out, 3)
    plugin.configure_plugin(in_out[:3], in_out[3:])
    plugin.set_tactic(0)
    with pytest.raises(ValueError, match="static shapes"):
        plugin.get_launch_params(exprs, in_out, 3, nvidia_qdp._LaunchParams(),
                                 nvidia_qdp._SymExprSetter(), builder)
