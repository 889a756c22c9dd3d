"""Triton kernels of the two ops, with host launchers.

``selective_scan(...)`` and ``token_gather(...)`` take the same arguments as
the torch custom ops ``ssmprune::selective_scan`` and ``ssmprune::token_gather``
and run on CUDA tensors (compiled) or on CPU tensors under TRITON_INTERPRET=1
(interpreted: how CI checks their numerics without a GPU). Importing this
package registers them as the ops' CUDA implementations, so a model on a GPU
runs them.
"""

from __future__ import annotations

import torch

from ssmprune.ops.selective_scan import OP_NAME as SCAN_OP
from ssmprune.ops.token_gather import OP_NAME as GATHER_OP
from ssmprune.ops.triton.selective_scan import selective_scan
from ssmprune.ops.triton.token_gather import token_gather

__all__ = ["selective_scan", "token_gather"]

torch.library.register_kernel(SCAN_OP, "cuda", selective_scan)
torch.library.register_kernel(GATHER_OP, "cuda", token_gather)
