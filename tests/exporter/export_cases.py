"""Small configurations of every model family, dense and pruned, exported once per session.

Shared by tests/exporter and tests/parity (``from exporter.export_cases import ...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

import onnx

from ssmprune.exporter import ExportOptions, ExportResult, export
from ssmprune.exporter.schemas import DOMAIN, SELECTIVE_SCAN, TOKEN_GATHER
from ssmprune.pruning import PruneConfig

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


class ExportCache:
    """Exports each (case, options) once into ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.results: dict[tuple, ExportResult] = {}

    def get(self, case: str, **options) -> ExportResult:
        key = (case, tuple(sorted(options.items())))
        if key not in self.results:
            c = CASES[case]
            name = "-".join([case, *(f"{k}{v}" for k, v in sorted(options.items()))])
            self.results[key] = export(
                ExportOptions(c.model, prune=c.prune, overrides=c.overrides, **options),
                self.root / name)
        return self.results[key]


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> ExportCache:
    """Import this fixture into a test module to share the session's exports."""
    return ExportCache(tmp_path_factory.mktemp("exports"))


def assert_custom_nodes(case: str, result: ExportResult, model: onnx.ModelProto) -> None:
    """One custom node per scan and gather call of ``case``, and one body per op used."""
    c = CASES[case]
    expected = {f"{DOMAIN}::{SELECTIVE_SCAN}": c.scans}
    if c.gathers:
        expected[f"{DOMAIN}::{TOKEN_GATHER}"] = c.gathers
    assert result.custom_nodes == expected
    assert {(f.domain, f.name) for f in model.functions} == {
        (DOMAIN, SELECTIVE_SCAN), *([(DOMAIN, TOKEN_GATHER)] if c.gathers else [])}


@pytest.fixture(scope="session")
def vim_digits_export(tmp_path_factory) -> Path:
    """``ssmprune export vim_digits``: dense, its embedded weights, batch 1 (the smallest real
    export; the CLI tests of manifests tamper with copies of it)."""
    return export(ExportOptions("vim_digits"), tmp_path_factory.mktemp("digits") / "vim").directory


DYNAMIC_MAX = 16


@pytest.fixture(scope="session")
def dynamic_digits_export(tmp_path_factory) -> Path:
    """``ssmprune export vim_digits --prune vim_digits_top --batch dynamic:16``."""
    return export(ExportOptions("vim_digits", prune="vim_digits_top", max_batch=DYNAMIC_MAX),
                  tmp_path_factory.mktemp("dynamic") / "vim_digits_top").directory
