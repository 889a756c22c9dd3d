"""The two forms of ssmprune's TensorRT plugins, named without importing them.

``v3``: Python IPluginV3 plugins, which need Python, torch and Triton wherever the
engine runs. ``aot``: the decorator form whose kernels are compiled into the
engine, which then runs with TensorRT alone. Reading an engine's form (and
refusing a clash) must not import torch or Triton, so the names live here.
"""

FORM_VAR = "SSMPRUNE_TRT_PLUGINS"
FORMS = ("v3", "aot")
