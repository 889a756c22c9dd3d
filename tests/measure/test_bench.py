"""``ssmprune bench`` (ssmprune/measure/latency.py): statistics, round-robin order, ratios,
static batches, engines without a GPU, the JSON keys the help documents, the plot."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from parity.engine_cases import fake_engine, pretend_tensorrt

from cli_helpers import assert_one_line_error, invoke
from ssmprune.cli.measure import BENCH_JSON_HELP
from ssmprune.measure.latency import BenchSettings, _Case, bench, percentiles, \
    resolve_bench_targets, time_round_robin
from ssmprune.measure.targets import Runner, resolve_target

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_percentiles_match_numpy_linear_percentiles():
    times = [float(v) for v in range(100, 0, -1)]  # 1..100 ms, any order
    stats = percentiles(times, batch=4)
    assert stats["p50_ms"] == 50.5 and stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01) and stats["mean_ms"] == 50.5
    assert stats["images_per_s"] == pytest.approx(4 * 1000 / 50.5, rel=1e-4)


class _Recorder(Runner):
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self, x):
        self.log.append(self.name)
        return x


def test_round_robin_runs_every_target_once_per_round():
    log = []
    cases = [_Case(None, _Recorder(n, log), np.zeros(1)) for n in "abc"]
    time_round_robin(cases, warmup=2, iterations=3, seconds=None)
    assert log == list("aabbcc") + list("abc") * 3
    assert [len(c.times) for c in cases] == [3, 3, 3]


def test_seconds_runs_at_least_three_rounds():
    log = []
    cases = [_Case(None, _Recorder("a", log), np.zeros(1))]
    time_round_robin(cases, warmup=0, iterations=None, seconds=1e-9)
    assert len(cases[0].times) == 3


@pytest.fixture(scope="module")
def digits_bench(pruned_export):
    """dense vim_digits, its pruned preset and the pruned export, batches 2 and 8."""
    targets, skipped = resolve_bench_targets(["vim_digits", "vim_digits_top",
                                              str(pruned_export)])
    assert not skipped
    return bench(targets, BenchSettings((2, 8), ("torch", "onnxrt"), warmup=1,
                                        iterations=3, threads=1)).to_dict()


def test_ratios_are_p50_over_the_first_targets(digits_bench):
    rows = digits_bench["results"]
    for runtime, batch in {(r["runtime"], r["batch"]) for r in rows}:
        group = [r for r in rows if (r["runtime"], r["batch"]) == (runtime, batch)]
        base = group[0]
        assert base["ratio"] == 1.0 and base["ratio_to"] == base["target"]
        for r in group:
            assert r["ratio"] == pytest.approx(r["p50_ms"] / base["p50_ms"], rel=1e-3)
            assert r["speedup"] == pytest.approx(base["p50_ms"] / r["p50_ms"], rel=1e-3)
            assert r["iterations"] == 3 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
            assert r["peak_rss_mib"] > 0


def test_each_target_runs_where_it_can(digits_bench, pruned_export):
    rows = {(r["target"], r["runtime"], r["batch"]) for r in digits_bench["results"]}
    export = str(pruned_export)
    # Models: torch at both batches; the export: its reference model (torch) and ONNX
    # Runtime, at its static batch 8 only.
    assert rows == {("vim_digits", "torch", 2), ("vim_digits", "torch", 8),
                    ("vim_digits_top", "torch", 2), ("vim_digits_top", "torch", 8),
                    (export, "torch", 8), (export, "onnxrt", 8)}
    skips = {(s["target"], s["runtime"], s["batch"]): s["reason"]
             for s in digits_bench["skipped"]}
    assert "static batch 8" in skips[(export, "torch", 2)]
    assert "static batch 8" in skips[(export, "onnxrt", 2)]
    assert "does not run in onnxrt" in skips[("vim_digits", "onnxrt", None)]


def _documented_keys(section: str) -> set[str]:
    """The keys BENCH_JSON_HELP lists for a section: `section` {a, b (..), c}."""
    text = " ".join(BENCH_JSON_HELP.split())
    match = re.search(rf"`{section}`[^{{]*{{([^}}]*)}}", text)
    body = re.sub(r"\([^()]*(\([^()]*\)[^()]*)*\)", "", match.group(1))
    return {k.strip() for k in body.split(",")}


def test_json_keys_are_the_documented_ones(digits_bench):
    assert set(digits_bench) == {"machine", "settings", "targets", "results", "skipped"}
    for section in ("machine", "settings"):
        assert set(digits_bench[section]) == _documented_keys(section)
    for section in ("targets", "results", "skipped"):
        for row in digits_bench[section]:
            assert set(row) == _documented_keys(section), section


def test_bench_cli_json_plot_and_engine_skip(pruned_export, tmp_path, monkeypatch):
    """Engines need a GPU: without one, one skip line per engine and the run goes on."""
    engine = fake_engine(pruned_export, tmp_path / "m.engine")
    pretend_tensorrt(monkeypatch, installed=True, gpu=None)
    plot = tmp_path / "plots" / "bench.png"
    result, stdout, stderr = invoke("bench", "vim_digits", "vim_digits_top", engine,
                                    "--batch", "1", "--iterations", "2", "--warmup", "0",
                                    "--json", "--plot", plot)
    assert result.exit_code == 0, stderr
    data = json.loads(stdout)
    assert [r["target"] for r in data["results"]] == ["vim_digits", "vim_digits_top"]
    skip_lines = [line for line in stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skip_lines) == 1 and "m.engine needs an NVIDIA GPU" in skip_lines[0]
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert stderr.splitlines()[-1].startswith("PASSED | Runtime:")


def test_nothing_to_time_is_one_line_and_no_plot(pruned_export, tmp_path, monkeypatch):
    """Only skipped cases (an engine without a GPU, a batch no file takes): exit 2."""
    engine = fake_engine(pruned_export, tmp_path / "m.engine")
    pretend_tensorrt(monkeypatch, installed=True, gpu=None)
    plot = tmp_path / "bench.png"
    for args in ([engine, "--batch", "8"], [pruned_export, "--batch", "4"]):
        result, _, stderr = invoke("bench", *args, "--iterations", "2", "--plot", plot)
        assert_one_line_error(result, stderr, "nothing to time")
        assert any(line.startswith("skipped: ") for line in stderr.splitlines())
        assert not plot.exists()


def test_bench_table(pruned_export):
    result, stdout, stderr = invoke("bench", pruned_export, "--batch", "8,4", "--iterations",
                                    "2", "--threads", "1")
    assert result.exit_code == 0, stderr
    assert "onnxrt" in stdout and "1 (base)" in stdout
    assert "static batch 8 (its manifest's input shape); batch 4 skipped" in stderr


@pytest.mark.parametrize("args, fragment", [
    (["vim_digits", "--iterations", "2", "--seconds", "1"], "not both"),
    (["vim_digits", "--batch", "0"], "--batch 0 is out of range"),
    (["vim_digits", "--batch", "1,x"], "bad --batch"),
    (["vim_digits", "--runtimes", "tensorflow"], "choose from torch, onnxrt, trt"),
    (["vim_digits", "--seconds", "0"], "--seconds 0 is out of range"),
    (["vim_digits_top", "--prune", "vim_digits_top"], "is a pruning preset"),
    (["no_such_dir"], "does not exist"),
])
def test_bench_bad_input(args, fragment):
    result, _, stderr = invoke("bench", *args)
    assert_one_line_error(result, stderr, fragment)


def test_model_options_need_a_model_target(pruned_export):
    result, _, stderr = invoke("bench", pruned_export, "--prune", "vim_digits_top")
    assert_one_line_error(result, stderr, "build a model by name")


def test_batch_check_follows_the_manifest_range(pruned_export):
    from ssmprune.measure.targets import batch_skip

    target = resolve_target(str(pruned_export))
    assert target.batch_range == (8, 8) and target.static_batch == 8
    assert batch_skip(target, 8) is None and "batch 1 skipped" in batch_skip(target, 1)
    target.batch_range = (1, 16)  # a dynamic-batch export (manifest max_batch 16)
    assert target.static_batch is None
    assert batch_skip(target, 1) is None and batch_skip(target, 16) is None
    assert "dynamic batch 1 to 16; batch 32 skipped" in batch_skip(target, 32)
    assert batch_skip(resolve_target("vim_digits"), 256) is None


@pytest.mark.parametrize("args", [["bench", ""], ["bench", "vim_digits", " "],
                                  ["eval", "", "--data", "digits:held_out"],
                                  ["sweep", "", "--keep-ratios", "1.0", "--data", "digits",
                                   "-o", "out"]])
def test_empty_target_is_one_line(args):
    result, _, stderr = invoke(*args)
    assert_one_line_error(result, stderr, "is empty ('")


def test_plot_may_not_overwrite_what_bench_reads(pruned_export, tmp_path):
    """The export's manifest (through its .onnx) and a checkpoint are inputs too."""
    from ssmprune.models.digits import embedded_weights

    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(embedded_weights("vim_digits").read_bytes())
    for args, plot in (([pruned_export / "model.onnx"], pruned_export / "manifest.json"),
                       (["vim_digits", "--checkpoint", ckpt], ckpt)):
        before = plot.read_bytes()
        result, _, stderr = invoke("bench", *args, "--iterations", "2", "--plot", plot)
        assert_one_line_error(result, stderr, "--plot")
        assert plot.read_bytes() == before
