"""ssmprune.outputs: output paths checked before any work, written whole or not at all."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
from exporter.export_cases import vim_digits_export  # noqa: F401  (session fixture)

from cli_helpers import assert_one_line_error, invoke
from ssmprune import outputs
from ssmprune.errors import OutputPathError
from ssmprune.exporter.manifest import MANIFEST_FILE
from ssmprune.interrupt import Interrupted
from ssmprune.outputs import atomic_dir, atomic_file, prepare_output


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("path", ["", " "])
def test_empty_output_is_refused(path):
    with pytest.raises(OutputPathError, match="--report is empty"):
        prepare_output(path, "file", option="--report")


def test_file_output_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(OutputPathError, match="is a folder; give a file path"):
        prepare_output(tmp_path, "file")


def test_dir_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="exists and is not a folder"):
        prepare_output(tmp_path / "f", "dir")


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_output_under_a_file_is_refused(tmp_path, kind):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="which is a file, not a folder"):
        prepare_output(tmp_path / "f" / "sub" / "out", kind)


def test_special_file_is_refused():
    with pytest.raises(OutputPathError, match="not a regular file"):
        prepare_output("/dev/null", "file")


def test_unwritable_folder_is_refused(tmp_path, monkeypatch):
    # Root writes anywhere, so the permission is faked where the tests run as root.
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(outputs.os, "access",
                            lambda p, mode: False if os.fspath(p) == str(folder) else real(p, mode))
    with pytest.raises(OutputPathError, match="permission denied"):
        prepare_output(folder / "out.png", "file")


def test_nul_and_too_long_paths_are_one_line(tmp_path):
    with pytest.raises(OutputPathError, match="NUL"):
        prepare_output(str(tmp_path / "a\0b"), "file")
    with pytest.raises(OutputPathError, match="File name too long"):
        prepare_output(tmp_path / ("x" * 300) / "out", "dir")


@pytest.mark.parametrize("make_input, output, relation", [
    (lambda d: d / "x", lambda d: d / "x", "is the input"),
    (lambda d: d / "x", lambda d: d / "x" / "sub", "lies inside the input"),
    (lambda d: d / "x" / "model.onnx", lambda d: d / "x", "holds the input"),
    (lambda d: d / "x" / "model.onnx", lambda d: d / "x" / ".." / "x", "holds the input"),
])
def test_an_output_may_not_overwrite_an_input(tmp_path, make_input, output, relation):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.onnx").write_text("x")
    with pytest.raises(OutputPathError, match=f"{relation} .*may not overwrite an input"):
        prepare_output(output(tmp_path), "dir", inputs=[make_input(tmp_path)])


def test_a_good_output_is_returned_and_nothing_is_made(tmp_path):
    assert prepare_output(tmp_path / "a" / "b" / "out.png", "file",
                          inputs=[tmp_path / "in.png"]) == tmp_path / "a" / "b" / "out.png"
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_writes_whole_or_nothing(tmp_path):
    target = tmp_path / "new" / "out.bin"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.")
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("failed")
    assert target.read_bytes() == b"abc" and _leftovers(target.parent) == []


@pytest.mark.parametrize("atomic", [atomic_file, atomic_dir])
def test_interrupted_write_leaves_nothing_not_even_its_parents(tmp_path, atomic):
    with pytest.raises(Interrupted):
        with atomic(tmp_path / "a" / "b" / "out") as tmp:
            if tmp.is_dir():
                (tmp / "model.onnx").write_bytes(b"x")
            raise Interrupted(2)
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_new_and_existing(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"1")
        (tmp / MANIFEST_FILE).write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, "model.onnx"]
    (out / "notes.txt").write_text("kept")
    with atomic_dir(out) as tmp:
        (tmp / MANIFEST_FILE).write_text("{}")
        (tmp / "model.onnx").write_bytes(b"2")
    assert (out / "model.onnx").read_bytes() == b"2" and (out / "notes.txt").exists()
    assert _leftovers(tmp_path) == []


def test_manifest_is_committed_last(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    order = []
    real = os.replace
    monkeypatch.setattr(outputs.os, "replace",
                        lambda a, b: (order.append(os.path.basename(b)), real(a, b)))
    with atomic_dir(out) as tmp:
        (tmp / MANIFEST_FILE).write_text("{}")
        (tmp / "model.onnx").write_bytes(b"2")
        (tmp / "report.json").write_text("{}")
    assert order[-1] == MANIFEST_FILE == outputs.COMMIT_LAST


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_stale_temporaries_of_dead_writers_are_removed(tmp_path, kind):
    stale = tmp_path / f".out.{_dead_pid()}-0123abcd.tmp"
    live = tmp_path / f".out.{os.getppid()}-0123abcd.tmp"  # pytest's parent: alive
    other = tmp_path / ".out.x.1-0123abcd.tmp"  # a temporary of `out.x`, not of `out`
    for p in (stale, live, other):
        p.mkdir() if kind == "dir" else p.write_text("x")
    prepare_output(tmp_path / "out", kind)
    assert not stale.exists() and live.exists() and other.exists()
    stale.mkdir() if kind == "dir" else stale.write_text("x")
    writer = atomic_dir if kind == "dir" else atomic_file
    with writer(tmp_path / "out"):
        pass
    assert not stale.exists() and live.exists()


# Issue 15, "Output paths": every command checks its outputs before any work, in one line.

@pytest.fixture
def no_work(monkeypatch):
    """Building a model, calibrating or building an engine fails the test: a bad output
    path must be refused before any of it starts."""
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    for module, name in (("ssmprune.models.construct", "build_model"),
                         ("ssmprune.exporter.export", "build_model"),
                         ("ssmprune.calibration", "calibrate"),
                         ("ssmprune.engine.save", "build_engine")):
        monkeypatch.setattr(importlib.import_module(module), name, forbidden)


def _snapshot(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _cases(d, export):
    """(command line, fragments of its one error line) with outputs under ``d``."""
    (d / "dir").mkdir()
    (d / "file").write_text("x")
    (d / "image.png").write_bytes(b"not read")
    (d / "engine.json").mkdir()
    calibrate = ["calibrate", export, "--data", "digits:train", "--samples", 2]
    return {
        "visualize-dir": (["visualize", "vim_digits", "-o", d / "dir"], ["-o", "is a folder"]),
        "visualize-under-file": (["visualize", "vim_digits", "-o", d / "file" / "x.png"],
                                 ["-o", "which is a file, not a folder"]),
        "visualize-empty": (["visualize", "vim_digits", "-o", ""], ["-o is empty"]),
        "visualize-own-image": (["visualize", "vim_digits", d / "image.png", "-o",
                                 d / "image.png"], ["is the input", "may not overwrite"]),
        "export-empty": (["export", "vim_digits", "-o", ""], ["-o is empty"]),
        "export-under-file": (["export", "vim_digits", "-o", d / "file" / "sub"],
                              ["which is a file, not a folder"]),
        "export-file": (["export", "vim_digits", "-o", d / "file"], ["not a folder"]),
        "calibrate-report-dir": ([*calibrate, "-o", d / "int8", "--report", d / "dir"],
                                 ["--report", "is a folder"]),
        "calibrate-report-under-file": ([*calibrate, "-o", d / "int8", "--report",
                                         d / "file" / "r.json"], ["--report", "which is a file"]),
        "calibrate-report-in-output": ([*calibrate, "-o", d / "int8", "--report",
                                        d / "int8" / "report.json"], ["--report", "-o"]),
        "calibrate-over-its-input": ([*calibrate, "-o", export], ["holds the input",
                                                                  "may not overwrite"]),
        "calibrate-empty": ([*calibrate, "-o", ""], ["-o is empty"]),
        "build-manifest-dir": (["build", export, "--no-plugins", "-o", d / "engine"],
                               ["engine.json is a folder"]),
        "build-dir": (["build", export, "--no-plugins", "-o", d / "dir"], ["is a folder"]),
        "build-over-its-onnx": (["build", export / "model.onnx", "--no-plugins", "-o",
                                 export / "model.onnx"], ["is the input"]),
        "build-empty": (["build", export, "--no-plugins", "-o", ""], ["-o is empty"]),
    }


CASES = ["visualize-dir", "visualize-under-file", "visualize-empty", "visualize-own-image",
         "export-empty", "export-under-file", "export-file", "calibrate-report-dir",
         "calibrate-report-under-file", "calibrate-report-in-output", "calibrate-over-its-input",
         "calibrate-empty", "build-manifest-dir", "build-dir", "build-over-its-onnx",
         "build-empty"]


@pytest.mark.parametrize("case", CASES)
def test_bad_outputs_are_one_line_before_any_work(case, tmp_path, vim_digits_export, no_work,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)  # `-o ''` must not write into the working folder either
    args, fragments = _cases(tmp_path, vim_digits_export)[case]
    before, export_before = _snapshot(tmp_path), _snapshot(vim_digits_export)
    result, _, stderr = invoke(*args)
    assert_one_line_error(result, stderr, *fragments)
    assert _snapshot(tmp_path) == before and _snapshot(vim_digits_export) == export_before


# An unreadable manifest.json / model.onnx: one line. Root reads any file, so the denial is
# an audit hook that makes Python's open() of the named paths fail as the kernel would.
_DENIED: set[str] = set()


def _deny(event, args):
    if event == "open" and _DENIED and isinstance(args[0], (str, os.PathLike)):
        if os.path.abspath(os.fspath(args[0])) in _DENIED:
            raise PermissionError(13, "Permission denied", os.fspath(args[0]))


sys.addaudithook(_deny)


@pytest.mark.parametrize("name", [MANIFEST_FILE, "model.onnx"])
@pytest.mark.parametrize("command", ["run", "parity", "build", "calibrate"])
def test_an_unreadable_export_file_is_one_line(command, name, tmp_path, vim_digits_export):
    out = tmp_path / "out"
    args = {"run": ["run", vim_digits_export, "--repeats", 1],
            "parity": ["parity", vim_digits_export, "--samples", 1],
            "build": ["build", vim_digits_export, "--no-plugins", "-o", out / "e.engine"],
            "calibrate": ["calibrate", vim_digits_export, "--data", "digits", "-o", out]}
    _DENIED.add(str(vim_digits_export / name))
    try:
        result, _, stderr = invoke(*args[command])
    finally:
        _DENIED.clear()
    assert_one_line_error(result, stderr, name, "Permission denied")
    assert not out.exists()


def test_concurrent_writes_into_one_folder_end_consistent(tmp_path):
    """Two writers commit into one existing folder at once: it ends with one writer's model
    and that writer's manifest (its sha256), never a mix, and no temporary."""
    import hashlib
    import threading

    out = tmp_path / "out"
    out.mkdir()

    def write(barrier, payload):
        with atomic_dir(out) as tmp:
            for i in range(8):
                (tmp / f"part{i}.bin").write_bytes(payload)
            (tmp / MANIFEST_FILE).write_text(hashlib.sha256(payload).hexdigest())
            barrier.wait()

    for round_ in range(20):
        barrier = threading.Barrier(2)
        writers = [threading.Thread(target=write, args=(barrier, bytes([round_, w]) * 64))
                   for w in range(2)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        digest = (out / MANIFEST_FILE).read_text()
        assert all(hashlib.sha256((out / f"part{i}.bin").read_bytes()).hexdigest() == digest
                   for i in range(8)), f"round {round_}: a mix of both writers"
    assert _leftovers(tmp_path) == []


def test_the_working_folder_as_an_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert prepare_output(".", "dir") == tmp_path
    with atomic_dir(".") as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
    assert (tmp_path / "model.onnx").read_bytes() == b"x"
    with pytest.raises(OutputPathError, match="is a folder"):
        prepare_output(".", "file")
    with pytest.raises(OutputPathError):
        prepare_output("/", "dir")
