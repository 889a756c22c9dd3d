"""Fast implementations of the two ops for deployment.

``plugins.triton`` holds the Triton kernels of ``ssmprune::selective_scan`` and
``ssmprune::token_gather`` with their host launchers; the TensorRT plugins
launch the same kernels.
"""
