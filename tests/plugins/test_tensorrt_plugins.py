"""The TensorRT plugins of the two ops, as far as they can be checked without a GPU.

CPU (CI): each op's contract (types, formats, fields, output shapes) against
the ONNX schema; the IPluginV3 classes built on the installed TensorRT module's
interfaces (TensorRT-RTX here), called the way TensorRT calls them; field
serialisation round trips through the creator; each plugin's Triton launch run
in the interpreter against the reference op (the decorator form under NVIDIA's
own ``tensorrt.plugin`` and the AOT launch contracts: test_aot_launch_contracts.py).
GPU with full TensorRT: engines with the plugins built from small exports and
compared with PyTorch (``needs_gpu_tensorrt``).
"""


import numpy as np
import pytest
import torch

from numerics import max_rel_error
from ops.test_selective_scan import make_inputs
from ssmprune.engine import trt as trt_mod
from ssmprune.exporter.schemas import GATHER_ATTRIBUTES, SCAN_ATTRIBUTES, SCAN_INPUTS
from ssmprune.ops.selective_scan import selective_scan_ref
from ssmprune.ops.token_gather import token_gather_ref
from ssmprune.plugins import tensorrt as trt_plugins
from ssmprune.plugins.tensorrt import buffers, quick
from ssmprune.plugins.tensorrt.selective_scan import SPEC as SCAN
from ssmprune.plugins.tensorrt.spec import gather_output_dims
from ssmprune.plugins.tensorrt.token_gather import SPEC as GATHER
from ssmprune.plugins.tensorrt.v3 import field_collection, fields_to_dict, plugin_classes
from ssmprune.ops.triton import aot

FLAVOUR = trt_mod.installed()
needs_trt = pytest.mark.skipif(
    FLAVOUR is None, reason="no TensorRT bindings installed (`make setup` installs TensorRT-RTX)")
GPU = trt_mod.current_gpu_arch()
needs_gpu_tensorrt = pytest.mark.skipif(
    GPU is None or FLAVOUR is None or FLAVOUR.is_rtx,
    reason="building with plugins needs an NVIDIA GPU and full TensorRT (TensorRT-RTX aborts "
           "on Python plugin layers)")


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


# ---- contracts -------------------------------------------------------------------------------

def test_contracts_follow_the_onnx_schemas():
    assert tuple(name for name, _ in SCAN.inputs) == SCAN_INPUTS
    assert dict(SCAN.fields) == SCAN_ATTRIBUTES and dict(GATHER.fields) == GATHER_ATTRIBUTES
    assert [s.name for s in trt_plugins.SPECS] == ["SelectiveScan", "TokenGather"]


@pytest.mark.parametrize("t", ["fp32", "fp16", "bf16"])
def test_scan_types_follow_u(t):
    types = [t, t, "fp32", t, t, "fp32", t, "fp32", "int64"]
    assert SCAN.output_types(types) == [t]
    chosen = types + [t]
    assert all(SCAN.accepts(i, chosen[i], chosen[:i]) for i in range(len(chosen)))
    other = "fp16" if t == "fp32" else "fp32"
    assert not SCAN.accepts(1, other, chosen[:1])       # delta must match u
    assert not SCAN.accepts(9, other, chosen[:9])       # and so must y
    assert not SCAN.accepts(2, "fp16", chosen[:2])      # A stays fp32
    assert SCAN.accepts(8, "int32", chosen[:8]) and not SCAN.accepts(8, "fp32", chosen[:8])
    assert not SCAN.accepts(0, "int32", [])


def test_gather_types():
    assert GATHER.output_types(["fp32", "int64", "fp16"]) == ["int64", "fp16"]
    chosen = ["fp32", "int64", "bf16", "int64", "bf16"]
    assert all(GATHER.accepts(i, chosen[i], chosen[:i]) for i in range(5))
    assert not GATHER.accepts(0, "fp16", [])            # scores are fp32
    assert not GATHER.accepts(1, "int32", chosen[:1])   # positions are int64
    assert not GATHER.accepts(4, "fp32", chosen[:4])    # x_kept has x's type
    with pytest.raises(ValueError, match="3 inputs"):
        GATHER.output_types(["fp32", "int64"])


@pytest.mark.parametrize("protect, kept", [(-1, 5), (0, 6)])
def test_gather_output_dims(protect, kept):
    x = [2, 197, 384]
    dims = gather_output_dims([[2, 197], [2, 197], x], {"k": 5, "protect": protect}, int)
    assert dims == [[2, kept], [2, kept, 384]]


def test_field_values_defaults_and_required():
    assert GATHER.field_values({"k": np.array([7], np.int64), "plugin_version": "1"}) == \
        {"k": 7, "protect": -1, "insert_at": 0}
    assert SCAN.field_values({"delta_softplus": 1}) == {"delta_softplus": 1, "has_z": 1}
    with pytest.raises(ValueError, match="'k'"):
        GATHER.field_values({"protect": 0})


def test_type_combinations_cover_every_accepted_assignment():
    scan = quick.type_combinations(SCAN)
    assert len(scan) == 3 * 2  # u's float type x gap's integer type
    assert "FP16, FP16, FP32, FP16, FP16, FP32, FP16, FP32, INT32, FP16" in scan
    assert quick.type_combinations(GATHER) == [
        "FP32, INT64, FP32, INT64, FP32", "FP32, INT64, FP16, INT64, FP16",
        "FP32, INT64, BF16, INT64, BF16"]


def test_cuda_array_interface_carries_bf16_as_int16():
    face = buffers.cuda_array_interface(4096, (2, 3), torch.bfloat16)
    assert face == {"shape": (2, 3), "typestr": "<i2", "data": (4096, False), "version": 3,
                    "strides": None}
    assert buffers.cuda_array_interface(0, (5,), torch.int64)["typestr"] == "<i8"
    with pytest.raises(TypeError):
        buffers.cuda_array_interface(0, (1,), torch.complex64)


# ---- the IPluginV3 classes on the installed TensorRT module ----------------------------------

def _desc(trt, dtype, fmt=None):
    d = trt.DynamicPluginTensorDesc()
    t = trt.PluginTensorDesc()
    t.type = dtype
    t.format = fmt if fmt is not None else trt.TensorFormat.LINEAR
    d.desc = t
    return d


@needs_trt
def test_creator_declares_the_fields_and_round_trips_them():
    trt = FLAVOUR.trt
    _, Creator = plugin_classes(trt, GATHER)
    creator = Creator()
    assert (creator.name, creator.plugin_namespace, creator.plugin_version) == \
        ("TokenGather", "ssmprune", "1")
    assert [creator.field_names[i].name for i in range(len(creator.field_names))] == \
        ["k", "protect", "insert_at"]
    # The parser hands ONNX INT attributes over as plugin fields.
    parsed, keep = field_collection(trt, {"k": 12, "protect": 0, "insert_at": 1})
    plugin = creator.create_plugin("gather_1", parsed, trt.TensorRTPhase.BUILD)
    assert plugin.values == {"k": 12, "protect": 0, "insert_at": 1}
    assert (plugin.plugin_name, plugin.plugin_namespace, plugin.plugin_version,
            plugin.num_outputs) == ("TokenGather", "ssmprune", "1", 2)
    stored = plugin.get_fields_to_serialize()
    assert {k: v.tolist() for k, v in fields_to_dict(stored).items()} == \
        {"k": [12], "protect": [0], "insert_at": [1]}
    again = creator.create_plugin("gather_1", stored, trt.TensorRTPhase.RUNTIME)
    assert again.values == plugin.values and again.clone().values == plugin.values
    assert plugin.attach_to_context(None).values == plugin.values


@needs_trt
def test_plugin_types_and_formats_as_tensorrt_asks():
    trt = FLAVOUR.trt
    Plugin, _ = plugin_classes(trt, SCAN)
    plugin = Plugin({"delta_softplus": 1, "has_z": 1})
    assert plugin.get_capability_interface(trt.PluginCapabilityType.BUILD) is plugin
    h, f = trt.float16, trt.float32
    assert plugin.get_output_data_types([h, h, f, h, h, f, h, f, trt.int32]) == [h]
    io = [_desc(trt, t) for t in (h, h, f, h, h, f, h, f, trt.int64, h)]
    assert all(plugin.supports_format_combination(i, io, 9) for i in range(10))
    assert not plugin.supports_format_combination(9, io[:9] + [_desc(trt, f)], 9)
    assert not plugin.supports_format_combination(
        0, [_desc(trt, f, trt.TensorFormat.CHW4)] + io[1:], 9)
    assert not plugin.supports_format_combination(0, io, 8)  # a node with another arity
    assert plugin.get_workspace_size([], []) == 0 and plugin.get_valid_tactics() == []


@needs_trt
def test_register_adds_both_creators_once(monkeypatch):
    monkeypatch.setenv(trt_plugins.FORM_VAR, "v3")
    refs = trt_plugins.register(FLAVOUR.trt)
    assert refs == [("ssmprune", "SelectiveScan", "1"), ("ssmprune", "TokenGather", "1")]
    assert set(refs) <= trt_mod.registered_plugins(FLAVOUR)
    assert trt_plugins.register(FLAVOUR.trt) == refs  # idempotent


@needs_trt
def test_form_choice(monkeypatch):
    monkeypatch.setenv(trt_plugins.FORM_VAR, "aot")
    if not trt_plugins.has_aot(FLAVOUR.trt):
        with pytest.raises(ValueError, match="10.9"):
            trt_plugins.chosen_form(FLAVOUR.trt)
    monkeypatch.setenv(trt_plugins.FORM_VAR, "jit")
    with pytest.raises(ValueError, match="v3, aot"):
        trt_plugins.chosen_form(FLAVOUR.trt)
    monkeypatch.delenv(trt_plugins.FORM_VAR)
    assert trt_plugins.chosen_form(FLAVOUR.trt) == \
        ("aot" if trt_plugins.has_aot(FLAVOUR.trt) else "v3")


# ---- the plugins' launches, interpreted on CPU -----------------------------------------------

@pytest.mark.parametrize("has_z, softplus", [(1, True), (0, False)])
def test_scan_plugin_launch_matches_the_reference(interpreter, has_z, softplus):
    kw = make_inputs(2, 16, 13, 8, seed=3, softplus=softplus, with_z=bool(has_z))
    expected = selective_scan_ref(**kw)
    # The node's nine inputs as the exporter writes them: zeros and u stand in for
    # the optional ones, gap is int32 or int64.
    u = kw["u"]
    inputs = [u, kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"],
              kw["z"] if has_z else u, kw["delta_bias"], kw["gap"].to(torch.int32)]
    out = torch.empty_like(u)
    SCAN.make_launch(inputs, [out], {"delta_softplus": int(softplus), "has_z": has_z}).run(
        u.device)
    assert max_rel_error(out, expected) <= 1e-5


@pytest.mark.parametrize("protect, insert_at", [(-1, 0), (0, 2)])
def test_gather_plugin_launch_matches_the_reference(interpreter, protect, insert_at):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 11, generator=g)
    positions = torch.randperm(11, generator=g).expand(3, 11).contiguous()
    x = torch.randn(3, 11, 2, 5, generator=g)
    kept = 4 + (protect >= 0)
    out_pos, out_x = torch.empty(3, kept, dtype=torch.int64), torch.empty(3, kept, 2, 5)
    GATHER.make_launch([scores, positions, x], [out_pos, out_x],
                       {"k": 4, "protect": protect, "insert_at": insert_at}).run(x.device)
    ref_pos, ref_x = token_gather_ref(scores, positions, [x], 4, protect, insert_at)
    assert torch.equal(out_pos, ref_pos) and torch.equal(out_x, ref_x)


# ---- the ahead-of-time kernels ---------------------------------------------------------------

def test_aot_refuses_a_kernel_that_reads_hidden_parameters(monkeypatch):
    launch = GATHER.make_launch(
        [torch.randn(1, 4), torch.arange(4)[None], torch.randn(1, 4, 2)],
        [torch.empty(1, 2, dtype=torch.int64), torch.empty(1, 2, 2)],
        {"k": 2, "protect": -1, "insert_at": 0})
    compiled = aot.compile_for_cuda(launch)
    hidden = aot.hidden_parameters(compiled)
    monkeypatch.setattr(aot, "hidden_parameters",
                        lambda c: [type(p)(p.name, p.ptx_type, p.is_pointer, True)
                                   for p in hidden])
    with pytest.raises(ValueError, match="hidden parameters"):
        aot.without_idle_hidden_parameters(compiled)


# ---- engines with the plugins (GPU and full TensorRT) ----------------------------------------

@needs_gpu_tensorrt
@pytest.mark.parametrize("form", ["v3", "aot"])
@pytest.mark.parametrize("case", ["vim_pruned", "plainmamba_pruned"])
def test_plugin_engine_matches_torch(case, form, tmp_path, monkeypatch):
    from exporter.export_cases import CASES
    from ssmprune.engine.build import BuildOptions
    from ssmprune.engine.manifest import read_manifest
    from ssmprune.engine.runtime import EngineRunner
    from ssmprune.engine.save import build_to_file
    from ssmprune.exporter import ExportOptions, export
    from ssmprune.exporter.export import model_from_manifest
    from ssmprune.exporter.stages import INPUT_NAME

    if form == "aot" and not trt_plugins.has_aot(FLAVOUR.trt):
        pytest.skip(f"{FLAVOUR.display} has no tensorrt.plugin.aot_impl (needs >= 10.9)")
    c = CASES[case]
    result = export(ExportOptions(c.model, prune=c.prune, overrides=c.overrides), tmp_path / "e")
    built, engine_path, _ = build_to_file(result.directory, tmp_path / "m.engine",
                                          BuildOptions(plugin_form=form))
    assert {p.name for p in built.plugins} == {"SelectiveScan", "TokenGather"}
    assert read_manifest(engine_path).plugin_form == form
    model = model_from_manifest(result.manifest).eval()
    x = torch.randn(*result.manifest.input["shape"])
    with EngineRunner(engine_path) as runner:
        (out,) = runner.infer({INPUT_NAME: x.cuda()}).values()
    with torch.no_grad():
        assert max_rel_error(out.cpu(), model(x)) <= 1e-4


def test_aot_refuses_an_integer_argument_tensorrt_cannot_pass():
    from ssmprune.ops.triton.selective_scan import selective_scan_launch

    kw = make_inputs(1, 8, 5, 4, seed=0)
    launch = selective_scan_launch(**kw, out=torch.empty_like(kw["u"]))
    compiled = aot.compile_for_cuda(launch)
    args = list(launch.args)
    args[9] = 2 ** 31  # d_inner: an int64 argument to Triton
    wide = type(launch)(launch.kernel, launch.grid, tuple(args), launch.kwargs)
    with pytest.raises(ValueError, match="int32 only"):
        aot.scalar_arguments(aot.compile_for_cuda(wide), wide)
    assert len(aot.scalar_arguments(compiled, launch)) > 0
