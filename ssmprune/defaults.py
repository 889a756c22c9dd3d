"""Defaults chosen by measurement, one place each, with where the measurement lives.

Light on purpose (no imports): the CLI shows them in ``--help`` without loading the
library.
"""

# The activation range calibration `calibrate` uses unless told: the best of minmax,
# entropy and percentile on the digits models and on real photos
# (benchmarks/bench_calibration_methods.py; RESULTS.md, "Choosing the calibration method").
CALIBRATION_METHOD = "percentile"

# Held-out inputs a calibration verdict is judged on (calibrate, sweep): 360 digits (the
# whole held-out split) can tell 99 % agreement (Wilson lower bound 98.9 %), 64 cannot (94 %).
HOLDOUT_SAMPLES = 400
