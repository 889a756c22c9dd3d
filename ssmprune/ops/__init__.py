"""The two custom ops and their CPU implementations.

Importing this package registers both ops, ``torch.ops.ssmprune.selective_scan``
and ``torch.ops.ssmprune.token_gather``, with their CPU implementations and
fake (shape) implementations. On a machine with CUDA and Triton it also
registers the Triton kernels (``ssmprune.ops.triton``, which the TensorRT
plugins launch too) as the ops' CUDA implementations, so models on a GPU run
them.
"""

import importlib.util as _importlib_util

import torch as _torch

# The contract modules register the ops (torch.library.custom_op) when imported.
# They import only ``ssmprune.ops.cpu_kernel`` from this package, never the package's
# names, so importing them from here is no circle; ops.triton imports them back,
# which finds them already loaded.
from ssmprune.ops import selective_scan, token_gather  # noqa: F401  (registers both ops)

if _torch.cuda.is_available() and _importlib_util.find_spec("triton") is not None:
    import ssmprune.ops.triton  # noqa: E402,F401
