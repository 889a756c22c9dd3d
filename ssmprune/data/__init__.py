"""Real data that ships with a package: scikit-learn's digits (see ``digits``)."""

from ssmprune.data.digits import (
    DIGITS_MEAN,
    DIGITS_STD,
    NUM_CLASSES,
    SPLIT_SEED,
    DigitsSplit,
    accuracy,
    held_out_for_model,
    load_split,
    normalize,
    split_for_model,
    to_model_inputs,
    training_mean_std,
    upsample,
)

__all__ = [
    "DIGITS_MEAN", "DIGITS_STD", "NUM_CLASSES", "SPLIT_SEED", "DigitsSplit", "accuracy",
    "held_out_for_model", "load_split", "normalize", "split_for_model", "to_model_inputs",
    "training_mean_std", "upsample",
]
