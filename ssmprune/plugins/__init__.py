"""Fast implementations of the two ops for deployment.

``plugins.triton`` holds the Triton kernels of ``ssmprune::selective_scan`` and
``ssmprune::token_gather`` with their host launchers; ``plugins.tensorrt`` the
TensorRT plugins that launch the same kernels (Python IPluginV3, and the
decorator form with ahead-of-time kernels).
"""
