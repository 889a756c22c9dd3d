"""``ssmprune doctor``: the report on this machine (no GPU, TensorRT-RTX) and its rules."""

import json
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cli_helpers import invoke
from ssmprune import doctor
from ssmprune.engine import trt

README = Path(__file__).resolve().parents[1] / "README.md"
ON_THIS_MACHINE = pytest.mark.skipif(
    trt.current_gpu_arch() is not None or trt.installed("tensorrt") is not None
    or trt.installed("tensorrt_rtx") is None,
    reason="describes a CPU-only machine with TensorRT-RTX and without full TensorRT")


def doctor_json():
    result, out, err = invoke("doctor", "--json")
    assert result.exit_code == 0, err
    assert err.splitlines()[-1].startswith("PASSED | Runtime:")
    return json.loads(out)


def documented_keys() -> set[str]:
    """The backticked keys listed in the README's doctor JSON section."""
    text = README.read_text()
    section = text[text.index("## ssmprune doctor"):]
    section = section[:section.index("\n## ", 1)]
    return set(re.findall(r"`([a-z_0-9]+)`", section))


def test_json_has_every_documented_key():
    report = doctor_json()
    keys = documented_keys()
    assert {"components", "missing", "seconds"} <= set(report) <= keys
    assert list(report["components"]) == list(doctor.COMPONENTS)
    for name, row in report["components"].items():
        assert name in keys
        assert set(row) == {"version", "usable", "detail", "fix", "facts"}
        assert set(row["facts"]) <= keys, name


@ON_THIS_MACHINE
def test_report_on_a_cpu_machine_with_tensorrt_rtx():
    # A fresh process: the time includes importing torch, Triton, TensorRT-RTX and ONNX
    # Runtime (about 3 s here); nothing is compiled or built.
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ssmprune.cli", "doctor", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.perf_counter() - start < 15
    report = json.loads(done.stdout)
    c = report["components"]
    assert c["gpu"]["usable"] is False and c["gpu"]["version"] is None
    assert c["gpu"]["facts"]["arch"] is None
    assert c["tensorrt"]["usable"] is True
    assert c["tensorrt"]["facts"]["flavour"] == "tensorrt_rtx"
    assert c["tensorrt"]["version"].startswith("TensorRT-RTX ")
    assert c["tensorrt_plugins"]["version"] == "none"
    assert c["tensorrt_plugins"]["facts"]["offered"] == []
    assert c["tensorrt_plugins"]["facts"]["usable"] == []
    assert c["triton"]["facts"]["mode"] == "interpreter"
    assert "CPUExecutionProvider" in c["onnxruntime"]["facts"]["providers"]
    assert c["cpu_scan_kernel"]["facts"]["state"] in ("compiled", "compiles on first use")
    assert set(report["missing"]) >= {"gpu", "tensorrt_plugins"}
    for name in report["missing"]:
        assert c[name]["fix"].strip(), name


def test_table_output():
    result, out, err = invoke("doctor")
    assert result.exit_code == 0, err
    for name in doctor.COMPONENTS:
        assert name in out
    assert "missing here:" in out


def test_bad_usage_exits_2():
    result, _, _ = invoke("doctor", "--no-such-option")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.parametrize("flavour, version, forms", [
    ("tensorrt", "10.3.0.30", ("v3",)),
    ("tensorrt", "10.8.0.43", ("v3",)),
    ("tensorrt", "10.9.0.34", ("v3", "aot")),
    ("tensorrt", "10.13.3.9", ("v3", "aot")),
    ("tensorrt", "11.4.1", ("v3", "aot")),
    ("tensorrt", "8.6.1", ()),
    ("tensorrt_rtx", "1.7.1.116", ()),
    (None, None, ()),
])
def test_plugin_forms_by_version(flavour, version, forms):
    assert doctor.plugin_forms(flavour, version) == forms


@pytest.mark.parametrize("gpu, torch_cuda, triton, usable", [
    (True, True, True, ("v3", "aot")),
    (True, False, True, ("aot",)),   # aot builds from Triton alone; v3 runs torch in enqueue
    (True, True, False, ()),
    (False, False, True, ()),        # full TensorRT builds only on a GPU
])
def test_usable_plugin_forms(gpu, torch_cuda, triton, usable):
    assert doctor.usable_plugin_forms(("v3", "aot"), gpu=gpu, torch_cuda=torch_cuda,
                                      triton=triton) == usable
    assert doctor.usable_plugin_forms(("v3",), gpu=gpu, torch_cuda=torch_cuda,
                                      triton=triton) == tuple(f for f in usable if f == "v3")


@pytest.mark.parametrize("disabled, compiler, built, avx512, state, text, usable", [
    (False, "cc", True, True, "compiled", "compiled (avx512)", True),
    (False, "cc", True, False, "compiled", "compiled (portable)", True),
    (False, "cc", False, True, "compiles on first use", "compiles on first use (avx512", True),
    (False, None, False, None, "not compiled", "not compiled: no C compiler", False),
    (True, "cc", True, True, "not compiled", "not compiled: disabled", False),
])
def test_cpu_kernel_state(disabled, compiler, built, avx512, state, text, usable):
    got_state, got_text, got_usable = doctor.cpu_kernel_state(disabled, compiler, built, avx512)
    assert (got_state, got_usable) == (state, usable)
    assert got_text.startswith(text)


def test_disabled_cpu_kernel_is_reported_with_a_fix(monkeypatch):
    monkeypatch.setenv("SSMPRUNE_DISABLE_CPU_KERNEL", "1")
    row = doctor.diagnose().row("cpu_scan_kernel")
    assert not row.usable and "SSMPRUNE_DISABLE_CPU_KERNEL" in row.fix


def test_full_tensorrt_without_a_gpu(monkeypatch):
    """Full TensorRT 10.9 on a machine without a GPU (a stand-in module): offered v3 only
    (the stand-in has no tensorrt.plugin), usable here none, each with a fix."""
    if trt.current_gpu_arch() is not None:
        pytest.skip("describes a machine without a GPU")
    stand_in = types.ModuleType("tensorrt_stand_in")
    stand_in.__path__ = []  # a package without a `plugin` submodule
    monkeypatch.setitem(sys.modules, stand_in.__name__, stand_in)
    flavour = trt.Flavour("tensorrt", stand_in, "10.9.0.34")
    monkeypatch.setattr(trt, "installed", lambda name=None: flavour)
    report = doctor.diagnose()
    engine, plugins = report.row("tensorrt"), report.row("tensorrt_plugins")
    assert engine.version == "TensorRT 10.9.0.34" and not engine.usable and engine.fix
    assert plugins.facts["offered"] == ["v3"] and plugins.facts["usable"] == []
    assert not plugins.usable and "aot" in plugins.fix and "GPU" in plugins.fix


def test_a_broken_probe_is_one_unusable_row(monkeypatch):
    def broken(probe):
        raise RuntimeError("driver exploded\nsecond line")

    monkeypatch.setitem(doctor.PROBES, "onnxruntime", broken)
    report = doctor.diagnose()
    row = report.row("onnxruntime")
    assert not row.usable and row.detail == "could not check: RuntimeError: driver exploded"
    assert row.fix
    assert report.row("triton").version  # the others still ran
