"""``ssmprune sweep`` (ssmprune/measure/sweep.py): its numbers are eval's for the same
points, GFLOPs are the model's, the files, resuming, and bad input."""

from __future__ import annotations

import json

import pytest
from measure.measure_cases import HELD_OUT_SUBSET, SWEEP_ARGS

from cli_helpers import assert_one_line_error, flip_a_weight_bit, invoke
from ssmprune.models import create_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_points_equal_eval_of_the_same_exports(digits_sweep, digits_npz):
    out, summary, _ = digits_sweep
    points = summary["points"]
    assert [(p["keep_ratio"], p["precision"]) for p in points] == [
        (1.0, "fp32"), (1.0, "int8"), (0.9, "fp32"), (0.9, "int8")]
    for p in points:
        result, stdout, stderr = invoke("eval", out / p["export"], "--data", digits_npz,
                                        "--json", "--threads", "1")
        assert result.exit_code == 0, stderr
        record = json.loads(stdout)
        assert record["samples"] == HELD_OUT_SUBSET
        for key in ("samples", "correct_top1", "correct_top5", "top1", "top5"):
            assert p[key] == record[key], (p["id"], p["precision"], key)
        assert record["target"]["precision"] == p["precision"]
        assert p["where"].startswith("ONNX Runtime") and p["p50_ms"] > 0


def test_fp32_points_equal_eval_of_the_models(digits_sweep, digits_npz):
    """The fp32 exports in ONNX Runtime and the models by name in PyTorch agree here."""
    _, summary, _ = digits_sweep
    for p, prune in zip((p for p in summary["points"] if p["precision"] == "fp32"),
                        ([], ["--prune", "vim_digits_top"])):
        result, stdout, stderr = invoke("eval", "vim_digits", *prune, "--data", digits_npz,
                                        "--json")
        assert result.exit_code == 0, stderr
        assert json.loads(stdout)["correct_top1"] == p["correct_top1"]


def test_gflops_and_tokens_are_the_models(digits_sweep):
    _, summary, _ = digits_sweep
    for p in summary["points"]:
        prune = None if p["keep_ratio"] == 1.0 else "vim_digits_top"  # the preset's 0.9
        model = create_model("vim_digits", prune=prune)
        assert p["gflops"] == round(model.flops() / 1e9, 4)
        assert p["tokens_per_block"] == model.tokens_per_block()
    dense = [p for p in summary["points"] if p["keep_ratio"] == 1.0]
    assert all(p["speedup_vs_dense"] == 1.0 for p in dense)
    assert summary["settings"]["prune_after"] == [2, 3, 5]
    assert summary["settings"]["importance"] == "clip"


def test_files_and_table(digits_sweep):
    out, summary, stdout = digits_sweep
    assert (out / "sweep.png").read_bytes().startswith(PNG_SIGNATURE)
    table = (out / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 1 ") or
            line.startswith("| 0.9 ")]
    assert len(rows) == 4 and "| 1 (dense) | fp32 | 65 x8 |" in rows[0]
    top1 = [f"{100 * p['top1']:.2f}" for p in summary["points"]]
    assert [row.split(" | ")[4] for row in rows] == top1
    assert rows[0] in stdout  # the CLI prints the table


def test_resume_keeps_finished_points_and_redoes_a_broken_one(digits_sweep, digits_npz,
                                                              tmp_path):
    import shutil

    src, summary, _ = digits_sweep
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    args = [*SWEEP_ARGS, "--data", digits_npz, "-o", out]
    result, _, stderr = invoke("sweep", *args)
    assert result.exit_code == 0, stderr
    assert stderr.count("finished earlier, kept") == 4
    assert "export (fp32)" not in stderr and "calibrate" not in stderr

    flip_a_weight_bit(out / "points" / "r0.9" / "int8" / "model.onnx")
    result, _, stderr = invoke("sweep", *args)
    assert result.exit_code == 0, stderr
    assert stderr.count("finished earlier, kept") == 3
    assert "r0.9 calibrate (int8" in stderr and "r0.9 export (fp32)" not in stderr
    again = json.loads((out / "sweep.json").read_text())
    assert [p["correct_top1"] for p in again["points"]] == \
        [p["correct_top1"] for p in summary["points"]]


def test_new_data_at_the_same_path_redoes_the_points(digits_sweep, digits_npz, tmp_path):
    """A resumed sweep compares the data's content, not its name."""
    import shutil

    import numpy as np

    src, _, _ = digits_sweep
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    data = tmp_path / "d.npz"
    arrays = dict(np.load(digits_npz))
    arrays["labels"] = (arrays["labels"] + 1) % 10  # every label wrong now
    np.savez(data, **arrays)
    result, _, stderr = invoke("sweep", *SWEEP_ARGS, "--data", data, "-o", out)
    assert result.exit_code == 0, stderr
    assert "finished earlier, kept" not in stderr
    again = json.loads((out / "sweep.json").read_text())
    assert all(p["top1"] < 0.2 for p in again["points"])


def test_calibration_verdicts_are_judged_on_held_out_data(digits_sweep):
    _, summary, _ = digits_sweep
    verdicts = [p["calibration_verdict"] for p in summary["points"] if p["precision"] == "int8"]
    assert verdicts and all(v["judged_on"] == "held_out" for v in verdicts)


def test_bad_data_is_refused_before_any_export(tmp_path):
    (tmp_path / "empty").mkdir()
    result, _, stderr = invoke("sweep", "vim_digits", "--keep-ratios", "1.0,0.9", "--data",
                               tmp_path / "empty", "-o", tmp_path / "out")
    assert_one_line_error(result, stderr)
    assert "export" not in stderr and not (tmp_path / "out" / "points").exists()


def test_named_sets_are_no_paths_and_files_are_checked_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "sweep.md").mkdir(parents=True)  # a folder where a file goes
    result, _, stderr = invoke("sweep", "vim_digits", "--keep-ratios", "1.0", "--data",
                               "digits:held_out", "-o", "out")
    assert_one_line_error(result, stderr, "sweep.md")
    assert "digits:held_out" not in stderr.splitlines()[0]
    assert not (tmp_path / "out" / "points").exists()


@pytest.mark.parametrize("args, fragment", [
    (["vim_digits", "--keep-ratios", "1.0,1.2"], "1.2 is not a keep ratio"),
    (["vim_digits", "--keep-ratios", "0.9", "--precisions", "int4"], "choose from fp32"),
    (["no_such_model", "--keep-ratios", "0.9"], "unknown model"),
    (["vim_t", "--keep-ratios", "0.9", "--prune-after", "0"], "--prune-after 0 is out of range"),
])
def test_sweep_bad_input(args, fragment, tmp_path):
    result, _, stderr = invoke("sweep", *args, "--data", "digits:held_out", "-o",
                               tmp_path / "out")
    assert_one_line_error(result, stderr, fragment)
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    result, _, stderr = invoke("sweep", "vim_digits", "--keep-ratios", "1.0", "--data",
                               "digits:held_out", "-o", path)
    assert_one_line_error(result, stderr, "exists and is not a folder")
