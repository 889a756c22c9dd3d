"""int8 Q/DQ arithmetic in ssmprune's ONNX Runtime sessions is exact on every x86 CPU.

Without VNNI (AVX2, AVX-512 without VNNI) ONNX Runtime's int8 MatMul adds u8 x s8
products in pairs saturated at int16; ``parity.runners.EXACT_INT8`` asks for its
exact kernel there. Checked three ways, the last two whatever this CPU is:
the saturating case (``int8_cases``) is exact in every kind of session here;
every session ssmprune makes carries the setting; and under qemu's Haswell (an
AVX2 CPU without VNNI) ONNX Runtime's defaults saturate while the setting is exact.
"""

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from calibration.int8_cases import saturating_matmul

from ssmprune.calibration import report
from ssmprune.parity import runners

QEMU = shutil.which("qemu-x86_64")
EMULATED_CPU = "Haswell"  # AVX2 and FMA, no AVX-512, no VNNI


def _assert_exact(y: np.ndarray, expected: np.ndarray) -> None:
    # int32 accumulation, then fp32 scaling: only the final rounding differs.
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_saturating_case_is_exact_in_every_session(tmp_path):
    model, x, expected = saturating_matmul()
    path = tmp_path / "matmul.onnx"
    onnx.save(model, path)
    _assert_exact(runners.onnxrt_session(path, threads=1).run(None, {"x": x})[0], expected)
    _assert_exact(report.run_onnx(path, x, "x", batch=len(x))["y"], expected)
    session = runners.OnnxrtSessionFromPath(path, threads=1)()  # parity and `run`
    _assert_exact(session.run(None, {"x": x})[0], expected)


def test_every_session_asks_for_exact_int8(monkeypatch, tmp_path):
    asked = []

    class Recorder:
        def __init__(self, model, options, providers):
            asked.append((providers, options))

        def get_outputs(self):
            return []

        def get_providers(self):
            return [runners.CPU_PROVIDER]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Recorder)
    runners.onnxrt_session(b"model")
    runners.OnnxrtSessionFromPath(tmp_path / "model.onnx")()
    report.run_onnx(tmp_path / "model.onnx", np.zeros((0, 1), np.float32), "x", batch=1)
    assert len(asked) == 3
    assert asked[2][0] == [runners.CPU_PROVIDER]  # the report runs on the CPU
    assert runners.EXACT_INT8  # what makes int8 exact without VNNI (test below)
    for _, options in asked:
        for key, value in runners.EXACT_INT8.items():
            assert _config_entry(options, key) == value, key


def _config_entry(options, key: str):
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime's answer for a key that was never set
        return None


def _emulated(tmp_path: Path, entries: dict[str, str]) -> np.ndarray:
    """The saturating case's output in ONNX Runtime on an emulated Haswell CPU."""
    model, x, _ = saturating_matmul()
    onnx.save(model, tmp_path / "matmul.onnx")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / f"y{len(entries)}.npy"
    script = Path(__file__).with_name("int8_cases.py")
    subprocess.run([QEMU, "-cpu", EMULATED_CPU, sys.executable, str(script),
                    str(tmp_path / "matmul.onnx"), str(tmp_path / "x.npy"), str(out),
                    *(f"{k}={v}" for k, v in entries.items())],
                   check=True, capture_output=True, timeout=300)
    return np.load(out)


@pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                    reason="emulating an AVX2 CPU without VNNI needs qemu-user "
                           "(apt-get install qemu-user) on an x86_64 machine")
def test_exact_on_an_avx2_cpu_without_vnni(tmp_path):
    _, _, expected = saturating_matmul()
    # The emulated CPU takes the saturating path: ONNX Runtime's defaults are far off there.
    default = _emulated(tmp_path, {})
    assert np.abs(default - expected).max() > 0.5 * np.abs(expected).max()
    _assert_exact(_emulated(tmp_path, runners.EXACT_INT8), expected)
