"""Engine manifest and the checks made before trusting an engine: no TensorRT, no GPU needed.

Bad input (issue): an engine built for another GPU architecture or TensorRT
version, a missing plugin at deserialisation, a truncated engine file: one
clear line each (an SsmpruneError), non-zero exit.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from ssmprune.engine import runtime
from ssmprune.engine import trt as trt_mod
from ssmprune.engine import plugins as plugins_mod
from ssmprune.engine.errors import (EngineFileError, EngineMismatchError, NoGpuError,
                                    PluginUnavailableError)
from ssmprune.engine.manifest import (EngineManifest, manifest_path, read_manifest,
                                      verify_engine_file, write_atomic, write_engine)
from ssmprune.engine.plugins import PluginRef, register_plugins
from ssmprune.errors import SsmpruneError

ENGINE = b"\x00engine bytes\xff" * 100
SCAN = {"name": "SelectiveScan", "version": "1", "namespace": "ssmprune"}


def fake_flavour(name="tensorrt", version="10.13.0.35", creators=()):
    """A Flavour over a stand-in module: enough for the checks, no TensorRT needed."""
    registry = SimpleNamespace(all_creators=[
        SimpleNamespace(plugin_namespace=ns, name=n, plugin_version=v) for ns, n, v in creators])
    module = SimpleNamespace(__name__="fake_tensorrt", BuilderFlag=SimpleNamespace(FP16=1),
                             get_plugin_registry=lambda: registry)
    return trt_mod.Flavour(name, module, version)


ONNX = {"file": "vim_t.onnx", "sha256": "0" * 64,
        "inputs": [{"name": "images", "shape": [1, 3, 224, 224], "dtype": "FLOAT"}],
        "outputs": [{"name": "logits", "shape": [1, 1000], "dtype": "FLOAT"}]}


def make_manifest(**changes) -> EngineManifest:
    fields = dict(engine={}, tensorrt={"flavour": "tensorrt", "version": "10.13.0.35"},
                  gpu={"targets": ["sm_87"], "built_on": "sm_87", "hardware_compatible": False},
                  precision="fp16", strongly_typed=False, plugins=[SCAN], onnx=ONNX)
    fields.update(changes)
    return EngineManifest(**fields)


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "vim_t.engine"
    write_engine(path, ENGINE, make_manifest())
    return path


def test_write_then_read_round_trips(engine):
    manifest = read_manifest(engine)
    assert manifest_path(engine).name == "vim_t.engine.json"
    assert manifest.engine["bytes"] == len(ENGINE) and manifest.engine["file"] == "vim_t.engine"
    assert manifest.plugins == [SCAN] and manifest.precision == "fp16"
    verify_engine_file(engine, manifest)
    assert engine.read_bytes() == ENGINE


def test_atomic_write_leaves_no_temporary_and_usual_permissions(tmp_path):
    path = write_atomic(tmp_path / "sub" / "f.bin", b"abc")
    assert path.read_bytes() == b"abc"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_truncated_engine_is_one_clear_error(engine):
    engine.write_bytes(ENGINE[:-10])
    with pytest.raises(EngineFileError, match=r"truncated: 1390 bytes, its manifest records 1400"):
        runtime.check_engine(engine, fake_flavour(), gpu_arch=None)


def test_replaced_engine_fails_its_sha256(engine):
    engine.write_bytes(ENGINE[::-1])
    with pytest.raises(EngineFileError, match="sha256"):
        runtime.check_engine(engine, fake_flavour(), gpu_arch=None)


def test_missing_engine_and_missing_manifest(engine, tmp_path):
    with pytest.raises(EngineFileError, match="no manifest other.engine.json"):
        read_manifest(tmp_path / "other.engine")
    engine.unlink()
    with pytest.raises(EngineFileError, match="does not exist"):
        runtime.check_engine(engine, fake_flavour(), gpu_arch=None)


@pytest.mark.parametrize("text, message", [
    ("{not json", "vim_t.engine.json is not valid JSON"),
    (json.dumps({"kind": "something-else"}), "not an ssmprune engine manifest"),
    (json.dumps({"kind": "ssmprune-engine", "schema_version": 99}), "schema_version 99"),
    (json.dumps({"kind": "ssmprune-engine", "format": 99}), "format 99; this ssmprune reads"),
    (json.dumps({"kind": "ssmprune-engine", "schema_version": 1}),
     "not a valid ssmprune engine manifest.*engine: Field required"),
])
def test_bad_manifest(engine, text, message):
    manifest_path(engine).write_text(text)
    with pytest.raises(EngineFileError, match=message):
        read_manifest(engine)


def test_other_tensorrt_version_is_refused(engine):
    with pytest.raises(EngineMismatchError,
                       match=r"built with TensorRT 10\.13\.0\.35, this machine has TensorRT "
                             r"10\.3\.0\.30: .*--version-compatible"):
        runtime.check_engine(engine, fake_flavour(version="10.3.0.30"), gpu_arch=None)


def test_other_tensorrt_flavour_is_refused(engine):
    with pytest.raises(EngineMismatchError, match="this machine has TensorRT-RTX 1.7.1.116"):
        runtime.check_engine(engine, fake_flavour("tensorrt_rtx", "1.7.1.116"), gpu_arch=None)


@pytest.mark.parametrize("installed, ok", [("10.14.1.48", True), ("10.3.0.30", False),
                                           ("11.4.0.106", False)])
def test_version_compatible_engine_runs_on_later_versions_of_its_major(installed, ok):
    manifest = make_manifest(version_compatible=True)
    if ok:
        runtime.check_tensorrt(manifest, fake_flavour(version=installed), "e")
    else:
        with pytest.raises(EngineMismatchError):
            runtime.check_tensorrt(manifest, fake_flavour(version=installed), "e")


def test_other_gpu_architecture_is_refused(engine):
    with pytest.raises(EngineMismatchError,
                       match=r"built for sm_87, this GPU is sm_90: rebuild it with --target sm_90"):
        runtime.check_engine(engine, fake_flavour(), gpu_arch="sm_90")
    assert runtime.check_engine(engine, fake_flavour(), gpu_arch="sm_87").precision == "fp16"


@pytest.mark.parametrize("gpu, arch, ok", [
    ({"targets": None, "built_on": None, "hardware_compatible": False}, "sm_120", True),
    ({"targets": ["sm_80+"], "built_on": "sm_90", "hardware_compatible": True}, "sm_87", True),
    ({"targets": ["sm_80+"], "built_on": "sm_90", "hardware_compatible": True}, "sm_75", False),
    ({"targets": ["sm_86", "sm_120"], "built_on": None, "hardware_compatible": False}, "sm_120",
     True),
])
def test_gpu_targets(gpu, arch, ok):
    if ok:
        runtime.check_gpu(make_manifest(gpu=gpu), arch, "e")
    else:
        with pytest.raises(EngineMismatchError, match="Ampere"):
            runtime.check_gpu(make_manifest(gpu=gpu), arch, "e")


def test_missing_plugin_at_deserialisation_is_named(monkeypatch):
    monkeypatch.setattr(plugins_mod, "_provider", lambda: None)  # an install without them
    needed = runtime.needed_plugins(make_manifest())
    assert needed == [PluginRef("ssmprune", "SelectiveScan", "1")]
    with pytest.raises(PluginUnavailableError,
                       match=r"no TensorRT plugin registered for ssmprune::SelectiveScan v1.*"
                             r"rebuild the engine with --no-plugins"):
        register_plugins(fake_flavour(), needed,
                         way_out="install ssmprune's TensorRT plugins, or rebuild the engine "
                                 "with --no-plugins")
    flavour = fake_flavour(creators=[("ssmprune", "SelectiveScan", "1")])
    assert register_plugins(flavour, needed) == needed


def test_plugins_that_cannot_register_are_named():
    with pytest.raises(PluginUnavailableError, match="could not be registered with TensorRT 10"):
        register_plugins(fake_flavour(), [PluginRef("ssmprune", "SelectiveScan", "1")])


def test_rtx_refuses_plugin_layers_instead_of_aborting():
    with pytest.raises(PluginUnavailableError, match="aborts the process.*--no-plugins"):
        register_plugins(fake_flavour("tensorrt_rtx", "1.7.1.116"),
                         [PluginRef("ssmprune", "SelectiveScan", "1")])


def test_loading_needs_a_gpu(engine, monkeypatch):
    monkeypatch.setattr(trt_mod, "current_gpu_arch", lambda: None)
    with pytest.raises(NoGpuError, match="needs an NVIDIA GPU"):
        runtime.load_engine(engine)


# ---- plugin forms and the aot kernels' PTX -------------------------------------------------------

def test_an_aot_engine_whose_ptx_the_driver_rejects_is_refused(monkeypatch):
    monkeypatch.delenv("SSMPRUNE_TRT_PLUGINS", raising=False)
    manifest = make_manifest(plugin_form="aot", ptx_version="9.4")
    with pytest.raises(EngineMismatchError,
                       match=r"PTX 9\.4.*CUDA 12\.4.*up to 8\.4.*--ptx-version 8\.4"):
        runtime.check_plugin_form(manifest, "e", driver=(12, 4))
    assert runtime.check_plugin_form(manifest, "e", driver=(13, 4)) == "aot"
    assert runtime.check_plugin_form(manifest, "e", driver=None) == "aot"  # no driver: unknown


def test_an_engine_of_the_other_plugin_form_is_refused(monkeypatch):
    monkeypatch.setenv("SSMPRUNE_TRT_PLUGINS", "v3")
    with pytest.raises(EngineMismatchError,
                       match="holds the aot form.*SSMPRUNE_TRT_PLUGINS=v3: unset"):
        runtime.check_plugin_form(make_manifest(plugin_form="aot", ptx_version="8.4"), "e")
    assert runtime.check_plugin_form(make_manifest(plugin_form="v3"), "e") == "v3"
    assert runtime.check_plugin_form(make_manifest(plugins=[]), "e") is None


@pytest.mark.parametrize("form, ptx", [(None, None), ("aot", None), ("aot", "8.x")])
def test_an_engine_whose_manifest_hides_its_plugin_form_is_refused(monkeypatch, form, ptx):
    monkeypatch.delenv("SSMPRUNE_TRT_PLUGINS", raising=False)
    with pytest.raises(EngineFileError, match="rebuild it"):
        runtime.check_plugin_form(make_manifest(plugin_form=form, ptx_version=ptx), "e",
                                  driver=(12, 4))


def test_nodes_named_by_op_for_tensorrt_10_9():
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("SelectiveScan", ["a"], ["b"], name="node_selective_scan_3",
                               domain="ssmprune"),
         onnx.helper.make_node("Relu", ["b"], ["c"], name="relu")], "g", [], [])
    renamed = plugins_mod.nodes_named_by_op(onnx.helper.make_model(graph))
    assert [n.name for n in renamed.graph.node] == ["SelectiveScan", "relu"]


def test_every_failure_is_a_user_error():
    for cls in (EngineFileError, EngineMismatchError, NoGpuError, PluginUnavailableError):
        assert issubclass(cls, SsmpruneError)
