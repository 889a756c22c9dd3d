"""benchmarks/gpu_check.py: the run on this machine (every item skipped), its report
writer and arithmetic, its isolation of items, and the items' code at small sizes on the
CPU (Triton's interpreter), so a lent GPU's one run is not their first."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssmprune.pruning import PruneConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_check.py"
requires_no_gpu = pytest.mark.skipif(torch.cuda.is_available(),
                                     reason="describes a machine without a CUDA GPU")


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


items = load("gpu_check_items")
gpu_check = load("gpu_check")


@requires_no_gpu
def test_run_without_a_gpu_skips_every_item(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert [i["name"] for i in report["items"]] == list(items.ITEMS)
    for item in report["items"]:
        assert item["status"] == "skipped" and item["reason"], item
        assert "no CUDA GPU" in item["reason"]
    assert report["passed"] is True
    env = report["environment"]
    assert env["python"] and env["torch"] == torch.__version__ and env["gpu"] is None
    assert "doctor" in env
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| kernels | skipped | no CUDA GPU" in md
    assert "## Environment" in md and "## Items" in md
    assert done.stdout.splitlines()[-1].startswith("PASSED | Runtime:")


def test_unknown_item_is_a_usage_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "-o", str(tmp_path), "--items",
                           "kernels,warp_drive"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "warp_drive" in done.stderr and "Traceback" not in done.stderr


def test_markdown_table():
    rows = [{"a": 1, "b": True}, {"b": False, "c": "x|y"}]
    assert gpu_check.markdown_table(rows) == (
        "| a | b | c |\n|---|---|---|\n| 1 | yes |  |\n|  | NO | x\\|y |\n")
    assert gpu_check.markdown_table(rows, ["c"]) == "| c |\n|---|\n|  |\n| x\\|y |\n"


def test_scan_bytes():
    # Vim-S, batch 64, fp32: u, delta, z, y (64*768*197 each), B, C (64*16*197), A (768*16),
    # D and delta_bias (768) fp32, gap (64*197) int64.
    b, d, l, n = 64, 768, 197, 16
    expected = 4 * b * d * l * 4 + 2 * b * n * l * 4 + d * n * 4 + 2 * d * 4 + b * l * 8
    assert items.scan_bytes(b, d, l, n, 4) == expected
    # fp16 activations halve u, delta, z, y, B, C; A, D, delta_bias stay fp32.
    assert items.scan_bytes(b, d, l, n, 2) == (expected - (4 * b * d * l + 2 * b * n * l) * 2)
    assert items.scan_bytes(1, 8, 4, 2, 4, z=False, D=False, bias=False, gap_itemsize=0) == (
        3 * 32 * 4 + 2 * 8 * 4 + 16 * 4)
    assert items.copy_bytes(1000, 4) == 8000


def test_a_failing_item_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    outcomes = {"kernels": {"status": "failed", "reason": "RuntimeError: boom"},
                "bandwidth": {"status": "passed", "summary": "fine", "rows": [{"x": 1}]}}
    monkeypatch.setattr(gpu_check, "environment", lambda: {"python": "3"})
    monkeypatch.setattr(gpu_check, "skip_reason", lambda needs, env: None)
    monkeypatch.setattr(gpu_check, "run_item",
                        lambda name, quick, out, timeout, log: outcomes[name])
    assert gpu_check.run(["kernels", "bandwidth"], True, tmp_path) == 1
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [(i["name"], i["status"]) for i in report["items"]] == [
        ("kernels", "failed"), ("bandwidth", "passed")]
    assert report["passed"] is False
    assert "| kernels | failed | RuntimeError: boom |" in (tmp_path / "gpu-check.md").read_text()


def test_an_exception_in_an_item_is_one_line(tmp_path, monkeypatch):
    def broken(quick, work_dir):
        raise ValueError("first line\nsecond line")

    monkeypatch.setitem(items.ITEMS, "kernels", broken)
    gpu_check.run_child("kernels", True, tmp_path, tmp_path / "r.json")
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["status"] == "failed" and record["reason"] == "ValueError: first line"
    assert "Traceback" in record["traceback"]


def test_an_item_past_its_limit_fails(tmp_path):
    with open(tmp_path / "log", "w") as log:
        record = gpu_check.run_item("kernels", True, tmp_path, 0.2, log)
    assert record == {"status": "failed", "reason": "timed out after 0s"}


# ---- the items' code, small and on the CPU ------------------------------------------------

@pytest.fixture
def small_items(monkeypatch):
    """The items on CPU tensors in Triton's interpreter, at small sizes, timed once."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(items, "DEVICE", "cpu")
    monkeypatch.setattr(items, "FAMILIES", {
        "vim_s": dict(d=24, n=8, l=19, l_pruned=11, per_image=1, z=True),
        "plainmamba_l1": dict(d=16, n=4, l=16, l_pruned=7, per_image=4, z=False)})
    monkeypatch.setattr(items, "GATHERS", {
        "vim_s": dict(m=17, k=12, protect=8, insert_at=6, width=8, tensors=2),
        "plainmamba_l1": dict(m=16, k=10, protect=-1, insert_at=0, width=4, tensors=1)})
    monkeypatch.setattr(items, "BANDWIDTH_BATCH", 2)
    monkeypatch.setattr(items, "COPY_MIB", {True: 1, False: 1})
    monkeypatch.setattr(items, "FORWARD_MODEL", ("vim_t", PruneConfig(0.5, (1,)), dict(
        img_size=32, patch_size=8, stride=8, embed_dim=16, depth=3, num_classes=5)))
    monkeypatch.setattr(items, "FORWARD_BATCHES", {True: (1,), False: (1,)})
    monkeypatch.setattr(items, "device_ms", lambda fn, repeats, warmup=3: (fn(), 1.0)[1])


@pytest.mark.usefixtures("small_items")
def test_kernels_item_at_small_sizes(tmp_path):
    outcome = items.kernels(True, tmp_path)
    assert outcome.passed, outcome.rows
    scans = [r for r in outcome.rows if r["op"] == "scan"]
    gathers = [r for r in outcome.rows if r["op"] == "gather"]
    assert len(scans) == len(items.scan_cases(True)) == 21 and len(gathers) == 6
    assert {r["dtype"] for r in outcome.rows} == {"fp32", "fp16", "bf16"}
    assert {"gap int32", "pruned as called"} <= {r["variant"] for r in scans}


@pytest.mark.usefixtures("small_items")
def test_bandwidth_item_at_small_sizes(tmp_path):
    outcome = items.bandwidth(True, tmp_path)
    assert [r["dtype"] for r in outcome.rows] == ["fp32", "fp32", "fp16", "bf16"]
    assert outcome.rows[0]["of_copy"] == "100%" and "of it" in outcome.summary


@pytest.mark.usefixtures("small_items")
def test_forward_item_at_small_sizes(tmp_path):
    outcome = items.forward(True, tmp_path)
    assert outcome.passed, outcome.rows
    assert [r["measure"] for r in outcome.rows] == [
        "CUDA vs CPU max_rel", "CUDA vs CPU max_rel", "latency ms", "latency ms", "speed-up"]


def test_tensorrt_item_skips_without_full_tensorrt(tmp_path):
    from ssmprune.engine import trt

    if trt.installed("tensorrt") is not None:
        pytest.skip("full TensorRT is installed here")
    with pytest.raises(items.Skipped, match="full TensorRT"):
        items.tensorrt(True, tmp_path)
