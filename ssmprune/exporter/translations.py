"""The translation table ``torch.onnx.export(..., custom_translation_table=...)`` uses.

Each torch custom op becomes one node of the ``ssmprune`` domain with its
static parameters as attributes (schemas in ``ssmprune.exporter.schemas``);
the bodies are attached afterwards (``ssmprune.exporter.stages.attach_bodies``).

* ``ssmprune::selective_scan`` -> ``SelectiveScan`` with all nine inputs:
  a missing D or delta_bias becomes zeros and a missing gap zeros (the same
  result, as the contract says); a missing z becomes u with ``has_z=0``;
  A, D and delta_bias of another float type (an fp16 model's) are cast to
  fp32, the type the schema gives them.
* ``ssmprune::token_gather`` takes a list of tensors, an ONNX op a fixed
  number: the tensors are flattened to (b m f_i), cast to one dtype and
  concatenated along the last axis, gathered by one ``TokenGather``, then
  split, reshaped and cast back. Vim gathers its hidden states and fp32
  residual this way in one node; PlainMamba gathers one tensor as it is.

Every node carries all of its attributes explicitly, and the plugin lookup keys
``plugin_namespace`` / ``plugin_version`` (why: ``schemas``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_ir as ir
from onnxscript import opset18 as op
from onnxscript import values

from ssmprune.exporter import schemas

ssm = values.Opset(schemas.DOMAIN, schemas.VERSION)

# Wider first: the dtype several gathered tensors are concatenated in.
_PROMOTION = (ir.DataType.DOUBLE, ir.DataType.FLOAT, ir.DataType.BFLOAT16, ir.DataType.FLOAT16)


def _zeros(shape: Sequence[int], dtype: np.dtype):
    return op.Constant(value=ir.tensor(np.zeros(tuple(shape), dtype=dtype)))


def _fp32(value):
    """The schema's fp32 parameters (A, D, delta_bias) cast from a half-precision model's."""
    return value if value.dtype == ir.DataType.FLOAT else op.Cast(value, to=ir.DataType.FLOAT)


def _static_shape(value, what: str) -> tuple[Any, ...]:
    """The shape, static but for the batch (dim 0), which may be symbolic (a dynamic-batch
    export); the ops' token counts and widths are attributes and must be known."""
    shape = value.shape
    if shape is None or not all(isinstance(d, int) for d in tuple(shape)[1:]):
        raise ValueError(f"{what} needs a static shape but for its batch for the ssmprune "
                         f"ONNX ops, got {shape}")
    return tuple(shape)


def _zero_gap(u, length: int):
    """int64 zeros (b, l): b from ``u`` at run time, so a symbolic batch works too."""
    shape = op.Concat(op.Shape(u, start=0, end=1), op.Constant(value_ints=[length]), axis=0)
    return op.ConstantOfShape(shape, value=ir.tensor(np.zeros(1, dtype=np.int64)))


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, gap=None,
                   delta_softplus=False):
    """``ssmprune::selective_scan`` -> ``ssmprune::SelectiveScan`` (module docstring)."""
    _, d, length = _static_shape(u, "selective_scan input u")
    A = _fp32(A)
    D = _zeros((d,), np.float32) if D is None else _fp32(D)
    delta_bias = _zeros((d,), np.float32) if delta_bias is None else _fp32(delta_bias)
    if gap is None:
        gap = _zero_gap(u, length)
    return ssm.SelectiveScan(u, delta, A, B, C, D, u if z is None else z, delta_bias, gap,
                             delta_softplus=int(bool(delta_softplus)), has_z=int(z is not None),
                             **schemas.PLUGIN_ATTRIBUTES)


def token_gather(scores, positions, tensors, k, protect=-1, insert_at=0):
    """``ssmprune::token_gather`` -> one ``ssmprune::TokenGather`` (module docstring)."""
    attrs = dict(k=int(k), protect=int(protect), insert_at=int(insert_at),
                 **schemas.PLUGIN_ATTRIBUTES)
    if not tensors:  # positions only: gather a dummy column and drop it
        kept, _ = ssm.TokenGather(scores, positions, op.Unsqueeze(scores, [-1]), **attrs)
        return [kept]
    if len(tensors) == 1 and len(_static_shape(tensors[0], "token_gather tensor")) >= 3:
        kept, gathered = ssm.TokenGather(scores, positions, tensors[0], **attrs)
        return [kept, gathered]
    shapes = [_static_shape(t, "token_gather tensor") for t in tensors]
    common = next((dt for dt in _PROMOTION if any(t.dtype == dt for t in tensors)), None)
    if common is None or any(t.dtype not in _PROMOTION for t in tensors):
        raise ValueError(f"token_gather: ssmprune::TokenGather gathers floating-point tensors, "
                         f"got {[str(t.dtype) for t in tensors]}")
    widths = [int(np.prod(s[2:], dtype=np.int64)) for s in shapes]
    flat = []
    # Reshape's 0 keeps the input's dim 0, so a symbolic batch passes through.
    for t, shape, width in zip(tensors, shapes, widths):
        t = op.Reshape(t, op.Constant(value_ints=[0, shape[1], width]))
        flat.append(t if t.dtype == common else op.Cast(t, to=common))
    x = flat[0] if len(flat) == 1 else op.Concat(*flat, axis=-1)
    kept, gathered = ssm.TokenGather(scores, positions, x, **attrs)
    offsets = np.cumsum([0, *widths]).tolist()
    parts = ([gathered] if len(flat) == 1 else
             [op.Slice(gathered, op.Constant(value_ints=[start]), op.Constant(value_ints=[end]),
                       op.Constant(value_ints=[-1]))
              for start, end in zip(offsets[:-1], offsets[1:])])
    kept_count = int(k) + (1 if protect >= 0 else 0)
    outputs = [kept]
    for part, t, shape in zip(parts, tensors, shapes):
        part = op.Reshape(part, op.Constant(value_ints=[0, kept_count, *shape[2:]]))
        outputs.append(part if t.dtype == common else op.Cast(part, to=t.dtype))
    return outputs


def translation_table() -> dict:
    """{torch op overload: translation function} for ``torch.onnx.export``."""
    import torch

    import ssmprune.ops.selective_scan  # noqa: F401  (defines the torch ops)
    import ssmprune.ops.token_gather  # noqa: F401

    return {torch.ops.ssmprune.selective_scan.default: selective_scan,
            torch.ops.ssmprune.token_gather.default: token_gather}
