"""Small Vim and PlainMamba trained on scikit-learn's digits: the embedded default.

No ImageNet weights can be had where this project runs, so two small models
trained on real data that ships with scikit-learn (``ssmprune.data.digits``)
serve as the default weights of the demo. ``experiments/digits.py`` trains
them on CPU with a fixed seed and writes ``ssmprune/assets/<name>.safetensors``
in the official key layout (fp16 tensors, to keep each file under 1 MB; they
load into the fp32 models as they are); ``benchmarks/RESULTS.md`` ("ToP on
scikit-learn digits") reports what pruning does to them.

* ``vim_digits``: 32 px (the 8 x 8 scans upsampled 4 x), patch 4 stride 4:
  8 x 8 = 64 patches + the class token; width 64, 8 blocks.
* ``plainmamba_digits``: 128 px (the total stride is 16, so this is the
  smallest size with an 8 x 8 = 64-token grid to prune); width 48, 8 layers,
  no extra stem conv and no dw conv after layer 0 (the L2 / L3 layout).

Both take the grey scans as 3-channel images normalised with the training
split's statistics (``DIGITS_MEAN``, ``DIGITS_STD``).

Pruning presets ``vim_digits_top`` and ``plainmamba_digits_top`` prune after
blocks 2, 3 and 5 of 8: the relative depths of ``vim_s_paper`` (after 5/24,
10/24 and 15/24 of the depth, rounded half up). Their keep ratio, importance
and alignment come from the experiment (see ``PRESET_CHOICE`` below).
"""

from __future__ import annotations

from pathlib import Path

from ssmprune.data.digits import DIGITS_MEAN, DIGITS_STD, NUM_CLASSES
from ssmprune.models.plainmamba import FAMILY as PLAINMAMBA
from ssmprune.models.registry import register_model
from ssmprune.models.vim import VIM
from ssmprune.pruning.config import PruneConfig, register_preset

ASSETS = Path(__file__).resolve().parent.parent / "assets"
GREY_MEAN = (DIGITS_MEAN,) * 3
GREY_STD = (DIGITS_STD,) * 3

VIM_DIGITS = dict(img_size=32, patch_size=4, stride=4, embed_dim=64, depth=8,
                  num_classes=NUM_CLASSES, mean=GREY_MEAN, std=GREY_STD)
PLAINMAMBA_DIGITS = dict(img_size=128, embed_dim=48, depth=8, stem_convs=0,
                         dw_after_first_layer=False, num_classes=NUM_CLASSES,
                         mean=GREY_MEAN, std=GREY_STD)

register_model(
    "vim_digits", VIM,
    "Vim trained on scikit-learn digits: 32 px, patch 4, 64 patches + cls, width 64, "
    "8 blocks (embedded weights)",
    **VIM_DIGITS,
)
register_model(
    "plainmamba_digits", PLAINMAMBA,
    "PlainMamba trained on scikit-learn digits: 128 px, 8 x 8 tokens, width 48, "
    "8 layers (embedded weights)",
    **PLAINMAMBA_DIGITS,
)

EMBEDDED = ("vim_digits", "plainmamba_digits")

# Blocks after which the presets prune (relative depths of vim_s_paper).
PRUNE_AFTER = (2, 3, 5)
# The presets, from the experiment (benchmarks/RESULTS.md, "ToP on
# scikit-learn digits"; held-out accuracy without fine-tuning):
# * vim_digits_top: no (alignment, importance) pair is distinguishable from
#   another on Vim (paired tests), so the paper's pair, clip + gap; keep ratio
#   0.9, the only one of 0.9 / 0.8 / 0.7 / 0.6 above 70 % without fine-tuning:
#   65 -> 59 -> 53 -> 47 tokens, 21.52 of 25.62 MFLOPs (-16 %), 74.4 % (dense 97.5 %).
# * plainmamba_digits_top: l1 importance, the best on the training split and on
#   the held-out one; gap alignment (here the same as none: the default step is
#   ~1e-4); keep ratio 0.8: 64 -> 52 -> 42 -> 34 tokens, 79.61 of 90.98 MFLOPs
#   (-12.5 %, the stem is 56 % of the FLOPs), 95.6 % (dense 98.3 %).
PRESET_CHOICE = {
    "vim_digits": PruneConfig(0.9, PRUNE_AFTER, importance="clip", alignment="gap"),
    "plainmamba_digits": PruneConfig(0.8, PRUNE_AFTER, importance="l1", alignment="gap"),
}
for _model, _config in PRESET_CHOICE.items():
    register_preset(f"{_model}_top", _model, _config)


def embedded_weights(name: str) -> Path | None:
    """The shipped ``.safetensors`` of a digits model, or None for any other name.

    None too when the file is absent (e.g. before ``experiments/digits.py train``
    has written it).
    """
    if name not in EMBEDDED:
        return None
    path = ASSETS / f"{name}.safetensors"
    return path if path.is_file() else None
