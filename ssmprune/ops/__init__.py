"""The two custom ops and their CPU implementations.

On a machine with CUDA and Triton, importing this package registers the Triton
kernels as the ops' CUDA implementations, so models on a GPU run them.
"""

import importlib.util as _importlib_util

import torch as _torch

if _torch.cuda.is_available() and _importlib_util.find_spec("triton") is not None:
    import ssmprune.plugins.triton  # noqa: E402,F401
