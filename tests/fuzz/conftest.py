"""Fixtures of the fuzz suite: the digits exports, made once per session, and a fresh
workspace per hypothesis example (``fuzzing.Workspace``)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest
from exporter.export_cases import vim_digits_export  # noqa: F401  (session fixture)
from fuzzing import CASES, Workspace

from ssmprune.exporter import ExportOptions, export


@pytest.fixture(scope="session")
def fuzz_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="session")
def plainmamba_digits_export(fuzz_root) -> Path:
    """``ssmprune export plainmamba_digits`` (its embedded weights, batch 1), made once."""
    return export(ExportOptions("plainmamba_digits"), fuzz_root / "plainmamba_digits").directory


@pytest.fixture(scope="session")
def digits_exports(vim_digits_export, plainmamba_digits_export) -> dict[str, Path]:  # noqa: F811
    return {"vim_digits": vim_digits_export, "plainmamba_digits": plainmamba_digits_export}


@pytest.fixture
def workspace(fuzz_root, vim_digits_export) -> Callable[[], contextlib.AbstractContextManager]:  # noqa: F811
    """``with workspace() as ws:`` a fresh ``Workspace`` per hypothesis example, removed after."""
    @contextlib.contextmanager
    def make() -> Iterator[Workspace]:
        root = Path(tempfile.mkdtemp(dir=fuzz_root))
        try:
            yield Workspace(root, vim_digits_export)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    return make




def pytest_terminal_summary(terminalreporter):
    """The fuzz cases run per command, and how they ended (0: passed, 2: refused)."""
    if not CASES:
        return
    terminalreporter.write_sep("-", "fuzz cases per command")
    for command in sorted({c for c, _ in CASES}):
        codes = {code: n for (c, code), n in CASES.items() if c == command}
        ends = ", ".join(f"exit {code}: {n}" for code, n in sorted(codes.items()))
        terminalreporter.write_line(f"{command:<10} {sum(codes.values()):>4}  ({ends})")
