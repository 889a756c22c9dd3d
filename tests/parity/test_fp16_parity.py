"""``ssmprune parity`` of an fp16 export: judged by the fp16 row, from the manifest."""

import json

import pytest
from cli_helpers import invoke
from exporter.export_cases import CASES, exports  # noqa: F401  (fixture)

from ssmprune.parity.compare import run_parity
from ssmprune.parity.tolerances import tolerance_for


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp16_export_is_judged_by_the_fp16_row(case, exports):
    report = run_parity(exports.get(case, precision="fp16").directory, samples=4)
    fp16 = tolerance_for("fp16", "logits")
    assert report.precision == "fp16" and report.passed, report.to_dict()
    (c,) = report.comparisons
    assert (c.runtime, c.reference, c.samples) == ("onnxrt", "torch", 4)
    assert c.tolerance == fp16.describe() != tolerance_for("fp32", "logits").describe()
    # fp16 arithmetic, not an fp32 match: far past the fp32 row, well inside the fp16 one.
    assert 1e-4 < c.max_rel <= fp16.max_rel and c.top1_agreement >= fp16.top1


def test_cli_parity_of_an_fp16_export(exports):
    result, stdout, stderr = invoke("parity", exports.get("plainmamba_dense", precision="fp16")
                                    .directory, "--samples", 2, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(stdout)
    assert data["passed"] and data["precision"] == "fp16"
    assert data["comparisons"][0]["tolerance"] == tolerance_for("fp16", "logits").describe()
    assert stderr.splitlines()[-1].startswith("PASSED")
