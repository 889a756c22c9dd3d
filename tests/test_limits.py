"""Bounds on what a user can type (ssmprune/limits.py): refused as one line before any work.

Each CLI case below used to reach the library: ``info plainmamba_digits --img-size
160000`` allocated 11.6 GB before the OOM killer ended it, ``--seed`` past int64 was an
OverflowError traceback, ``parity --samples 100000000`` ran until killed. The
``no_work`` fixture makes reaching the library a test failure, so none of that runs.
"""

import dataclasses
import resource
import subprocess
import sys
import time

import pytest

import ssmprune.exporter
import ssmprune.exporter.manifest
import ssmprune.models
import ssmprune.models.construct
import ssmprune.parity.compare
import ssmprune.predict
from cli_helpers import assert_one_line_error, invoke
from ssmprune import limits
from ssmprune.errors import ConfigError
from ssmprune.models import create_model, model_names
from ssmprune.models import registry


def _reached(*args, **kwargs):
    raise AssertionError("the command reached the library: the bound was not checked first")


@pytest.fixture
def no_work(monkeypatch):
    """Every library entry point the commands call fails the test if reached."""
    monkeypatch.setattr(ssmprune.models, "create_model", _reached)
    monkeypatch.setattr(ssmprune.models.construct, "build_model", _reached)
    monkeypatch.setattr(ssmprune.predict, "load_deployed", _reached)
    monkeypatch.setattr(ssmprune.parity.compare, "run_parity", _reached)
    monkeypatch.setattr(ssmprune.exporter, "export", _reached)
    monkeypatch.setattr(ssmprune.exporter.manifest, "read_export", _reached)


HUGE = "99999999999999999999999"
CASES = {
    "img_size_huge": (["info", "plainmamba_digits", "--img-size", "160000"], "--img-size 160000"),
    "img_size_huger": (["info", "plainmamba_digits", "--img-size", "400000"], "--img-size"),
    "img_size_zero": (["info", "vim_t", "--img-size", "0"], "--img-size 0"),
    "img_size_run": (["run", "vim_t", "--img-size", "160000"], "--img-size"),
    "img_size_visualize": (["visualize", "vim_t", "--img-size", "-16"], "--img-size -16"),
    "img_size_export": (["export", "vim_t", "-o", "out", "--img-size", "99999"], "--img-size"),
    "seed_overflow_run": (["run", "vim_t", "--seed", HUGE], "--seed 99999999999"),
    "seed_negative_run": (["run", "vim_t", "--seed", "-1"], "--seed -1"),
    "seed_overflow_visualize": (["visualize", "vim_t", "--seed", HUGE], "--seed"),
    "seed_overflow_export": (["export", "vim_t", "-o", "out", "--seed", HUGE], "--seed"),
    "seed_overflow_calibrate": (["calibrate", "x", "--data", "digits", "-o", "out", "--seed",
                                 HUGE], "--seed"),
    "repeats": (["run", "vim_t", "--repeats", "100000000"], "--repeats 100000000"),
    "parity_samples": (["parity", "x", "--samples", "100000000"], "--samples 100000000"),
    "parity_samples_zero": (["parity", "x", "--samples", "0"], "--samples 0"),
    "parity_batch": (["parity", "x", "--batch", "100000"], "--batch 100000"),
    "export_batch": (["export", "vim_t", "-o", "out", "--batch", "100000"], "--batch 100000"),
    "calibrate_samples": (["calibrate", "x", "--data", "digits", "-o", "out", "--samples",
                           "100000000"], "--samples 100000000"),
    "holdout_samples": (["calibrate", "x", "--data", "digits", "-o", "out",
                         "--holdout-samples", "100000000"], "--holdout-samples 100000000"),
    "prune_points": (["info", "vim_t", "--keep-ratio", "0.9", "--prune-after",
                      ",".join(map(str, range(1, 1001)))], "--prune-after"),
    "keep_ratios": (["info", "vim_t", "--prune-after", "6", "--keep-ratio",
                     ",".join(["0.9"] * 1000)], "--keep-ratio"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_bounds_option_is_one_line_before_any_work(case, no_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, fragment = CASES[case]
    result, _, err = invoke(*args)
    assert_one_line_error(result, err, fragment)
    assert not (tmp_path / "out").exists()


def test_a_huge_number_is_shortened_in_the_message():
    digits = "9" * 400
    with pytest.raises(ConfigError) as info:
        limits.SEED.check("--seed", int(digits))
    assert len(str(info.value)) < 300 and "400 digits" in str(info.value)


def _address_space(limit_bytes):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def test_huge_img_size_fails_fast_without_loading_torch():
    """The issue's case in a real process, capped at 2 GB: one line, exit 2, well under a
    second of work and torch never imported (so nothing can have been allocated)."""
    script = (
        "import sys\n"
        "from ssmprune.cli import main\n"
        "try:\n"
        "    main(['info', 'plainmamba_digits', '--img-size', '160000'])\n"
        "finally:\n"
        "    print('torch imported:', 'torch' in sys.modules)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, preexec_fn=_address_space(2 * 2**30))
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--img-size 160000" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    summary = done.stderr.splitlines()[-1]
    assert summary.startswith("FAILED | Runtime: ")
    assert float(summary.split()[3].rstrip("s")) < 1.0  # the command itself: ~0.0 s
    assert "torch imported: False" in done.stdout
    assert seconds < 10  # with the interpreter's start, on a busy machine


class _Unbuildable:
    """Stands in for a model class: building it fails the test."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("a model was built past the token bound")


def _unbuildable(monkeypatch, name):
    entry = registry.get_entry(name)
    family = dataclasses.replace(entry.family, model_cls=_Unbuildable)
    monkeypatch.setitem(registry._MODELS, name, dataclasses.replace(entry, family=family))


@pytest.mark.parametrize("name, img_size, largest", [
    ("vim_digits", 2048, 512),           # patch 4 stride 4: 512 px is a 128 x 128 grid
    ("vim_t_stride8", 2048, 1032),       # patch 16 stride 8: 16 + 127 * 8
    ("plainmamba_digits", 2064, 2048),   # total stride 16
])
def test_model_derived_img_size_is_checked_before_building(monkeypatch, name, img_size, largest):
    _unbuildable(monkeypatch, name)
    with pytest.raises(ConfigError) as info:
        create_model(name, img_size=img_size)
    message = str(info.value)
    assert "\n" not in message
    assert f"img_size {img_size}" in message and f"at most img_size {largest}" in message
    assert f"{limits.MAX_TOKENS:,}" in message
    if img_size <= limits.MAX_IMG_SIZE:  # past the CLI's own cap it never gets this far
        result, _, err = invoke("info", name, "--img-size", img_size)
        assert_one_line_error(result, err, f"at most img_size {largest}")


@pytest.mark.parametrize("name", model_names())
def test_largest_img_size_of_every_model_is_valid_and_tight(name):
    entry = registry.get_entry(name)
    largest = limits.largest_img_size(entry.config())
    cfg = entry.config(img_size=largest)  # valid and within the bound
    assert limits.patches(cfg) <= limits.MAX_TOKENS
    with pytest.raises(ConfigError, match="at most img_size"):
        limits.check_tokens(name, dataclasses.replace(cfg, img_size=largest + 16))


def test_cli_img_size_cap_is_the_largest_any_model_reaches():
    """MAX_IMG_SIZE (checked without importing torch) is derived: no registered model can
    use a larger size, and one can use exactly it."""
    largest = max(limits.largest_img_size(registry.get_entry(n).config()) for n in model_names())
    assert largest == limits.MAX_IMG_SIZE


def test_input_bytes_bound():
    limits.check_input_bytes("images", 4, 3, 224)
    with pytest.raises(ConfigError, match="5,000 images of 3 x 2048 x 2048"):
        limits.check_input_bytes("images", 5000, 3, 2048)


def test_empty_model_name_is_one_line(no_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["info", ""], ["info", "  "], ["run", ""], ["export", "", "-o", "out"],
                 ["visualize", ""]):
        result, out, err = invoke(*args)
        assert_one_line_error(result, err, "empty")
        assert "vim_t" not in out  # not the whole table
