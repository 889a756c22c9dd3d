"""A dynamic-batch export calibrates in unpadded batches of up to 32 and gets the ranges its
static twin gets in batches of 1 (minmax: the same min and max over the same samples)."""

import numpy as np
import onnx
from onnx import numpy_helper

from exporter.export_cases import exports  # noqa: F401  (session fixture)
from ssmprune.calibration import CalibrateOptions, PhotoCropsData, calibrate
from ssmprune.exporter import read_export


def _scales(path):
    model = onnx.load(str(path / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # Node names differ between the two graphs (the dynamic one has Shape ops): compare the
    # scales as a sorted list.
    return sorted(float(inits[n.input[1]]) for n in model.graph.node
                  if n.op_type == "QuantizeLinear" and n.input[1] in inits)


def test_dynamic_and_static_exports_calibrate_alike(exports, tmp_path):  # noqa: F811
    results = {}
    for name, options in (("static", {}), ("dynamic", {"max_batch": 16})):
        src = exports.get("vim_pruned", **options).directory
        config = read_export(src)[1].config
        results[name] = calibrate(src, PhotoCropsData(config, count=12),
                                  CalibrateOptions("minmax", samples=12, allow_miss=True),
                                  tmp_path / name, PhotoCropsData(config, count=8, seed=1))
    static, dynamic = (_scales(results[k].directory) for k in ("static", "dynamic"))
    assert len(static) == len(dynamic) > 5
    np.testing.assert_allclose(static, dynamic, rtol=1e-6)
    a, b = (results[k].report["held_out"]["outputs"]["logits"] for k in ("static", "dynamic"))
    assert a["top1"] == b["top1"] and abs(a["max_abs"] - b["max_abs"]) < 1e-5
