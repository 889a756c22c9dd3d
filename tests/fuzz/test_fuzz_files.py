"""Fuzz: truncated, byte-flipped, zeroed and padded ONNX, checkpoint and engine files.

An ONNX mutation is tried as it is (the manifest's sha256 refuses it) and re-hashed into the
manifest (``mutations.rehash``), so the ONNX parsers, the field checks and the runtimes meet
the broken file too.
"""

from __future__ import annotations

import pytest
from fuzzing import INTEGRITY, fuzz_settings, run_checked
from hypothesis import given
from hypothesis import strategies as st
from mutations import mutated_bytes, rehash
from parity.engine_cases import fake_engine

from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE
from ssmprune.models.digits import embedded_weights

# What each command does with an export whose ONNX was mutated (see test_fuzz_manifests for
# why build asks for bf16 and calibrate names missing data).
ONNX_COMMANDS = {
    "run": lambda ws, d: ["run", d, "--repeats", 1],
    "parity": lambda ws, d: ["parity", d, "--samples", 1],
    "build": lambda ws, d: ["build", d, "--no-plugins", "--precision", "bf16", "-o",
                            ws.root / "e.engine"],
    "calibrate": lambda ws, d: ["calibrate", d, "--data", ws.root / "missing", "-o",
                                ws.root / "int8"],
}


@pytest.mark.parametrize("command, examples", [("run", 20), ("parity", 12), ("build", 12),
                                               ("calibrate", 10)])
def test_mutated_onnx(command, examples, digits_exports, workspace):
    @fuzz_settings(examples)
    @given(model=st.sampled_from(sorted(digits_exports)), rehashed=st.booleans(),
           data=st.data())
    def check(model, rehashed, data):
        with workspace() as ws:
            export_dir = ws.copy_export(digits_exports[model])
            onnx = export_dir / MODEL_FILE
            original = onnx.read_bytes()
            _, blob = data.draw(mutated_bytes(original))
            onnx.write_bytes(blob)
            if rehashed:
                rehash(export_dir / MANIFEST_FILE, onnx)
            # Not re-hashed, a changed file is refused by its size or sha256, first.
            tampered = blob != original and not rehashed
            run_checked(ws, ONNX_COMMANDS[command](ws, export_dir),
                        env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"},
                        refused_by=INTEGRITY if tampered else None)

    check()


CHECKPOINT_COMMANDS = {
    "run": lambda ws, ckpt: ["run", "vim_digits", "--checkpoint", ckpt, "--repeats", 1],
    "visualize": lambda ws, ckpt: ["visualize", "vim_digits", "--prune", "vim_digits_top",
                                   "--checkpoint", ckpt, "-o", ws.root / "v.png"],
    "export": lambda ws, ckpt: ["export", "vim_digits", "--checkpoint", ckpt, "-o",
                                ws.root / "out"],
}


def _torch_checkpoint(path):
    """vim_digits's weights in the official ``torch.save`` container (a .pth)."""
    from ssmprune.models import create_model
    from ssmprune.models.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(create_model("vim_digits"), embedded_weights("vim_digits"))
    return save_checkpoint(model, path)


@pytest.fixture(scope="module")
def checkpoints(fuzz_root):
    return {".safetensors": embedded_weights("vim_digits").read_bytes(),
            ".pth": _torch_checkpoint(fuzz_root / "vim_digits.pth").read_bytes()}


@pytest.mark.parametrize("command, examples", [("run", 16), ("visualize", 8), ("export", 4)])
def test_mutated_checkpoint(command, examples, checkpoints, workspace):
    """export's mutations are cut short (truncation, or a flip in the first 4 KiB: the
    safetensors header, the pickle's start): a flip among the weights is a valid checkpoint,
    and a whole export, which run and visualize already cover."""
    @fuzz_settings(examples)
    @given(suffix=st.sampled_from(sorted(checkpoints)), data=st.data())
    def check(suffix, data):
        original = checkpoints[suffix]
        if command == "export":
            how = data.draw(st.sampled_from(["truncate", "flip"]))
            at = data.draw(st.integers(0, 4095))
            blob = (original[:at] if how == "truncate" else
                    original[:at] + bytes([original[at] ^ 0x5A]) + original[at + 1:])
        else:
            _, blob = data.draw(mutated_bytes(original))
        with workspace() as ws:
            ckpt = ws.root / f"weights{suffix}"
            ckpt.write_bytes(blob)
            run_checked(ws, CHECKPOINT_COMMANDS[command](ws, ckpt))

    check()


@pytest.mark.parametrize("command, examples", [("run", 10), ("parity", 8)])
def test_mutated_engine_file(command, examples, digits_exports, workspace):
    """The engine file itself mutated: its manifest's size and sha256 refuse it in one line
    (a stand-in engine; with no GPU an intact one ends at "needs a GPU")."""
    @fuzz_settings(examples)
    @given(data=st.data())
    def check(data):
        with workspace() as ws:
            export_dir = ws.copy_export(digits_exports["vim_digits"])
            engine = fake_engine(export_dir, ws.root / "vim.engine")
            original = engine.read_bytes()
            _, blob = data.draw(mutated_bytes(original))
            engine.write_bytes(blob)
            args = (["run", engine, "--repeats", 1] if command == "run" else
                    ["parity", export_dir, "--engine", engine, "--runtimes", "torch,trt",
                     "--samples", 1])
            # Refused by its size or sha256, not by "needs a GPU" (which would hide a
            # missing check).
            run_checked(ws, args, refused_by=INTEGRITY if blob != original else None)

    check()


@pytest.mark.parametrize("command", ["run", "parity"])
def test_a_rehashed_onnx_with_a_broken_graph_is_one_line(command, digits_exports, workspace):
    """Found by the suite (SSMPRUNE_FUZZ_SCALE=5): a flipped byte in a tensor name, its
    sha256 recorded again, passes every manifest check; ONNX Runtime's refusal to load the
    graph was its traceback."""
    import onnx

    with workspace() as ws:
        export_dir = ws.copy_export(digits_exports["vim_digits"])
        onnx_path = export_dir / MODEL_FILE
        model = onnx.load(str(onnx_path))
        model.graph.node[0].input[0] = "h" + model.graph.node[0].input[0][1:]
        onnx.save(model, str(onnx_path))
        rehash(export_dir / MANIFEST_FILE, onnx_path)
        result = run_checked(ws, ONNX_COMMANDS[command](ws, export_dir))
        assert result.exit_code == 2 and "ONNX Runtime cannot load" in result.stderr


def test_a_rehashed_onnx_with_a_name_not_utf8_is_one_line(digits_exports, workspace):
    """Found by the suite (SSMPRUNE_FUZZ_SCALE=6): ONNX Runtime quotes the name in its error,
    and its bindings cannot decode that message (a UnicodeDecodeError traceback)."""
    with workspace() as ws:
        export_dir = ws.copy_export(digits_exports["vim_digits"])
        onnx_path = export_dir / MODEL_FILE
        blob = onnx_path.read_bytes()
        at = blob.index(b"images")  # the graph input's name, where a node reads it
        onnx_path.write_bytes(blob[:at] + b"\xa0" + blob[at + 1:])
        rehash(export_dir / MANIFEST_FILE, onnx_path)
        result = run_checked(ws, ONNX_COMMANDS["run"](ws, export_dir))
        assert result.exit_code == 2, result.output
