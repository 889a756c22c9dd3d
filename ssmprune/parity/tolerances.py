"""The one table of parity tolerances, by precision and output name.

Sources: ARCHITECTURE.md, "Parity". ``max_rel`` bounds the relative error
of an output, max |actual - reference| / max |reference| per sample; ``top1``
bounds the fraction of samples whose arg-max class agrees. A key of None is
the default for outputs not named. The reference is always the fp32 PyTorch
model; the precision is the file's (its manifest's ``precision``).

fp16 (``ssmprune export --dtype fp16``): fp16 rounds to 2^-11 (4.9e-4)
relative. Measured against the fp32 model, where no token choice changed:
max_rel <= 2.0e-3 for ONNX Runtime on the file and <= 3.5e-3 for the fp16
PyTorch model (whose CPU kernels round every op's output to fp16, as a GPU
does; ONNX Runtime's CPU runs most fp16 math in fp32) on the digits models
(360 held-out scans and 64 random inputs), vim_s pruned at 224 px and the
test configurations; top-1 agreement 100 % on the held-out digits, dense
and pruned. 1e-2 leaves about 3x for deeper models and other kernels'
accumulation orders; a precision defect (an overflow, a lost cast) gives
inf/NaN or errors of order 1. A pruned model can exceed it on the odd
sample: where two tokens' importance scores tie within fp16 noise, the fp16
file keeps the other one and that sample's logits move by up to ~2
relative (2 and 3 of the 360 held-out digits for ``vim_digits_top`` and
``plainmamba_digits_top``, top-1 unchanged; 1 of 64 random inputs for
``vim_digits_top``, top-1 changed). So the fp16 and bf16 rows ask 90 % of the
samples to be within max_rel and 90 % top-1 agreement (on the default 16
inputs: one such sample may differ), while every sample must stay finite.

A combined precision (``int8+fp16``: a TensorRT 10 engine built with a
precision flag on a Q/DQ file) is judged by the row of its first part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ssmprune.errors import SsmpruneError


class ToleranceError(SsmpruneError):
    """A runtime's outputs differ from the reference beyond the tolerance table."""


@dataclass(frozen=True)
class Tolerance:
    max_rel: Optional[float] = None  # None: not judged by value
    top1: Optional[float] = None     # minimum top-1 agreement, None: not judged
    share: float = 1.0               # fraction of samples that must be within max_rel

    def describe(self) -> str:
        parts = []
        if self.max_rel is not None:
            within = f" on >= {self.share:.0%} of samples" if self.share < 1 else ""
            parts.append(f"max_rel <= {self.max_rel:g}{within}")
        if self.top1 is not None:
            parts.append(f"top-1 agreement >= {self.top1:.0%}")
        return ", ".join(parts)


TOLERANCES: dict[str, dict[Optional[str], Tolerance]] = {
    "fp32": {None: Tolerance(max_rel=1e-4)},
    "fp16": {None: Tolerance(max_rel=1e-2, top1=0.9, share=0.9)},
    "bf16": {None: Tolerance(max_rel=1e-2, top1=0.9, share=0.9)},
    "int8": {None: Tolerance(top1=0.99)},
    "fp8": {None: Tolerance(top1=0.99)},
}


def tolerance_for(precision: str, output: str) -> Tolerance:
    """The tolerance of ``output`` for a file of ``precision``."""
    try:
        table = TOLERANCES[precision.split("+")[0]]
    except KeyError:
        raise ToleranceError(f"no parity tolerance for precision {precision!r}; "
                             f"known: {', '.join(TOLERANCES)}") from None
    return table.get(output, table[None])
