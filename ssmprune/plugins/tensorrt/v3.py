"""IPluginV3 plugins (core, build and runtime capabilities) made from an ``OpSpec``.

The classes derive from the installed TensorRT module's interfaces, so they are
made per module (``tensorrt`` or ``tensorrt_rtx_bindings``) by
``plugin_classes``. The plugin's state is its integer fields, serialised into
the engine as INT32 plugin fields and read back by the creator at
deserialisation; everything else (types, shapes) TensorRT hands to each call.
``enqueue`` wraps TensorRT's buffers as torch tensors and launches the op's
Triton kernel on TensorRT's stream, so running an engine with these plugins
needs Python, torch and Triton in the process (``quick`` has the form that
does not).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from ssmprune.plugins.tensorrt.buffers import TORCH_DTYPES, device_tensor, type_names
from ssmprune.plugins.tensorrt.spec import NAMESPACE, VERSION, OpSpec


def fields_to_dict(fields: Any) -> dict[str, np.ndarray]:
    """A ``PluginFieldCollection`` as ``{name: numpy array}``."""
    return {fields[i].name: np.asarray(fields[i].data) for i in range(len(fields))}


def field_collection(trt: Any, values: dict[str, int]) -> tuple[Any, list[np.ndarray]]:
    """``values`` as INT32 plugin fields, with the arrays that must outlive them."""
    arrays = [np.array([v], dtype=np.int32) for v in values.values()]
    fields = [trt.PluginField(name, a, trt.PluginFieldType.INT32)
              for name, a in zip(values, arrays)]
    return trt.PluginFieldCollection(fields), arrays


@functools.lru_cache(maxsize=None)
def plugin_classes(trt: Any, spec: OpSpec) -> tuple[type, type]:
    """(plugin class, creator class) of ``spec`` for the TensorRT module ``trt``."""
    names = type_names(trt)
    to_trt = {v: k for k, v in names.items()}

    class Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild,
                 trt.IPluginV3OneRuntime):
        """``ssmprune::<op>`` v1; ``values`` are its fields."""

        def __init__(self, values: dict[str, int]):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.num_outputs = len(spec.outputs)
            self.plugin_namespace = NAMESPACE
            self.plugin_name = spec.name
            self.plugin_version = VERSION
            self.values = dict(values)
            self._serialised = None  # TensorRT reads the arrays after the call returns

        def get_capability_interface(self, kind):
            return self

        def clone(self):
            return Plugin(self.values)

        def get_output_data_types(self, input_types):
            return [to_trt[t] for t in spec.output_types([names[t] for t in input_types])]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            out = []
            for dims in spec.output_dims(inputs, self.values, expr_builder.constant):
                exprs = trt.DimsExprs(len(dims))
                for i, d in enumerate(dims):
                    exprs[i] = d
                out.append(exprs)
            return out

        def supports_format_combination(self, pos, in_out, num_inputs):
            if num_inputs != len(spec.inputs):
                return False
            desc = in_out[pos].desc
            return desc.format == trt.TensorFormat.LINEAR and spec.accepts(
                pos, names.get(desc.type), [names.get(t.desc.type) for t in in_out[:pos]])

        def configure_plugin(self, inputs, outputs):
            pass

        def on_shape_change(self, inputs, outputs):
            pass

        def get_workspace_size(self, inputs, outputs):
            return 0

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def get_fields_to_serialize(self):
            collection, arrays = field_collection(trt, self.values)
            self._serialised = (collection, arrays)
            return collection

        def attach_to_context(self, context):
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            def tensors(descs, addresses):
                return [device_tensor(a, tuple(d.dims), TORCH_DTYPES[names[d.type]])
                        for d, a in zip(descs, addresses)]

            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                spec.make_launch(tensors(input_desc, inputs), tensors(output_desc, outputs),
                                 self.values).run(torch.device("cuda"))

    class Creator(trt.IPluginCreatorV3One):
        """Makes ``Plugin`` from the parser's node attributes or an engine's fields."""

        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = spec.name
            self.plugin_namespace = NAMESPACE
            self.plugin_version = VERSION
            self.field_names = trt.PluginFieldCollection([
                trt.PluginField(name, np.array([], dtype=np.int32), trt.PluginFieldType.INT32)
                for name, _ in spec.fields])

        def create_plugin(self, name, fields, phase):
            return Plugin(spec.field_values(fields_to_dict(fields)))

    Plugin.__name__ = Plugin.__qualname__ = f"{spec.name}Plugin"
    Creator.__name__ = Creator.__qualname__ = f"{spec.name}PluginCreator"
    return Plugin, Creator
