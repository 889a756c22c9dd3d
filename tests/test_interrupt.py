"""Issue 15, "Interrupted and partial writes": SIGINT and SIGTERM stop every command promptly,
as one ``error:`` line (exit 130 / 143), and leave nothing behind; a SIGKILLed write's
temporary is removed by the next write to the same place.

The signals go to real processes (``python -m ssmprune``); a write step is held open by
stalling the export's sha256 (``_STALLED_WRITE``), so the signal lands inside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from exporter.export_cases import vim_digits_export  # noqa: F401  (session fixture)

from cli_helpers import invoke
from ssmprune import interrupt
from ssmprune.cli import SummaryGroup
from ssmprune.engine import trt as trt_mod
from ssmprune.interrupt import Interrupted

# `ssmprune ARGS` whose export write step prints WRITING and then waits, inside its
# temporary folder, for the signal.
_STALLED_WRITE = """
import sys, time
import ssmprune.exporter.manifest as manifest
def stalled(path):
    print("WRITING", file=sys.stderr, flush=True)
    time.sleep(120)
manifest.sha256_file = stalled
from ssmprune.cli import main
main(sys.argv[1:], prog_name="ssmprune")
"""

needs_rtx = pytest.mark.skipif(trt_mod.installed("tensorrt_rtx") is None,
                               reason="needs TensorRT-RTX (tensorrt_rtx_bindings), which "
                                      "builds without a GPU")


class Run:
    """A ``ssmprune`` process signalled once a line of its stderr holds ``marker``."""

    def __init__(self, args, cwd: Path, marker: str, signum: int, driver: str = None,
                 env=None):
        command = [sys.executable, "-c", driver] if driver else [sys.executable, "-m",
                                                                 "ssmprune"]
        self.proc = subprocess.Popen([*command, *map(str, args)], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.signalled_at = None
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if self.signalled_at is None and marker in line:
                self.signalled_at = time.perf_counter()
                self.proc.send_signal(signum)
        self.returncode = self.proc.wait(timeout=120)
        self.seconds = time.perf_counter() - (self.signalled_at or time.perf_counter())
        assert self.signalled_at is not None, "\n".join(self.lines)

    def assert_interrupted(self, name: str, code: int, within: float) -> None:
        """Exit ``code``, one ``error: interrupted (NAME)`` line, the FAILED summary, no
        traceback, ``within`` seconds of the signal."""
        text = "\n".join(self.lines)
        assert self.returncode == code, text
        assert "Traceback" not in text
        assert [ln for ln in self.lines if ln.startswith("error:")] == \
            [f"error: interrupted ({name})"], text
        assert self.lines[-1].startswith("FAILED | Runtime:"), text
        assert self.seconds < within, f"{self.seconds:.1f}s after {name}"


def _everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_the_export_write_step_leaves_nothing(tmp_path, signum, code):
    run = Run(["export", "vim_digits", "-o", tmp_path / "out"], tmp_path, "WRITING", signum,
              driver=_STALLED_WRITE)
    run.assert_interrupted(signal.Signals(signum).name, code, within=5)
    assert _everything(tmp_path) == []  # no export, no hidden .out.*.tmp folder


def test_a_sigkilled_export_leaves_a_temporary_the_next_export_removes(tmp_path):
    run = Run(["export", "vim_digits", "-o", tmp_path / "out"], tmp_path, "WRITING",
              signal.SIGKILL, driver=_STALLED_WRITE)
    assert run.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert len(stale) == 1 and stale[0].is_dir()
    result, _, _ = invoke("export", "vim_digits", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert _everything(tmp_path) == ["out", "out/manifest.json", "out/model.onnx"]


def test_sigint_during_torch_export_stops_it(tmp_path):
    # "build model" is listed when it ends; torch.export and the ONNX conversion follow.
    run = Run(["export", "vim_digits", "-o", tmp_path / "out"], tmp_path, "build model",
              signal.SIGINT)
    run.assert_interrupted("SIGINT", 130, within=5)
    assert _everything(tmp_path) == []


def test_sigterm_during_calibration_leaves_nothing(tmp_path, vim_digits_export):
    scratch = tmp_path / "tmp"  # calibrate's own scratch folder goes to TMPDIR
    scratch.mkdir()
    run = Run(["calibrate", vim_digits_export, "--data", "digits:train", "--samples", 64,
               "-o", tmp_path / "int8", "--report", tmp_path / "report.json"], tmp_path,
              "load calibration data", signal.SIGTERM, env={"TMPDIR": str(scratch)})
    run.assert_interrupted("SIGTERM", 143, within=5)
    assert _everything(tmp_path) == ["tmp"] and _everything(scratch) == []


@needs_rtx
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_tensorrt_build(tmp_path, vim_digits_export, signum, code):
    """The build of vim_digits at optimization level 5 lasts 5 s or more after TensorRT-RTX
    logs that it starts compiling, in one builder step without a callback; the signal ends
    it within the grace of ``interrupt.cancellable`` (2 s) and no engine is written."""
    run = Run(["build", vim_digits_export, "--no-plugins", "--opt-level", 5, "--verbose",
               "-o", tmp_path / "vim.engine"], tmp_path,
              "Compiler backend is used during engine build", signum,
              env={"SSMPRUNE_TENSORRT": "tensorrt_rtx"})
    run.assert_interrupted(signal.Signals(signum).name, code, within=4)
    assert _everything(tmp_path) == []


@needs_rtx
def test_a_held_interruption_cancels_the_build_through_its_progress_monitor(
        vim_digits_export, monkeypatch):
    """Full TensorRT calls the monitor often: a held signal cancels the build at the next
    step (here: the first), and the interruption is raised when it returns None."""
    from ssmprune.engine.build import BuildOptions, build_engine

    monkeypatch.setattr(interrupt, "_pending", signal.SIGINT)
    start = time.perf_counter()
    with pytest.raises(Interrupted):
        build_engine(vim_digits_export / "model.onnx",
                     BuildOptions(plugins=False, flavour="tensorrt_rtx"))
    assert time.perf_counter() - start < 2.5  # parsing; the compile step never started


def test_deferred_holds_a_signal_until_its_end():
    # What was there before, not Python's defaults: a shell starts background jobs with
    # SIGINT ignored (`cmd &`), and pytest then runs with SIG_IGN.
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with interrupt.handled():
        with pytest.raises(Interrupted) as err:
            with interrupt.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # a handler runs between bytecodes: it only records here
                assert interrupt.requested() == signal.SIGTERM
        assert err.value.exit_code == 143 and err.value.name == "SIGTERM"
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("raised, code, name", [
    (Interrupted(signal.SIGTERM), 143, "SIGTERM"),
    (Interrupted(signal.SIGINT), 130, "SIGINT"),
    (KeyboardInterrupt(), 130, "SIGINT"),
])
def test_the_group_reports_an_interruption_in_one_line(raised, code, name):
    @click.group(cls=SummaryGroup)
    def cli():
        """Test group."""

    @cli.command()
    def work():
        raise raised

    result = CliRunner().invoke(cli, ["work"])
    assert result.exit_code == code
    assert result.stderr.splitlines()[0] == f"error: interrupted ({name})"
    assert result.stderr.splitlines()[-1].startswith("FAILED | Runtime:")


# A write held open around a cancellable() stretch that never ends by itself (a stand-in for
# TensorRT-RTX's compile step inside `ssmprune bundle`'s atomic_dir): argv[1] is the output.
_HELD_OPEN = """
import sys, time
from pathlib import Path
from ssmprune import interrupt
from ssmprune.outputs import atomic_dir
with interrupt.handled():
    with atomic_dir(Path(sys.argv[1])) as tmp:
        (tmp / "model.engine").write_bytes(bytes(1 << 20))
        with interrupt.cancellable(grace=0.3):
            print("HELD", file=sys.stderr, flush=True)
            time.sleep(60)
"""


@pytest.mark.parametrize("existing", [False, True])
def test_a_forced_exit_removes_the_open_temporaries(tmp_path, existing):
    """``cancellable()`` ends the process with ``os._exit`` (no ``finally`` runs): the open
    write's temporary is removed first, beside a new folder or inside an existing one."""
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    run = Run([out], tmp_path, "HELD", signal.SIGTERM, driver=_HELD_OPEN)
    assert run.returncode == 143, "\n".join(run.lines)
    assert run.seconds < 5
    assert _everything(tmp_path) == (["out"] if existing else [])


# A SummaryGroup command that says HELD on stdout and then waits, inside cancellable() when
# argv[1] is "cancellable"; its stderr is a pipe the test closes first (`2>&1 | tee log`, the
# tee ended by the same Ctrl-C).
_BROKEN_STDERR = """
import sys, time
import click
from ssmprune import interrupt
from ssmprune.cli import SummaryGroup

@click.group(cls=SummaryGroup)
def cli():
    pass

@cli.command()
@click.argument("how")
def wait(how):
    if how == "cancellable":
        with interrupt.cancellable(grace=0.3):
            print("HELD", flush=True)
            time.sleep(60)
    print("HELD", flush=True)
    time.sleep(60)

cli(sys.argv[1:])
"""


@pytest.mark.parametrize("how", ["cancellable", "plain"])
def test_a_closed_stderr_does_not_stop_an_interruption(tmp_path, how):
    """Reporting the interruption on a closed pipe fails (BrokenPipeError): the process still
    ends, promptly, with 130 (before: the forced exit's thread died of it and the command ran
    on; the group's report turned 130 into 1)."""
    proc = subprocess.Popen([sys.executable, "-c", _BROKEN_STDERR, "wait", how], cwd=tmp_path,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == "HELD"
    proc.stderr.close()
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=10) == 130
    finally:
        proc.kill()
        proc.wait()


def test_the_timing_cache_is_written_after_the_cancellable_build(tmp_path, monkeypatch):
    """The timing cache is written by ``build_to_file`` once ``build_engine`` (and its
    ``cancellable()``, whose forced exit runs no cleanup) has returned, with no signal held."""
    from types import SimpleNamespace

    from ssmprune.engine import save
    from ssmprune.engine.build import BuildOptions

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not parsed")
    depth = []

    def build(onnx_path, options, echo_level, max_batch):
        with interrupt.cancellable():
            return SimpleNamespace(engine=b"engine", timing_cache=b"cache")

    def write_engine(path, engine, manifest):
        depth.append(interrupt._deferring)
        return path, tmp_path / "m.engine.json"

    monkeypatch.setattr(save, "build_engine", build)
    monkeypatch.setattr(save, "manifest_for", lambda *args: None)
    monkeypatch.setattr(save, "write_engine", write_engine)
    with interrupt.handled():
        save.build_to_file(onnx, tmp_path / "m.engine", BuildOptions(timing_cache=tmp_path / "tc"))
    assert (tmp_path / "tc").read_bytes() == b"cache" and depth == [0]
