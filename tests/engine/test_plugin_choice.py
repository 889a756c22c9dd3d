"""Which plugin form and PTX version a build binds, checked before parsing; against
NVIDIA's own ``tensorrt.plugin`` on a stand-in core (``tests/nvidia_qdp.py``)."""

import types

import pytest

import nvidia_qdp
from ssmprune.engine import trt as trt_mod
from ssmprune.engine.build import BuildOptions, plugin_choice
from ssmprune.engine.errors import PluginUnavailableError, UnsupportedBuildOptionError
from ssmprune.engine.plugins import PluginRef
from ssmprune.plugins import tensorrt as trt_plugins
from ssmprune.plugins import ptx

NEEDED = [PluginRef("ssmprune", "SelectiveScan", "1")]


@pytest.fixture
def tensorrt_11(monkeypatch):
    """Full TensorRT 11.4 as far as a build's plugin choice sees it, with a CUDA 12.4 driver."""
    monkeypatch.delenv(trt_plugins.FORM_VAR, raising=False)
    monkeypatch.setattr(trt_plugins, "_REGISTERED", {})
    monkeypatch.setattr(ptx, "driver_cuda_version", lambda: (12, 4))
    trt = nvidia_qdp.load(monkeypatch)
    return trt_mod.Flavour("tensorrt", trt, trt.__version__)


def test_default_is_aot_at_the_newest_ptx_the_driver_loads(tensorrt_11):
    assert plugin_choice(tensorrt_11, BuildOptions(), NEEDED, "sm_90") == ("aot", 84)
    assert plugin_choice(tensorrt_11, BuildOptions(ptx_version="8.0"), NEEDED,
                         "sm_87") == ("aot", 80)
    assert plugin_choice(tensorrt_11, BuildOptions(plugin_form="v3"), NEEDED,
                         "sm_90") == ("v3", None)
    assert plugin_choice(tensorrt_11, BuildOptions(plugins=False), NEEDED, "sm_90") == \
        (None, None)
    assert plugin_choice(tensorrt_11, BuildOptions(), [], "sm_90") == (None, None)


@pytest.mark.parametrize("options, message", [
    (BuildOptions(hardware_compatible=True), "--hardware-compatible.*compiled for this GPU"),
    (BuildOptions(ptx_version="7.8"), r"PTX 7\.8.*sm_90.*PTX >= 8\.0"),
    (BuildOptions(ptx_version="eight"), "looks like 8.4"),
    (BuildOptions(plugin_form="v3", ptx_version="8.4"), "binds the v3 form"),
    (BuildOptions(plugins=False, ptx_version="8.4"), "has no plugin layers"),
])
def test_impossible_plugin_options_are_refused_before_parsing(tensorrt_11, options, message):
    with pytest.raises(UnsupportedBuildOptionError, match=message):
        plugin_choice(tensorrt_11, options, NEEDED, "sm_90")


def test_a_dynamic_batch_takes_v3_not_aot(tensorrt_11):
    with pytest.raises(UnsupportedBuildOptionError, match="static shapes.*--plugin-form v3"):
        plugin_choice(tensorrt_11, BuildOptions(), NEEDED, "sm_90", dynamic_batch=True)
    assert plugin_choice(tensorrt_11, BuildOptions(plugin_form="v3"), NEEDED, "sm_90",
                         dynamic_batch=True) == ("v3", None)


def test_a_driver_too_old_for_the_gpu(tensorrt_11, monkeypatch):
    monkeypatch.setattr(ptx, "driver_cuda_version", lambda: (11, 4))  # PTX 7.4 at most
    with pytest.raises(UnsupportedBuildOptionError, match="update the driver"):
        plugin_choice(tensorrt_11, BuildOptions(), NEEDED, "sm_90")
    assert plugin_choice(tensorrt_11, BuildOptions(), NEEDED, "sm_86") == ("aot", 74)


def test_aot_on_a_tensorrt_without_it(monkeypatch):
    monkeypatch.delenv(trt_plugins.FORM_VAR, raising=False)
    trt_10_3 = types.ModuleType("tensorrt_10_3")  # no tensorrt.plugin (JetPack 6)
    flavour = trt_mod.Flavour("tensorrt", trt_10_3, "10.3.0.30")
    assert plugin_choice(flavour, BuildOptions(), NEEDED, "sm_87") == ("v3", None)
    with pytest.raises(PluginUnavailableError, match=r"TensorRT >= 10\.9.*set SSMPRUNE_TRT"):
        plugin_choice(flavour, BuildOptions(plugin_form="aot"), NEEDED, "sm_87")


@pytest.mark.parametrize("arch, cuda, expected", [
    (90, (12, 4), 84), (90, (13, 4), 94), (80, (11, 0), 70), (89, (12, 6), 85),
    (87, None, 74), (120, (12, 8), 87)])
def test_ptx_choice(arch, cuda, expected):
    assert ptx.choose(arch, None, cuda) == expected


def test_ptx_text():
    assert ptx.parse("8.4") == 84 and ptx.as_text(94) == "9.4"
    for bad in ("8", "8.10", "v8.4", ""):
        with pytest.raises(ValueError):
            ptx.parse(bad)
