"""Measuring deployed models: latency (``bench``), accuracy (``eval``) and both over
a grid of keep ratios and precisions (``sweep``).

    targets.py    TARGET text -> ``Target``: a model by name or pruning preset (PyTorch),
                  an export folder or .onnx (ONNX Runtime), an engine (TensorRT), with
                  its preprocessing config, static batch and runners
    latency.py    interleaved timing of several targets per runtime and batch:
                  p50 / p90 / p99, throughput, peak memory, ratios to the first target
    labelled.py   labelled sets: an ImageFolder, the digits split, an .npz
    accuracy.py   top-1 / top-5 of a target on a labelled set, agreement with a reference
    sweep.py      export, calibrate, eval and bench per (keep ratio, precision), resumable
    plot.py       the bar plot of ``bench`` and the two panels of ``sweep`` (matplotlib)
    bounds.py     bounds on the measurement options (``ssmprune.limits.Bound``)

Nothing here imports the CLI (``ssmprune/cli/measure.py`` is the thin layer on top).
"""
