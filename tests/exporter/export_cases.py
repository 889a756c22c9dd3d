"""Small configurations of every model family, dense and pruned, exported once per test run.

Shared by tests/exporter and tests/parity (``from exporter.export_cases import ...``).

Each ``ExportOptions`` is exported once per run (``ExportCache``): into a folder every
pytest-xdist worker sees, under a file lock, so the worker that asks first exports and the
others read its result. And once per process: pytest registers an imported fixture anew in
every module that imports it, and runs a session fixture once per registration, so the
cache itself is made once per process (``per_process``), whichever modules ask for it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pytest

import onnx

from ssmprune.exporter import ExportOptions, ExportResult, export
from ssmprune.exporter.bodies import check_overloads, scan_overload
from ssmprune.exporter.schemas import DOMAIN, SELECTIVE_SCAN, TOKEN_GATHER
from ssmprune.models.digits import embedded_weights
from ssmprune.pruning import PruneConfig

# The scan body each family's nodes call: Vim gates the scan's output with silu(z),
# PlainMamba gates outside it.
SCAN_OVERLOADS = {"vim": scan_overload(dict(delta_softplus=1, has_z=1)),
                  "plainmamba": scan_overload(dict(delta_softplus=1, has_z=0))}

VIM_SMALL = dict(img_size=32, patch_size=8, stride=8, embed_dim=32, depth=3, num_classes=100)
PLAINMAMBA_SMALL = dict(img_size=64, embed_dim=32, depth=3, num_classes=100)
PRUNE_SMALL = PruneConfig(0.7, (1, 2))
# Per family: small overrides for any registered model, and scan calls per block.
FAMILY_SMALL = {"vim": VIM_SMALL, "plainmamba": PLAINMAMBA_SMALL}
SCANS_PER_BLOCK = {"vim": 2, "plainmamba": 1}


@dataclass(frozen=True)
class Case:
    model: str
    prune: Optional[PruneConfig]
    overrides: dict
    scans: int      # expected ssmprune::selective_scan nodes
    gathers: int    # expected ssmprune::token_gather nodes


CASES = {
    "vim_dense": Case("vim_t", None, VIM_SMALL, scans=2 * 3, gathers=0),
    "vim_pruned": Case("vim_t", PRUNE_SMALL, VIM_SMALL, scans=2 * 3, gathers=2),
    "plainmamba_dense": Case("plainmamba_l1", None, PLAINMAMBA_SMALL, scans=3, gathers=0),
    "plainmamba_pruned": Case("plainmamba_l1", PRUNE_SMALL, PLAINMAMBA_SMALL, scans=3, gathers=2),
}


T = TypeVar("T")
_MADE: dict[str, object] = {}


def per_process(name: str, make: Callable[[], T]) -> T:
    """``make()`` the first time ``name`` is asked for in this process, then the same object
    (what a session fixture means, whichever modules import it)."""
    if name not in _MADE:
        _MADE[name] = make()
    return _MADE[name]


def run_folder(tmp_path_factory) -> Path:
    """The test run's base temporary folder: under pytest-xdist, the parent of every
    worker's own (``popen-gwN``), which they all see."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


class ExportCache:
    """Exports each ``ExportOptions`` once per test run into a folder of ``root`` (one
    folder per options, its lock and the pickled ``ExportResult`` beside the export)."""

    def __init__(self, root: Path):
        self.root = root
        self.results: dict[str, ExportResult] = {}

    def get(self, case: str, **options) -> ExportResult:
        """Case ``case`` (``CASES``) exported with ``options`` (``ExportOptions`` fields)."""
        c = CASES[case]
        name = "-".join([case, *(f"{k}{v}" for k, v in sorted(options.items()))])
        return self.of(ExportOptions(c.model, prune=c.prune, overrides=c.overrides, **options),
                       name)

    def of(self, options: ExportOptions, name: Optional[str] = None) -> ExportResult:
        """``export(options)``, once, into a folder named ``name`` (default: the model)."""
        key = repr(options)
        if key not in self.results:
            slot = self.root / hashlib.sha256(key.encode()).hexdigest()[:16]
            slot.mkdir(parents=True, exist_ok=True)
            saved = slot / "result.pickle"
            with open(slot / "lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                if saved.exists():
                    result = pickle.loads(saved.read_bytes())
                else:
                    result = export(options, slot / (name or options.model))
                    saved.write_bytes(pickle.dumps(result))
            self.results[key] = result
        return self.results[key]

    def shipped_digits(self, model: str, prune: Optional[str] = None) -> Path:
        """``ssmprune export MODEL --checkpoint <its embedded weights> [--prune PRUNE]``
        (vim_digits, plainmamba_digits), batch 1: the export folder, named MODEL."""
        return self.of(ExportOptions(model, checkpoint=str(embedded_weights(model)),
                                     prune=prune)).directory


def _cache(tmp_path_factory) -> ExportCache:
    return per_process("exports", lambda: ExportCache(run_folder(tmp_path_factory) / "exports"))


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> ExportCache:
    """Import this fixture into a test module to share the run's exports."""
    return _cache(tmp_path_factory)


def assert_custom_nodes(case: str, result: ExportResult, model: onnx.ModelProto) -> None:
    """One custom node per scan and gather call of ``case``, and one body per op used."""
    c = CASES[case]
    expected = {f"{DOMAIN}::{SELECTIVE_SCAN}": c.scans}
    if c.gathers:
        expected[f"{DOMAIN}::{TOKEN_GATHER}"] = c.gathers
    assert result.custom_nodes == expected
    scans = SCAN_OVERLOADS[case.split("_")[0]]  # every scan of a model has the same attributes
    assert {(f.domain, f.name, f.overload) for f in model.functions} == {
        (DOMAIN, SELECTIVE_SCAN, scans), *([(DOMAIN, TOKEN_GATHER, "")] if c.gathers else [])}
    assert {n.overload for n in model.graph.node if n.op_type == SELECTIVE_SCAN} == {scans}
    assert check_overloads(model) == []


@pytest.fixture(scope="session")
def vim_digits_export(tmp_path_factory) -> Path:
    """``ssmprune export vim_digits``: dense, its embedded weights, batch 1 (the smallest real
    export; the CLI tests of manifests tamper with copies of it)."""
    return _cache(tmp_path_factory).of(ExportOptions("vim_digits"), "vim").directory


DYNAMIC_MAX = 16


@pytest.fixture(scope="session")
def dynamic_digits_export(tmp_path_factory) -> Path:
    """``ssmprune export vim_digits --prune vim_digits_top --batch dynamic:16``."""
    return _cache(tmp_path_factory).of(
        ExportOptions("vim_digits", prune="vim_digits_top", max_batch=DYNAMIC_MAX),
        "vim_digits_top").directory
