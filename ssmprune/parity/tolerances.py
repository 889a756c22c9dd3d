"""The one table of parity tolerances, by precision and output name.

Sources: ARCHITECTURE.md, "Parity". ``max_rel`` bounds the relative error
of an output, max |actual - reference| / max |reference| per sample; ``top1``
bounds the fraction of samples whose arg-max class agrees. A key of None is
the default for outputs not named.
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

    def describe(self) -> str:
        parts = []
        if self.max_rel is not None:
            parts.append(f"max_rel <= {self.max_rel:g}")
        if self.top1 is not None:
            parts.append(f"top-1 agreement >= {self.top1:.0%}")
        return ", ".join(parts)


TOLERANCES: dict[str, dict[Optional[str], Tolerance]] = {
    "fp32": {None: Tolerance(max_rel=1e-4)},
    "fp16": {None: Tolerance(max_rel=1e-2)},
    "bf16": {None: Tolerance(max_rel=1e-2)},
    "int8": {None: Tolerance(top1=0.99)},
}


def tolerance_for(precision: str, output: str) -> Tolerance:
    """The tolerance of ``output`` for a file of ``precision``."""
    try:
        table = TOLERANCES[precision]
    except KeyError:
        raise ToleranceError(f"no parity tolerance for precision {precision!r}; "
                             f"known: {', '.join(TOLERANCES)}") from None
    return table.get(output, table[None])
