"""Fuzz: odd option values and odd paths over every command (info, run, visualize, export,
parity, calibrate, build, doctor).

Each command line is a command, its positionals and up to four options drawn from pools of
odd and valid values. Values that are valid but only slow (a 2048 px input, 4096 samples)
are left out: the suite is about what is refused and how. Runs happen inside the example's
workspace (relative outputs land there); a run that passes is checked for what it wrote.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from fuzzing import fuzz_settings, run_checked
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from ssmprune.engine.manifest import read_manifest, verify_engine_file
from ssmprune.exporter.manifest import read_export

# Text a user could type: no NUL (argv cannot carry one) and no lone surrogates.
typed = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=8)
NUMBERS = ["-1", "0", "1", "2", "1e9", "99999999999999999999999", "-99999999999999999999",
           "nan", "inf", "0.5", "abc", "", " ", "1,2", "0x10"]
numbers = st.sampled_from(NUMBERS) | typed
# Outputs: {WS} is the example's workspace (it holds `file`, a text file, and `dir`).
OUTPUTS = ["", " ", ".", "out", "{WS}/file", "{WS}/file/sub", "{WS}/dir", "{WS}/new/deeper/out",
           "{WS}/" + "x" * 300, "{WS}/ünï cödé", "{WS}/new\nline", "{WS}/.hidden", "/dev/null",
           "/proc/self/status", "/nonexistent/out", "{EXPORT}", "{EXPORT}/model.onnx",
           "{EXPORT}/manifest.json"]
outputs = st.sampled_from(OUTPUTS)
# Not "." or "/": a folder given on purpose is walked for images, the workspace's planted
# secrets or the whole file system with it.
INPUTS = ["", " ", "-", "{WS}/file", "{WS}/dir", "{WS}/missing", "{WS}/" + "x" * 300,
          "/dev/null", "/proc/self/status", "{EXPORT}", "{EXPORT}/model.onnx",
          "{EXPORT}/manifest.json"]
inputs = st.sampled_from(INPUTS)
MODELS = ["vim_digits", "plainmamba_digits", "", " ", "nope", "VIM_DIGITS", "{EXPORT}",
          "{EXPORT}/model.onnx", "x" * 300, "{WS}/file", "{WS}/dir"]
DIGITS = st.sampled_from(["vim_digits", "plainmamba_digits"])
models = DIGITS | st.sampled_from(MODELS) | typed
IMG_SIZES = st.sampled_from(["-1", "0", "1", "3", "7", "16", "32", "33", "2049", "160000",
                             "10000000000000000000000", "x"])
SEEDS = st.sampled_from(["-1", "0", "7", str(2**63 - 1), str(2**63), "1" * 30]) | numbers
COUNTS = st.sampled_from(["-1", "0", "1", "2", "4097", "1000000000000"]) | numbers
PRUNING = {
    "--prune": st.sampled_from(["vim_digits_top", "plainmamba_digits_top", "vim_t_paper", "",
                                "nope"]) | typed,
    "--keep-ratio": st.sampled_from(["0.7", "0", "1", "1.5", "-0.1", "nan", "0.5,0.5",
                                     ",".join(["0.9"] * 65)]) | numbers,
    "--prune-after": st.sampled_from(["1", "2,4", "0", "99", "4,2", "1,1", ",".join("1" * 65)])
    | numbers,
    "--importance": st.sampled_from(["clip", "l1", "l2", "l3", ""]),
    "--alignment": st.sampled_from(["gap", "none", "other"]),
}
FLAG = st.just(None)

# command -> (positionals, {option: values}); a positional or value None is left out.
SPECS = {
    "info": ([st.none() | models],
             {"--img-size": IMG_SIZES, **PRUNING, "--json": FLAG, "--presets": FLAG}),
    "run": ([models, st.lists(inputs | st.just("{IMAGE}"), max_size=2)],
            {"--checkpoint": inputs, "--seed": SEEDS, "--img-size": IMG_SIZES,
             "--no-resize": FLAG, "--repeats": COUNTS, **PRUNING}),
    "visualize": ([models, st.none() | inputs | st.just("{IMAGE}")],
                  {"-o": outputs, "--checkpoint": inputs, "--seed": SEEDS,
                   "--img-size": IMG_SIZES, **PRUNING}),
    "export": ([DIGITS | st.sampled_from(["", "nope"]) | typed],
               {"-o": outputs, "--checkpoint": inputs, "--seed": SEEDS,
                "--img-size": IMG_SIZES,
                "--batch": st.sampled_from(["0", "-1", "2", "257", "dynamic", "dynamic:0",
                                            "dynamic:4", "dynamic:x", "1e3", ""]) | numbers,
                "--dtype": st.sampled_from(["fp32", "fp16", "bf16", ""]),
                "--flavor": st.sampled_from(["plugins", "standard", "x"]),
                "--opset": st.sampled_from(["17", "18", "23", "24", "-1", "x"]), **PRUNING}),
    "parity": ([st.sampled_from(["{EXPORT}", "{EXPORT}/model.onnx"]) | inputs],
               {"--images": inputs | st.just("{IMAGE}"),
                "--runtimes": st.sampled_from(["torch,onnxrt", "onnxrt", "torch", "trt", "",
                                               ",", "torch,torch", "nope", "onnxrt,torch,trt"])
                | typed,
                "--engine": inputs, "--samples": COUNTS, "--checkpoint": inputs,
                "--batch": COUNTS, "--json": FLAG}),
    "calibrate": ([st.sampled_from(["{EXPORT}", "{EXPORT}/model.onnx"]) | inputs],
                  {"--data": st.sampled_from(["digits", "digits:train", "digits:nope",
                                              "digits:", "{WS}/dir", "{WS}/file", "x.npz",
                                              "{WS}/file.npz", ""]) | inputs,
                   "-o": outputs, "--report": outputs, "--samples": COUNTS,
                   "--holdout": st.sampled_from(["none", "digits:held_out", "{WS}/dir", ""]),
                   "--holdout-samples": COUNTS,
                   "--method": st.sampled_from(["minmax", "entropy", "percentile", "x"]),
                   "--precision": st.sampled_from(["int8", "fp8", "int4"]),
                   "--selection": st.sampled_from(["fp32", "int8", "fp8"]),
                   "--seed": SEEDS, "--no-resize": FLAG}),
    "build": ([st.sampled_from(["{EXPORT}", "{EXPORT}/model.onnx"]) | inputs],
              {"-o": outputs, "--timing-cache": outputs,
               "--target": st.sampled_from(["sm_86", "sm86", "sm_0", "sm_", "86",
                                            "sm_86,sm_120", ",", "sm_86,,sm_89"]) | typed,
               "--opt-level": st.sampled_from(["-1", "0", "6", "x"]),
               "--precision": st.sampled_from(["fp32", "fp16", "bf16", "int8"]),
               "--plugin-form": st.sampled_from(["v3", "aot", "x"]),
               "--ptx-version": st.sampled_from(["8.4", "x", "99.9", "", "8"]),
               "--batch-range": st.sampled_from(["1:1:1", "0:1:2", "3:2:1", "a:b:c", "1:8"]),
               "--version-compatible": FLAG, "--hardware-compatible": FLAG}),
    "doctor": ([], {"--json": FLAG, "--bogus": FLAG}),
}
# Always given first (a drawn option of the same name comes later and wins): a whole build
# at optimization level 0 and two calibration samples keep a passing run short.
# So are the required options, and a pruning for visualize, so that some runs pass.
DEFAULTS = {"run": ["--repeats", "1"], "build": ["--opt-level", "0", "--no-plugins"],
            "calibrate": ["--samples", "2", "--holdout", "none", "--data", "digits:train",
                          "-o", "int8"],
            "parity": ["--samples", "1"], "export": ["-o", "out"],
            "visualize": ["--keep-ratio", "0.7", "--prune-after", "2"]}


@st.composite
def command_lines(draw, command: str) -> list:
    positionals, options = SPECS[command]
    args = [command, *DEFAULTS.get(command, [])]
    for pool in positionals:
        value = draw(pool)
        args.extend(value if isinstance(value, list) else [] if value is None else [value])
    for name in draw(st.lists(st.sampled_from(sorted(options)), max_size=4, unique=True)):
        value = draw(options[name])
        args.extend([name] if value is None else [name, value])
    return args


def _fill(arg: str, ws, export_dir: Path, image: Path) -> str:
    return (arg.replace("{WS}", str(ws.root)).replace("{EXPORT}", str(export_dir))
            .replace("{IMAGE}", str(image)))


def _value(args: list, *names: str):
    """The last value given to an option (click takes the last)."""
    found = None
    for i, a in enumerate(args[:-1]):
        if a in names:
            found = args[i + 1]
    return found


def _ok(command: str, args: list, export_dir: Path):
    """A check of what a passing run printed or wrote."""
    def check(result):
        out = _value(args, "-o", "--output")
        if command == "run":
            assert "top-5 classes" in result.stdout
        elif command == "visualize":
            with Image.open(out or "pruning.png") as png:
                assert png.format == "PNG"
        elif command in ("export", "calibrate"):
            read_export(out, verify=True)
        elif command == "build":
            engine = Path(out) if out else export_dir / "model.engine"
            verify_engine_file(engine, read_manifest(engine))
        elif command == "doctor" and "--json" in args:
            json.loads(result.stdout)
        else:
            assert result.stdout.strip()

    return check


@contextlib.contextmanager
def _inside(ws):
    (ws.root / "file").write_text("a text file\n")
    (ws.root / "dir").mkdir()
    with contextlib.chdir(ws.root):
        yield


@pytest.mark.parametrize("command, examples", [
    ("info", 40), ("run", 25), ("visualize", 15), ("export", 8), ("parity", 15),
    ("calibrate", 10), ("build", 8), ("doctor", 4)])
def test_odd_options_and_paths(command, examples, digits_exports, workspace):
    image = Path(__file__).parent / "corpus" / "images" / "rgba.png"

    @fuzz_settings(examples)
    @given(args=command_lines(command), model=st.sampled_from(sorted(digits_exports)))
    def check(args, model):
        with workspace() as ws, _inside(ws):
            export_dir = ws.copy_export(digits_exports[model])
            args = [_fill(str(a), ws, export_dir, image) for a in args]
            run_checked(ws, args, ok=_ok(command, args, export_dir),
                        env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"})

    check()
