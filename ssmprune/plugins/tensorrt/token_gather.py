"""The plugin contract of ``ssmprune::TokenGather`` (schema: ``exporter.schemas``)."""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from ssmprune.exporter.schemas import GATHER_ATTRIBUTES, TOKEN_GATHER
from ssmprune.plugins.tensorrt.spec import OpSpec, gather_output_dims
from ssmprune.ops.triton.runtime import Launch
from ssmprune.ops.triton.token_gather import BLOCK_C_CUDA, _rows, token_gather_launch


def make_launch(inputs: Sequence[Tensor], outputs: Sequence[Tensor],
                values: Mapping[str, int]) -> Launch:
    """The launch for scores (b m) fp32, positions (b m) int64, x (b m ...) that
    writes the kept positions (b k') int64 and x's kept rows (b k' ...) into
    ``outputs``."""
    scores, positions, x = inputs
    kept_positions, x_kept = outputs
    return token_gather_launch(scores, positions, [_rows(x)], values["k"], values["protect"],
                               values["insert_at"], kept_positions, [x_kept],
                               block_c=BLOCK_C_CUDA)


SPEC = OpSpec(
    name=TOKEN_GATHER,
    inputs=(("scores", "fp32"), ("positions", "int64"), ("x", "T")),
    outputs=(("kept_positions", "int64"), ("x_kept", "T")),
    fields=tuple(GATHER_ATTRIBUTES.items()),
    output_dims=gather_output_dims,
    make_launch=make_launch,
)
