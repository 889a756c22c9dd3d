"""Small exports calibrated once per session, by (case, precision): shared by the int8 and
fp8 tests (``from calibration.calibrated_cases import calibrated``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.export_cases import ExportCache, exports, per_process  # noqa: F401  (session fixture)
from ssmprune.calibration import CalibrateOptions, CalibrateResult, PhotoCropsData, calibrate
from ssmprune.exporter import read_export

SAMPLES, HELD_OUT = 8, 4


class CalibratedCache:
    """Calibrates each (case, precision) once: 8 photo crops (seed 0), judged on 4 (seed 1).

    These test the mechanics (placement, manifest, report) on seeded random weights, whose
    int8 agreement on 4 crops says nothing: minmax (fast) and ``allow_miss``."""

    def __init__(self, exports: ExportCache, root: Path):  # noqa: F811
        self.exports, self.root = exports, root
        self.results: dict[tuple[str, str], tuple[Path, CalibrateResult]] = {}

    def get(self, case: str, precision: str = "int8") -> tuple[Path, CalibrateResult]:
        """(the fp32 export's directory, the calibration result)."""
        if (case, precision) not in self.results:
            src = self.exports.get(case).directory
            config = read_export(src)[1].config
            result = calibrate(src, PhotoCropsData(config, count=SAMPLES),
                               CalibrateOptions("minmax", precision, SAMPLES, allow_miss=True),
                               self.root / f"{case}-{precision}",
                               holdout=PhotoCropsData(config, count=HELD_OUT, seed=1))
            self.results[case, precision] = (src, result)
        return self.results[case, precision]


@pytest.fixture(scope="session")
def calibrated(exports, tmp_path_factory) -> CalibratedCache:  # noqa: F811
    return per_process("calibrated", lambda: CalibratedCache(
        exports, tmp_path_factory.mktemp("calibrated")))
