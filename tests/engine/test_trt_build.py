"""Parse and build TensorRT engines on the CPU with TensorRT-RTX; the build command.

TensorRT-RTX (tensorrt-rtx-cu13-libs + -bindings, in requirements.txt) builds
ahead of time without a GPU; tests that need it skip with a reason when it is
not installed. Precision rules for TensorRT 10 (builder flags) are checked on
a stand-in flavour, since full TensorRT cannot be installed here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from exporter.export_cases import CASES, exports  # noqa: F401  (session fixture)
from ssmprune.cli import SummaryGroup
from ssmprune.cli.engine import register
from ssmprune.engine import trt as trt_mod
from ssmprune.engine.build import BuildOptions, build_engine, check_fp8_targets, resolve_precision
from ssmprune.exporter.precision import OnnxPrecision, onnx_precision
from ssmprune.engine.errors import (EngineBuildError, PluginUnavailableError,
                                    TensorRTUnavailableError, UnsupportedBuildOptionError)
from ssmprune.engine.manifest import read_manifest, verify_engine_file
from ssmprune.engine.plugins import custom_nodes, lower_to_standard_ops
from ssmprune.engine.runtime import check_engine

REPO = Path(__file__).resolve().parents[2]
RTX = trt_mod.installed("tensorrt_rtx")
needs_rtx = pytest.mark.skipif(
    RTX is None, reason="TensorRT-RTX (tensorrt_rtx_bindings) is not installed: `make setup`")
GPU = trt_mod.current_gpu_arch()
needs_gpu = pytest.mark.skipif(
    GPU is None or trt_mod.installed() is None,
    reason="running an engine needs an NVIDIA GPU and TensorRT (or TensorRT-RTX)")
FAST = dict(targets=("sm_86",), optimization_level=0, flavour="tensorrt_rtx")


class Tiny(torch.nn.Module):
    """Conv, norm, matmul, softmax, cumsum, gather: a few op families the models use."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        t = self.norm(self.conv(x).flatten(2).transpose(1, 2))  # (b, 4, 8)
        t = t[:, torch.tensor([3, 0, 2])]
        return torch.softmax(self.fc(t), -1).cumsum(1)


def export_tiny(folder: Path, dtype=torch.float32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Tiny().eval().to(dtype)
    path = folder / "tiny.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8, dtype=dtype),), str(path), dynamo=True,
                      verbose=False)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("tiny"))


def custom_onnx(path: Path, with_body: bool, op_type: str = "SelectiveScan") -> Path:
    """Relu -> ssmprune::<op_type> (an identity, with or without its local function) -> Relu."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node(op_type, ["a"], ["b"], domain="ssmprune", name="custom"),
             helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    functions = [helper.make_function("ssmprune", op_type, ["a"], ["b"],
                                      [helper.make_node("Neg", ["a"], ["n"]),
                                       helper.make_node("Neg", ["n"], ["b"])],
                                      [helper.make_opsetid("", 18)])] if with_body else []
    model = helper.make_model(graph, functions=functions,
                              opset_imports=[helper.make_opsetid("", 18),
                                             helper.make_opsetid("ssmprune", 1)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def cli():
    @click.group(cls=SummaryGroup)
    def group():
        pass

    register(group)
    return group


# ---- flavour detection ---------------------------------------------------------------------

def test_unknown_flavour_is_a_user_error():
    with pytest.raises(TensorRTUnavailableError, match="unknown TensorRT flavour 'bogus'"):
        trt_mod.installed("bogus")


def test_missing_flavour_says_how_to_install(monkeypatch):
    monkeypatch.setattr(trt_mod, "_import", lambda name: None)
    trt_mod._installed.cache_clear()
    try:
        with pytest.raises(TensorRTUnavailableError, match="pip install tensorrt-rtx-cu13-libs"):
            trt_mod.load()
        monkeypatch.setenv("SSMPRUNE_TENSORRT", "tensorrt")
        with pytest.raises(TensorRTUnavailableError, match=r"^TensorRT \(module tensorrt\) is not"):
            trt_mod.load()
    finally:
        trt_mod._installed.cache_clear()


@needs_rtx
def test_rtx_flavour_facts():
    assert RTX.display.startswith("TensorRT-RTX ")
    assert RTX.always_strongly_typed and RTX.builds_without_gpu
    assert not RTX.has_timing_cache and not RTX.has_version_compatible
    assert not RTX.has_add_plugin_v3
    assert "sm_86" in RTX.supported_targets() and "sm_90" not in RTX.supported_targets()


# ---- precision rules -----------------------------------------------------------------------

def tensorrt10():
    flags = SimpleNamespace(FP16=1, BF16=2, TF32=3)
    return trt_mod.Flavour("tensorrt", SimpleNamespace(BuilderFlag=flags), "10.13.0.35")


def tensorrt11():
    return trt_mod.Flavour("tensorrt", SimpleNamespace(BuilderFlag=SimpleNamespace(TF32=3)),
                           "11.4.0.106")


@pytest.mark.parametrize("carried, requested, expected", [
    (OnnxPrecision("fp32"), None, ("fp32", False, None)),
    (OnnxPrecision("fp32"), "fp16", ("fp16", False, "FP16")),
    (OnnxPrecision("fp32"), "bf16", ("bf16", False, "BF16")),
    (OnnxPrecision("fp16"), None, ("fp16", True, None)),
    (OnnxPrecision("fp16"), "fp16", ("fp16", True, None)),
    (OnnxPrecision("fp32", "int8"), None, ("int8", True, None)),
    (OnnxPrecision("fp32", "int8"), "fp16", ("int8+fp16", False, "FP16")),
])
def test_tensorrt10_uses_builder_flags_on_fp32_onnx(carried, requested, expected):
    assert resolve_precision(tensorrt10(), carried, requested) == expected


def test_tensorrt10_refuses_to_change_an_fp16_onnx():
    with pytest.raises(UnsupportedBuildOptionError, match="already computes in fp16"):
        resolve_precision(tensorrt10(), OnnxPrecision("fp16"), "bf16")


@pytest.mark.parametrize("carried, requested", [
    (OnnxPrecision("fp32"), None), (OnnxPrecision("fp16"), "fp16"),
    (OnnxPrecision("bf16"), None), (OnnxPrecision("fp16", "fp8"), None)])
def test_tensorrt11_takes_precision_from_the_onnx(carried, requested):
    assert resolve_precision(tensorrt11(), carried, requested) == (carried.name, True, None)


def test_fp8_needs_ada_or_newer():
    check_fp8_targets(["sm_89", "sm_120"])
    with pytest.raises(UnsupportedBuildOptionError, match="sm_86 has no fp8.*--precision int8"):
        check_fp8_targets(["sm_86", "sm_89"])


def test_tensorrt11_refuses_builder_flag_precision():
    with pytest.raises(UnsupportedBuildOptionError,
                       match="TensorRT 11.4.0.106 is always strongly typed.*export the model "
                             "at fp16.*--precision fp32"):
        resolve_precision(tensorrt11(), OnnxPrecision("fp32"), "fp16")


def test_onnx_precision_counts_weights(tiny, tmp_path):
    assert onnx_precision(onnx.load(str(tiny))) == OnnxPrecision("fp32")
    half = onnx.load(str(export_tiny(tmp_path, torch.float16)))
    assert onnx_precision(half) == OnnxPrecision("fp16")


# ---- custom nodes --------------------------------------------------------------------------

def test_lowering_inlines_bodies_and_counts_them(tmp_path):
    model = onnx.load(str(custom_onnx(tmp_path / "c.onnx", with_body=True)))
    assert [str(r) for r in custom_nodes(model)] == ["ssmprune::SelectiveScan v1"]
    lowered, counts = lower_to_standard_ops(model)
    assert counts == {"ssmprune::SelectiveScan": 1}
    assert [n.op_type for n in lowered.graph.node] == ["Relu", "Neg", "Neg", "Relu"]


def test_lowering_a_node_without_body_is_refused(tmp_path):
    model = onnx.load(str(custom_onnx(tmp_path / "c.onnx", with_body=False)))
    with pytest.raises(EngineBuildError, match="ssmprune::SelectiveScan have no standard-op body"):
        lower_to_standard_ops(model)


# ---- builds with TensorRT-RTX --------------------------------------------------------------

@needs_rtx
def test_rtx_builds_a_standard_onnx_without_gpu(tiny):
    built = build_engine(tiny, BuildOptions(**FAST))
    assert built.engine.nbytes > 1000
    assert (built.precision, built.strongly_typed, built.targets) == ("fp32", True, ["sm_86"])
    assert built.plugins == [] and built.lowered_ops == {}
    assert built.inputs == [{"name": "x", "shape": [2, 3, 8, 8], "dtype": "FLOAT"}]
    assert [o["shape"] for o in built.outputs] == [[2, 3, 5]]


@needs_rtx
def test_rtx_builds_an_fp16_onnx_as_fp16(tmp_path):
    built = build_engine(export_tiny(tmp_path, torch.float16), BuildOptions(**FAST))
    assert built.precision == "fp16" and built.inputs[0]["dtype"] == "HALF"


@needs_rtx
@pytest.mark.parametrize("change, error, message", [
    (dict(precision="fp16"), UnsupportedBuildOptionError, "always strongly typed"),
    (dict(targets=("sm_90",)), UnsupportedBuildOptionError, "cannot target sm_90"),
    (dict(version_compatible=True), UnsupportedBuildOptionError, "lean runtime"),
    (dict(hardware_compatible=True, targets=()), UnsupportedBuildOptionError,
     "does not apply to TensorRT-RTX"),
])
def test_rtx_refuses_what_it_cannot_do(tiny, change, error, message):
    with pytest.raises(error, match=message):
        build_engine(tiny, BuildOptions(**{**FAST, **change}))


@needs_rtx
def test_rtx_ignores_the_timing_cache_with_a_note(tiny, tmp_path):
    built = build_engine(tiny, BuildOptions(**FAST, timing_cache=tmp_path / "cache"))
    assert "no timing cache" in built.notes[0] and not (tmp_path / "cache").exists()


@needs_rtx
def test_rtx_lowers_custom_nodes_with_no_plugins(tmp_path):
    path = custom_onnx(tmp_path / "c.onnx", with_body=True)
    built = build_engine(path, BuildOptions(**FAST, plugins=False))
    assert built.lowered_ops == {"ssmprune::SelectiveScan": 1} and built.plugins == []


@needs_rtx
def test_rtx_plugin_build_is_refused_not_aborted(tmp_path):
    path = custom_onnx(tmp_path / "c.onnx", with_body=True)
    with pytest.raises(PluginUnavailableError, match="TensorRT-RTX .* cannot build plugin layers"):
        build_engine(path, BuildOptions(**FAST, plugins=True))


@needs_rtx
def test_rtx_parse_error_is_one_line(tmp_path):
    path = custom_onnx(tmp_path / "c.onnx", with_body=False)
    model = onnx.load(str(path))
    model.graph.node[1].domain = ""
    model.graph.node[1].op_type = "NoSuchOp"
    onnx.save(model, str(path))
    with pytest.raises(EngineBuildError, match=r"cannot parse c.onnx: node 'custom' \(NoSuchOp\)"):
        build_engine(path, BuildOptions(**FAST))


@needs_rtx
def test_rtx_builds_the_custom_op_bodies_alone(tmp_path):
    """The exporter's standard-op bodies of both ops parse and build (one node each)."""
    import numpy as np

    from ssmprune.exporter.bodies import selective_scan_function, token_gather_function
    from ssmprune.exporter.op_models import op_model

    g = np.random.default_rng(0)
    b, d, l, n = 1, 32, 20, 4
    rand = lambda *s: g.standard_normal(s).astype(np.float32)  # noqa: E731
    scan = op_model("SelectiveScan", dict(
        u=rand(b, d, l), delta=rand(b, d, l), A=-abs(rand(d, n)), B=rand(b, n, l),
        C=rand(b, n, l), D=rand(d), z=rand(b, d, l), delta_bias=rand(d),
        gap=np.zeros((b, l), np.int64)), ["y"], dict(delta_softplus=1), selective_scan_function)
    gather = op_model("TokenGather", dict(
        scores=rand(b, l), positions=np.tile(np.arange(l), (b, 1)), x=rand(b, l, 8)),
        ["kept", "x_kept"], dict(k=12, protect=10, insert_at=6), token_gather_function)
    for name, model in (("scan", scan), ("gather", gather)):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        built = build_engine(tmp_path / f"{name}.onnx", BuildOptions(**FAST, plugins=False))
        assert len(built.lowered_ops) == 1


# ---- the build command ---------------------------------------------------------------------

@needs_rtx
def test_build_command_writes_engine_and_manifest(tiny, tmp_path):
    out = tmp_path / "out" / "tiny.engine"
    result = CliRunner().invoke(cli(), ["build", str(tiny.parent), "--no-plugins", "--target",
                                        "sm_86", "--opt-level", "0", "-o", str(out)],
                                env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"})
    assert result.exit_code == 0, result.output
    assert f"built {out}" in result.output and "PASSED" in result.output
    manifest = read_manifest(out)
    verify_engine_file(out, manifest)
    assert manifest.tensorrt == {"flavour": "tensorrt_rtx", "version": RTX.version}
    assert manifest.gpu["targets"] == ["sm_86"] and manifest.precision == "fp32"
    assert manifest.onnx["file"] == "tiny.onnx" and manifest.plugins == []
    assert check_engine(out, RTX, gpu_arch="sm_86") == manifest
    data = json.loads((out.parent / "tiny.engine.json").read_text())
    assert data["kind"] == "ssmprune-engine" and len(data["engine"]["sha256"]) == 64


@needs_rtx
@pytest.mark.parametrize("args, message", [
    (["--precision", "fp16"], "always strongly typed"),
    (["--target", "sm_90"], "cannot target sm_90"),
    (["--version-compatible"], "--version-compatible is not supported"),
])
def test_build_command_bad_options_are_one_line(tiny, args, message):
    result = CliRunner().invoke(cli(), ["build", str(tiny), *args],
                                env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"})
    assert result.exit_code == 2
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "x.txt").write_text("x") and d / "x.txt", "not an .onnx file"),
    (lambda d: (d / "bad.onnx").write_bytes(b"\x00garbage") and d / "bad.onnx",
     "not a readable ONNX file"),
    (lambda d: d, "no .onnx file in"),
])
def test_build_command_bad_input_files(tmp_path, make, message):
    if RTX is None and "readable" in message:
        pytest.skip("reading the ONNX comes after finding TensorRT")
    result = CliRunner().invoke(cli(), ["build", str(make(tmp_path))])
    assert result.exit_code == 2 and message in result.output, result.output


# ---- real exports (ssmprune.exporter) -----------------------------------------------------



def build_cli(directory: Path, out: Path, *args: str):
    return CliRunner().invoke(cli(), ["build", str(directory), "--target", "sm_86", "-o", str(out),
                                      *args], env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"})


def test_no_plugins_lowering_is_the_standard_flavour(exports):
    """`build --no-plugins` on the plugins flavour hands TensorRT the very graph of the
    standard flavour, so building one proves the other (the 224 px build below)."""
    plugins = onnx.load(str(exports.get("vim_pruned").directory / "model.onnx"))
    standard = onnx.load(str(exports.get("vim_pruned", flavor="standard").directory
                             / "model.onnx"))
    lowered, counts = lower_to_standard_ops(plugins)
    c = CASES["vim_pruned"]
    assert counts == {"ssmprune::SelectiveScan": c.scans, "ssmprune::TokenGather": c.gathers}
    assert lowered.graph == standard.graph
    assert lower_to_standard_ops(standard) == (standard, {})


@needs_rtx
@pytest.mark.parametrize("flavor", ["plugins", "standard"])
@pytest.mark.parametrize("case", ["vim_pruned", "plainmamba_pruned"])
def test_rtx_builds_small_pruned_exports(exports, case, flavor, tmp_path):
    export = exports.get(case, flavor=flavor)
    out = tmp_path / "model.engine"
    result = build_cli(export.directory, out, "--no-plugins")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    c = CASES[case]
    assert manifest.source["model"] == c.model and manifest.source["flavor"] == flavor
    assert manifest.source["prune"]["prune_after"] == list(c.prune.prune_after)
    expected = ({"ssmprune::SelectiveScan": c.scans, "ssmprune::TokenGather": c.gathers}
                if flavor == "plugins" else {})
    assert manifest.lowered_ops == expected and manifest.plugins == []
    assert manifest.onnx["outputs"][0]["shape"] == [1, 100]


@needs_rtx
def test_rtx_refuses_plugin_build_of_an_export_in_one_line(exports, tmp_path):
    export = exports.get("vim_pruned", flavor="plugins")
    result = build_cli(export.directory, tmp_path / "model.engine")
    assert result.exit_code == 2 and "cannot build plugin layers" in result.output
    assert "--no-plugins" in result.output and not (tmp_path / "model.engine").exists()


@needs_rtx
def test_changed_export_is_refused_before_building(exports, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exports.get("vim_pruned", flavor="standard").directory, folder)
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    result = build_cli(folder, tmp_path / "model.engine")
    assert result.exit_code == 2 and "sha256" in result.output, result.output


@needs_rtx
def test_rtx_builds_the_int8_qdq_graph(exports, tmp_path):
    """Issue 6: `ssmprune build` takes a calibrated (Q/DQ) export; TensorRT-RTX, strongly
    typed, builds it as int8 from the graph itself."""
    from ssmprune.calibration import CalibrateOptions, PhotoCropsData, calibrate
    from ssmprune.exporter import read_export

    src = exports.get("vim_pruned").directory
    config = read_export(src)[1].config
    quantized = calibrate(src, PhotoCropsData(config, count=4), CalibrateOptions(samples=4),
                          tmp_path / "int8")
    out = tmp_path / "int8.engine"
    result = build_cli(quantized.directory, out, "--no-plugins", "--opt-level", "0")
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    verify_engine_file(out, manifest)
    assert manifest.precision == "int8" and manifest.source["precision"] == "int8"


@needs_rtx
@pytest.mark.parametrize("model, prune, flavor, args", [
    # Also the standard flavour of vim_t: test_no_plugins_lowering_is_the_standard_flavour.
    pytest.param("vim_t", "vim_t_paper", "plugins", ("--no-plugins",),
                 marks=pytest.mark.slow(minutes=2)),
    pytest.param("plainmamba_l1", "plainmamba_l1_paper", "standard", (),
                 marks=pytest.mark.slow(minutes=2)),
])
def test_rtx_builds_pruned_models_at_224(model, prune, flavor, args, tmp_path):
    """The issue's proof: real-size pruned models parse and build with TensorRT-RTX, no GPU."""
    from ssmprune.exporter import ExportOptions, export

    result = export(ExportOptions(model, prune=prune, flavor=flavor), tmp_path / "export")
    out = tmp_path / f"{model}.engine"
    # The default optimization level, as a user builds: with the Scan body about 40 s
    # for vim_t on 2 cores (the unrolled chunked body took 10 to 14 minutes).
    built = build_cli(result.directory, out, *args)
    assert built.exit_code == 0, built.output
    manifest = read_manifest(out)
    verify_engine_file(out, manifest)
    assert manifest.source["config"]["img_size"] == 224
    assert manifest.onnx["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert manifest.onnx["outputs"][0]["shape"] == [1, 1000]
    assert bool(manifest.lowered_ops) == (flavor == "plugins")


# ---- running (GPU only) --------------------------------------------------------------------

@needs_gpu
def test_engine_runs_and_matches_torch(tmp_path):
    from ssmprune.engine.runtime import EngineRunner
    from ssmprune.engine.save import build_to_file

    flavour = trt_mod.installed()
    if flavour.is_rtx and GPU not in flavour.supported_targets():
        pytest.skip(f"{flavour.display} does not support this GPU ({GPU})")
    path = export_tiny(tmp_path)
    torch.manual_seed(0)
    reference = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    _, engine_path, _ = build_to_file(path, tmp_path / "tiny.engine", BuildOptions())
    with EngineRunner(engine_path) as runner:
        (out,) = runner.infer({"x": x}).values()
    torch.testing.assert_close(out.cpu(), reference(x), rtol=1e-4, atol=1e-5)


# ---- TensorRT-RTX and Python plugins (README) ----------------------------------------------

@needs_rtx
def test_probe_python_plugin_in_a_subprocess():
    """Canary for the README: with 1.7.1 a Python IPluginV3 creator aborts the parser's process."""
    spec = importlib.util.spec_from_file_location(
        "probe_trt_plugins", REPO / "benchmarks" / "probe_trt_plugins.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    result = probe.probe("python-creator", "SelectiveScan", timeout=120)
    assert "probe: create_plugin returns" in result["probe_lines"], result
    if RTX.version == "1.7.1.116":
        assert result["returncode"] != 0, "TensorRT-RTX no longer aborts: update the README"
    body = probe.probe("python-creator+function", "SelectiveScan", timeout=120)
    assert body["returncode"] == 0 and "build -> engine" in body["probe_lines"][-1], body


def test_help_is_fast_and_lists_options():
    result = subprocess.run([sys.executable, "-c",
                             "import sys; from ssmprune.cli.engine import build; "
                             "build.main(['--help'], standalone_mode=False); "
                             "sys.exit('tensorrt_rtx_bindings' in sys.modules)"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "--no-plugins" in result.stdout and "--precision" in result.stdout
