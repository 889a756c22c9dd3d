"""Calibration: calibration images -> Q/DQ ONNX (int8 or fp8), with a report against fp32.

    data      calibration / evaluation sources (image folder, .npz, digits,
              scikit-image photo crops) -> ``Samples``
    qdq       where Q/DQ may sit (projections only) and the check of it
    fp8       the int8 Q/DQ graph rescaled to fp8 E4M3FN (amax / 448)
    quantize  the ``ssmprune calibrate`` job: ``calibrate(dir, data, options, out)``
    report    quantized vs fp32 in ONNX Runtime: errors, top-1 agreement, accuracy
"""

from ssmprune.calibration.data import (
    DigitsData,
    ImageFolderData,
    NpzData,
    PhotoCropsData,
    Samples,
    data_from_spec,
)
from ssmprune.calibration.quantize import CalibrateOptions, CalibrateResult, calibrate

__all__ = ["CalibrateOptions", "CalibrateResult", "DigitsData", "ImageFolderData", "NpzData",
           "PhotoCropsData", "Samples", "calibrate", "data_from_spec"]
