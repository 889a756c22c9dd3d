"""Reference implementations keyed by ONNX op name, in the ONNX calling convention.

Each entry takes the node's inputs as numpy arrays (in the ONNX op's input
order) and its attributes as keyword arguments, and returns the outputs as
numpy arrays, computed by the op's PyTorch reference in ``ssmprune.ops``.
Tests check every ONNX body (and, with TensorRT, every plugin) against these
one op at a time, before any whole model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ssmprune.exporter.schemas import SELECTIVE_SCAN, TOKEN_GATHER
from ssmprune.ops.selective_scan import selective_scan_ref
from ssmprune.ops.token_gather import token_gather_ref


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, gap, *, delta_softplus=0,
                             has_z=1) -> list[np.ndarray]:
    """``ssmprune::SelectiveScan`` by ``selective_scan_ref``."""
    y = selective_scan_ref(_t(u), _t(delta), _t(A), _t(B), _t(C), _t(D),
                           _t(z) if has_z else None, _t(delta_bias), _t(gap),
                           bool(delta_softplus))
    return [y.numpy()]


def token_gather_reference(scores, positions, x, *, k, protect=-1,
                           insert_at=0) -> list[np.ndarray]:
    """``ssmprune::TokenGather`` by ``token_gather_ref``."""
    out = token_gather_ref(_t(scores), _t(positions), [_t(x)], k, protect, insert_at)
    return [t.numpy() for t in out]


REFERENCES: dict[str, Callable[..., list[np.ndarray]]] = {
    SELECTIVE_SCAN: selective_scan_reference,
    TOKEN_GATHER: token_gather_reference,
}
