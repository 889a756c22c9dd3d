"""The verdict's 95 % interval (Wilson score) against SciPy's, an independent implementation."""

import pytest
from scipy.stats import binomtest

from ssmprune.calibration.report import wilson_interval


@pytest.mark.parametrize("agree, n", [(64, 64), (63, 64), (357, 360), (360, 360), (0, 10),
                                      (5, 10), (299, 300)])
def test_wilson_interval_matches_scipy(agree, n):
    expected = binomtest(agree, n).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(agree, n)
    assert low == pytest.approx(expected.low, abs=1e-4)
    assert high == pytest.approx(expected.high, abs=1e-4)


def test_what_the_sample_size_allows():
    # 64 samples that all agree cannot tell 94 % from 100 %; the whole digits split can.
    assert wilson_interval(64, 64)[0] < 0.95
    assert wilson_interval(360, 360)[0] > 0.989
