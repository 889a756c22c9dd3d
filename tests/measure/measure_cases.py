"""Settings of the measurement tests' small sweep, shared by their conftest and tests
(``from measure.measure_cases import ...``)."""

# keep ratio 0.9 with the preset's blocks, importance and alignment is vim_digits_top.
SWEEP_ARGS = ["vim_digits", "--keep-ratios", "1.0,0.9", "--precisions", "fp32,int8",
              "--calibration-samples", "32", "--iterations", "2", "--warmup", "1",
              "--batch", "8", "--threads", "1"]
HELD_OUT_SUBSET = 96  # the sweep test's evaluation set: the first 96 held-out digits
