"""ssmprune.outputs: output paths checked before any work, written whole or not at all."""

from __future__ import annotations

import errno
import fcntl
import importlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from exporter.export_cases import vim_digits_export  # noqa: F401  (session fixture)

from cli_helpers import assert_one_line_error, invoke
from ssmprune import interrupt, outputs
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


def _make(path, kind):
    path.mkdir() if kind == "dir" else path.write_text("x")


def _locked(path):
    """An fd holding ``flock(LOCK_EX)`` on ``path``: a live writer's temporary."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_stale_temporaries_are_removed_unless_their_lock_is_held(tmp_path, kind):
    """Liveness is the temporary's lock, not the process id in its name: in a container
    every run has the same id (here: this process's own), and a live writer in another PID
    namespace has an id that means nothing here (here: a dead one)."""
    stale = tmp_path / f".out.{os.getpid()}-0123abcd.tmp"  # SIGKILLed run with our id
    live = tmp_path / f".out.{_dead_pid()}-0123abcd.tmp"  # a live writer elsewhere
    other = tmp_path / ".out.x.1-0123abcd.tmp"  # a temporary of `out.x`, not of `out`
    for p in (stale, live, other):
        _make(p, kind)
    fd = _locked(live)
    try:
        prepare_output(tmp_path / "out", kind)
        assert not stale.exists() and live.exists() and other.exists()
        _make(stale, kind)
        writer = atomic_dir if kind == "dir" else atomic_file
        with writer(tmp_path / "out"):
            pass
        assert not stale.exists() and live.exists()
    finally:
        os.close(fd)
    prepare_output(tmp_path / "out", kind)  # its writer ended without committing it
    assert not live.exists()


@pytest.mark.parametrize("name", [".out.99999999999999999999-abcdef12.tmp",
                                  ".out.-1-abcdef12.tmp", ".out.12-ABCDEF12.tmp"])
def test_odd_temporary_names_are_left_alone(tmp_path, name):
    """Names this tool never makes are not its temporaries: kept, and no crash (a 20-digit
    id was an OverflowError traceback)."""
    (tmp_path / name).write_text("x")
    prepare_output(tmp_path / "out", "file")
    assert (tmp_path / name).exists()


def test_a_writers_own_temporary_survives_another_cleaner(tmp_path):
    """A concurrent write to the same place (a second process, or a second run in the same
    PID namespace slot) keeps its temporary: only an unlocked one is stale."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "model.onnx").write_bytes(b"x")
        prepare_output(out, "dir")  # what a second run does first
        assert tmp.exists()
    assert (out / "model.onnx").read_bytes() == b"x"
    with atomic_dir(out) as tmp:  # an existing folder: the temporary is inside it
        assert tmp.parent == out
        (tmp / "model.onnx").write_bytes(b"y")
        prepare_output(out, "dir")
        assert tmp.exists()
    assert (out / "model.onnx").read_bytes() == b"y" and _leftovers(out) == []


def test_a_stale_temporary_inside_an_existing_folder_is_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".ssmprune.{os.getpid()}-0123abcd.tmp"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    prepare_output(out, "dir")
    assert list(out.iterdir()) == []


def test_a_temporary_removed_under_the_writer_is_one_line(tmp_path):
    """Another process (another user, a manual ``rm``) removes the temporary being filled:
    one line, not a FileNotFoundError traceback."""
    with pytest.raises(OutputPathError, match="removed by another process"):
        with atomic_dir(tmp_path / "out") as tmp:
            outputs.shutil.rmtree(tmp)
            (tmp / "model.onnx").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def other_filesystem(tmp_path, monkeypatch):
    """``tmp_path/mnt`` behaves as a mount of another file system: a rename into or out of
    it from elsewhere fails with EXDEV (``docker run -v $PWD/out:/out``)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    inside = lambda p: os.path.realpath(p).startswith(str(mnt.resolve()) + os.sep)  # noqa: E731

    def crossing(real):
        def rename(src, dst):
            if inside(src) != inside(dst):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return real(src, dst)
        return rename

    monkeypatch.setattr(outputs.os, "rename", crossing(os.rename))
    monkeypatch.setattr(outputs.os, "replace", crossing(os.replace))
    return mnt


@pytest.mark.parametrize("via_symlink", [False, True])
def test_an_existing_folder_on_another_filesystem_is_written(tmp_path, other_filesystem,
                                                             via_symlink):
    target = other_filesystem
    if via_symlink:
        target = tmp_path / "link"
        target.symlink_to(other_filesystem)
    (other_filesystem / "notes.txt").write_text("kept")
    assert prepare_output(target, "dir") == target
    with atomic_dir(target) as tmp:
        (tmp / MANIFEST_FILE).write_text("{}")
        (tmp / "model.onnx").write_bytes(b"1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("f")
    assert sorted(p.name for p in other_filesystem.iterdir()) == \
        [MANIFEST_FILE, "model.onnx", "notes.txt", "sub"]
    assert _leftovers(tmp_path) == [] and _leftovers(other_filesystem) == []


def test_an_existing_folder_under_a_read_only_parent_is_writable(tmp_path, monkeypatch):
    """An existing writable folder is written inside itself: its parent's permission does
    not matter; a new folder needs it."""
    parent = tmp_path / "ro"
    (parent / "out").mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(outputs.os, "access",
                        lambda p, mode: False if os.fspath(p) == str(parent) else real(p, mode))
    assert prepare_output(parent / "out", "dir") == parent / "out"
    with pytest.raises(OutputPathError, match="permission denied"):
        prepare_output(parent / "new", "dir")


def test_a_second_ctrl_c_does_not_cut_the_cleanup(tmp_path, monkeypatch):
    """SIGINT, then SIGINT again while the temporary is being removed: it is still removed."""
    real = outputs.shutil.rmtree
    seen = []

    def rmtree_with_a_second_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(outputs.shutil, "rmtree", rmtree_with_a_second_ctrl_c)
    with interrupt.handled():
        with pytest.raises(Interrupted):
            with atomic_dir(tmp_path / "out") as tmp:
                for i in range(50):
                    (tmp / f"f{i}").write_bytes(b"x")
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)
    assert list(tmp_path.iterdir()) == [] and seen


@pytest.mark.parametrize("atomic", [atomic_file, atomic_dir])
def test_a_signal_just_after_the_temporary_is_made_leaves_nothing(tmp_path, monkeypatch,
                                                                   atomic):
    """SIGINT lands right after the temporary is created, before the write's cleanup is in
    place (before: outside its ``try``, so the empty temporary stayed)."""
    real_open, real_mkdir = os.open, os.mkdir

    def then_sigint(real):
        def made(path, *args, **kwargs):
            result = real(path, *args, **kwargs)
            if os.fspath(path).endswith(".tmp"):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here
            return result
        return made

    monkeypatch.setattr(os, "open", then_sigint(real_open))
    monkeypatch.setattr(os, "mkdir", then_sigint(real_mkdir))
    with interrupt.handled():
        with pytest.raises(Interrupted):
            with atomic(tmp_path / "out"):
                pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_held_folder_lock_does_not_stop_an_interruption(tmp_path):
    """Another process holds the output folder's lock (``flock DIR sleep 1000``): the commit
    waits for it, and a Ctrl-C still ends the wait at once, leaving nothing."""
    out = tmp_path / "out"
    out.mkdir()
    fd = _locked(out)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    release = threading.Timer(3.0, os.close, (fd,))
    release.start()
    start = time.perf_counter()
    try:
        with interrupt.handled():
            with pytest.raises(Interrupted):
                with atomic_dir(out) as tmp:
                    (tmp / "model.onnx").write_bytes(b"x")
        seconds = time.perf_counter() - start
    finally:
        release.join()
    assert seconds < 2.0
    assert list(out.iterdir()) == []


def test_files_that_vouch_for_each_other_are_renamed_together(tmp_path, monkeypatch):
    """An interruption while the new engine and manifest are synced leaves the old pair
    whole (before: the engine was renamed before the manifest was synced)."""
    from engine.test_engine_manifest import make_manifest
    from ssmprune.engine.manifest import read_manifest, verify_engine_file, write_engine

    path = tmp_path / "vim.engine"
    write_engine(path, b"old engine", make_manifest())
    calls = []
    real = os.fsync

    def fsync_then_signal(fd):
        calls.append(fd)
        real(fd)
        if len(calls) == 2:  # between the two files' syncs (old: after the engine's rename)
            raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(outputs.os, "fsync", fsync_then_signal)
    with pytest.raises(Interrupted):
        write_engine(path, b"new engine!", make_manifest())
    verify_engine_file(path, read_manifest(path))
    assert path.read_bytes() == b"old engine" and _leftovers(tmp_path) == []


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
