"""Export: torch.export (static shapes) -> ONNX with the custom ``ssmprune`` ops.

    schemas       ONNX schemas of ssmprune::SelectiveScan / ssmprune::TokenGather
    translations  torch op -> custom ONNX node (torch.onnx translation table)
    bodies        standard-op bodies of the two ops (model-local functions)
    builder       the node recorder the bodies are written with
    op_models     one-node models around a custom op (bodies and plugins alone)
    stages        the export stages as plain functions
    manifest      manifest.json, sha256, atomic writing
    progress      step timing, with a rich display for the CLI
    export        the ``ssmprune export`` job: ``export(ExportOptions(...), out_dir)``
"""

from ssmprune.exporter.export import ExportOptions, ExportResult, export, model_from_manifest
from ssmprune.exporter.manifest import Manifest, read_export

__all__ = ["ExportOptions", "ExportResult", "Manifest", "export", "model_from_manifest",
           "read_export"]
