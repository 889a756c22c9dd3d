"""The command line: outputs, one-line user errors, exit codes."""

import json

import pytest
import torch
from PIL import Image

from cli_helpers import assert_one_line_error, invoke
from ssmprune.models import create_model, save_checkpoint

SMALL_VIM = ["--img-size", "32"]


def test_help_lists_commands():
    result, out, _ = invoke("--help")
    assert result.exit_code == 0
    assert "info" in out and "run" in out


@pytest.mark.parametrize("name, params, gflops, tol", [
    ("vim_t", 7_148_008, 1.449, 0.01),
    ("vim_s", 25_796_584, 5.077, 0.01),
    ("vim_b", 97_598_440, 18.87, 0.01),
    ("plainmamba_l1", 7_551_656, 3.0, 0.02),
    ("plainmamba_l2", 26_145_832, 8.1, 0.02),
    ("plainmamba_l3", 50_956_456, 14.4, 0.02),
])
def test_info_json(name, params, gflops, tol):
    result, out, err = invoke("info", name, "--json")
    assert result.exit_code == 0, err
    info = json.loads(out)
    assert info["params"] == params
    assert abs(info["gflops"] - gflops) <= tol * gflops
    assert info["flops"] == pytest.approx(info["gflops"] * 1e9, rel=1e-4)
    assert len(info["tokens_per_block"]) == info["config"]["depth"]
    assert err.splitlines()[-1].startswith("PASSED | Runtime:")


def test_info_all_models_table():
    result, out, _ = invoke("info")
    assert result.exit_code == 0
    for name in ("vim_t", "vim_s", "vim_b", "vim_t_stride8", "vim_s_stride8",
                 "plainmamba_l1", "plainmamba_l2", "plainmamba_l3"):
        assert name in out


def test_info_stride8_tokens():
    _, out, _ = invoke("info", "vim_s_stride8", "--json")
    assert json.loads(out)["tokens_per_block"] == [730] * 24


def test_run_on_sample_photo():
    result, out, err = invoke("run", "vim_t", *SMALL_VIM, "--repeats", "1")
    assert result.exit_code == 0, err
    assert "seeded random weights" in out
    assert "-> output (1, 1000)" in out
    assert "latency" in out


def test_run_on_image_files(tmp_path):
    paths = []
    for i, size in enumerate([(40, 30), (64, 64)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", size, (i * 80, 10, 200)).save(path)
        paths.append(str(path))
    result, out, err = invoke("run", "plainmamba_l1", *paths, *SMALL_VIM, "--repeats", "1")
    assert result.exit_code == 0, err
    assert "-> output (2, 1000)" in out


def test_run_with_official_checkpoint(tmp_path):
    torch.manual_seed(3)
    model = create_model("vim_t", img_size=32)
    path = save_checkpoint(model, tmp_path / "vim_t.pth")
    result, out, err = invoke("run", "vim_t", *SMALL_VIM, "--checkpoint", str(path),
                              "--repeats", "1")
    assert result.exit_code == 0, err
    assert f"weights from {path}" in out


def test_unknown_model_lists_names():
    result, _, err = invoke("info", "vim_xl")
    assert_one_line_error(result, err, "unknown model 'vim_xl'", "vim_t", "plainmamba_l3")


def test_impossible_image_size():
    result, _, err = invoke("info", "vim_t", "--img-size", "230")
    assert_one_line_error(result, err, "img_size 230")


def test_wrong_image_size_without_resize(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (20, 20)).save(path)
    result, _, err = invoke("run", "vim_t", str(path), *SMALL_VIM, "--no-resize")
    assert_one_line_error(result, err, "20x20", "32x32")


def test_checkpoint_of_another_model(tmp_path):
    path = save_checkpoint(create_model("plainmamba_l1", img_size=32), tmp_path / "pm.pth")
    result, _, err = invoke("run", "vim_t", *SMALL_VIM, "--checkpoint", str(path))
    assert_one_line_error(result, err, "does not fit vim_t", "missing", "unexpected")


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(create_model("vim_t", img_size=32, depth=2), tmp_path / "t.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result, _, err = invoke("run", "vim_t", *SMALL_VIM, "--checkpoint", str(path))
    assert_one_line_error(result, err, "corrupt or truncated")


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image at all")
    result, _, err = invoke("run", "vim_t", str(path), *SMALL_VIM)
    assert_one_line_error(result, err, "not a readable image")


def test_missing_image_file(tmp_path):
    result, _, err = invoke("run", "vim_t", str(tmp_path / "nope.jpg"), *SMALL_VIM)
    assert_one_line_error(result, err, "does not exist")


@pytest.mark.parametrize("args", [["info", ""], ["info", " "], ["run", ""],
                                  ["visualize", ""], ["parity", ""]])
def test_empty_model_or_directory_is_one_line(args):
    """`info ''` printed the whole table and passed; '' as a path is the current folder."""
    result, out, err = invoke(*args)
    assert_one_line_error(result, err, "is empty ('")
    assert "vim_t" not in out


def test_huge_img_size_is_one_line_before_any_model(monkeypatch):
    """The issue's case (11.6 GB before the OOM killer): refused while parsing."""
    import ssmprune.models

    def built(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(ssmprune.models, "create_model", built)
    result, _, err = invoke("info", "plainmamba_digits", "--img-size", "160000")
    assert_one_line_error(result, err, "--img-size 160000", "16,384 patches")
