"""TensorRT engines: build from ONNX, write with a manifest, check and load.

- ``trt``: the one module that imports TensorRT (full TensorRT or TensorRT-RTX).
- ``build``: ONNX -> serialized engine (precision per TensorRT version, targets,
  plugins bound or custom nodes lowered).
- ``plugins``: custom ONNX nodes and the TensorRT plugins they bind to.
- ``manifest``: the JSON manifest next to every engine; atomic writes.
- ``save``: export folder -> engine file + manifest (``ssmprune build``).
- ``runtime``: check an engine against its manifest and this machine; run it.

Modules are imported explicitly (``from ssmprune.engine.build import ...``) so
importing this package stays cheap.
"""
