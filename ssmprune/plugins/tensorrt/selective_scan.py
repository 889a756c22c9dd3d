"""The plugin contract of ``ssmprune::SelectiveScan`` (schema: ``exporter.schemas``)."""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from ssmprune.exporter.schemas import SCAN_ATTRIBUTES, SCAN_OUTPUTS, SELECTIVE_SCAN
from ssmprune.plugins.tensorrt.spec import OpSpec, scan_output_dims
from ssmprune.ops.triton.runtime import Launch
from ssmprune.ops.triton.selective_scan import BLOCK_D_CUDA, selective_scan_launch

# u, delta, z: (b d l) T; A: (d n) fp32; B, C: (b n l) T; D, delta_bias: (d) fp32;
# gap: (b l) int32/int64; y: (b d l) T.
INPUTS = (("u", "T"), ("delta", "T"), ("A", "fp32"), ("B", "T"), ("C", "T"), ("D", "fp32"),
          ("z", "T"), ("delta_bias", "fp32"), ("gap", "int"))


def make_launch(inputs: Sequence[Tensor], outputs: Sequence[Tensor],
                values: Mapping[str, int]) -> Launch:
    """The launch scanning the node's nine inputs into ``outputs[0]``. The exporter
    passes zeros for a missing D, delta_bias or gap (same result) and u with
    has_z=0 for no z."""
    u, delta, A, B, C, D, z, delta_bias, gap = inputs
    return selective_scan_launch(u, delta, A, B, C, D, z if values["has_z"] else None,
                                 delta_bias, gap, bool(values["delta_softplus"]), outputs[0],
                                 block_d=BLOCK_D_CUDA)


SPEC = OpSpec(
    name=SELECTIVE_SCAN,
    inputs=INPUTS,
    outputs=((SCAN_OUTPUTS[0], "T"),),
    fields=tuple(SCAN_ATTRIBUTES.items()),
    output_dims=scan_output_dims,
    make_launch=make_launch,
)
