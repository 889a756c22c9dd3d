"""The fuzz suite's ground (issue 15, item 5): a workspace per example and the property every
run must meet (``run_checked``); the fixtures are in conftest.py.

The property: exit 0 with correct output (``ok`` checks it), or exit 2 with exactly one
``error:`` line; never a traceback, never exit 1; nothing half-written (no temporary left,
a failed run changes no file, a passing one only its outputs); no file read outside the
artifact's folder (secrets planted beside every workspace's artifacts are watched with an
audit hook on ``open``, by real path). A tampered input (``refused_by``) must be refused
by the check that guards it, not by a later refusal that would hide its acceptance.

Commands run in-process (click's CliRunner); the signal tests are in tests/test_interrupt.py.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings
from mutations import CORPUS

from ssmprune.cli import main
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE
from ssmprune.models.digits import embedded_weights


def fuzz_settings(examples: int) -> settings:
    """Deterministic (derandomize: CI runs the same cases), no deadline (a command may take
    a second), no example database: the suite's time is its examples' time.
    ``SSMPRUNE_FUZZ_SCALE=10`` runs ten times the examples (a longer hunt, by hand)."""
    scale = float(os.environ.get("SSMPRUNE_FUZZ_SCALE", "1"))
    return settings(max_examples=max(1, round(examples * scale)), deadline=None,
                    derandomize=True, database=None, suppress_health_check=list(HealthCheck))


# (command, exit status) -> runs: the suite's size, printed at its end (conftest.py).
CASES: Counter = Counter()

# Files a run must never read: planted outside the artifacts, named by mutations.
_SECRETS: set[str] = set()
_READ_SECRETS: list[str] = []


def _audit(event: str, args) -> None:
    if event == "open" and _SECRETS and isinstance(args[0], (str, bytes, os.PathLike)):
        # By real path: a reader may open a link's target (``Path.resolve()``), not the link.
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in _SECRETS:
            _READ_SECRETS.append(path)


sys.addaudithook(_audit)
ALWAYS_SECRET = ("/etc/passwd", "/etc/shadow")


class Workspace:
    """A fresh folder for one example: ``root/outside`` holds the secrets (copies of a real
    model.onnx, checkpoint and image, so reading one would "work"; copies, not links, so
    the watched real paths are theirs), the rest is the example's. Every path in
    ``self.secrets`` is watched."""

    def __init__(self, root: Path, export_dir: Path):
        self.root = root
        self.outside = root / "outside"
        self.outside.mkdir()
        for name, source in (("secret.onnx", export_dir / MODEL_FILE),
                             ("secret.safetensors", embedded_weights("vim_digits")),
                             ("secret.png", CORPUS / "images" / "gray.png")):
            shutil.copyfile(source, self.outside / name)
        self.secrets = ({os.path.realpath(p) for p in self.outside.iterdir()}
                        | {os.path.realpath(p) for p in ALWAYS_SECRET})

    def copy_export(self, source: Path, name: str = "export") -> Path:
        dest = self.root / name
        dest.mkdir()
        for f in (MODEL_FILE, MANIFEST_FILE):
            shutil.copyfile(source / f, dest / f)
        return dest

    def fill(self, text: str) -> str:
        """``{OUTSIDE}`` / ``{WS}`` in a corpus string -> this workspace's paths."""
        return text.replace("{OUTSIDE}", str(self.outside)).replace("{WS}", str(self.root))


def _snapshot(folder: Path) -> dict[str, tuple]:
    out = {}
    for p in folder.rglob("*"):
        if p.is_symlink():
            continue
        st = p.stat()
        # A folder's mtime moves when a temporary in it comes and goes: only files count.
        out[str(p.relative_to(folder))] = () if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


#: An integrity or schema refusal (a manifest's check, which names the manifest or its .json file;
#: a file's size or sha256): the line a
#: tampered input must end with.
INTEGRITY = re.compile(r"manifest|sha256|schema|\.json\b", re.IGNORECASE)

# Options that name a command's outputs: a passing run may change what they name, nothing else.
OUTPUT_OPTIONS = ("-o", "--output", "--report", "--timing-cache", "--plot")


def _outputs(args: list[str]) -> list[str]:
    return [os.path.abspath(v) for k, v in zip(args, args[1:]) if k in OUTPUT_OPTIONS]


def _is_output(path: str, outputs: list[str]) -> bool:
    return any(path == o or path.startswith(o.rstrip(os.sep) + os.sep) for o in outputs)


def run_checked(ws: Workspace, args, ok: Optional[Callable] = None, env=None,
                refused_by: Optional["re.Pattern[str]"] = None):
    """Run ``ssmprune ARGS`` and assert the fuzz property; ``ok(result)`` checks a success
    (it fails by returning False or by asserting). ``refused_by``: the input was tampered
    with, so the run must exit 2 with an error line it matches. Returns click's result."""
    args = [str(a) for a in args]
    before = _snapshot(ws.root)
    _SECRETS.clear()
    _SECRETS.update(ws.secrets)
    _READ_SECRETS.clear()
    try:
        result = CliRunner().invoke(main, args, env=env)
    finally:
        _SECRETS.clear()
    CASES[args[0], result.exit_code] += 1
    where = f"ssmprune {' '.join(args)}\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        pytest.fail("a traceback:\n" + "".join(traceback.format_exception(
            result.exception)) + where)
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {where}"
    assert "Traceback" not in result.output, where
    assert not _READ_SECRETS, f"read outside the artifact's folder: {_READ_SECRETS}\n{where}"
    after = _snapshot(ws.root)
    assert not [p for p in after if p.endswith(".tmp")], f"a temporary left: {where}"
    if refused_by is not None:
        assert result.exit_code == 2, f"a tampered input was accepted: {where}"
    if result.exit_code == 2:
        errors = [ln for ln in result.stderr.splitlines() if ln.lower().startswith("error:")]
        assert len(errors) == 1, where
        if refused_by is not None:
            assert refused_by.search(errors[0]), f"refused by a later check: {where}"
        assert after == before, f"a failed run changed files: {where}"
    else:
        outputs = _outputs(args)
        changed = [p for p, st in before.items() if after.get(p) != st
                   and not _is_output(str(ws.root / p), outputs)]
        assert not changed, f"a passing run changed {changed}, not its outputs: {where}"
        if ok is not None:
            assert ok(result) is not False, f"wrong output: {where}"
    return result
