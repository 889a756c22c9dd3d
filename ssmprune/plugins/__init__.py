"""TensorRT plugins of the two ops.

``plugins.tensorrt`` holds the TensorRT plugins (Python IPluginV3, and the
decorator form with ahead-of-time kernels) that launch the Triton kernels of
``ssmprune.ops.triton``; ``forms`` and ``ptx`` choose the plugin form and the
PTX ISA an engine's kernels carry.
"""
