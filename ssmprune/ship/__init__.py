"""Shipping engines and exports to where they run: edge bundles and Triton model repositories.

- ``sources``: the SOURCE arguments (export folders, engine files), read through the
  validated readers (``read_export``; ``read_manifest`` + ``verify_engine_file``),
  their batch (static or dynamic) and their class labels.
- ``bundle``: ``ssmprune bundle``: a folder a device needs and nothing more
  (engines per GPU target with their manifests, ``SHA256SUMS``, labels, ``run.py``,
  README); ``bundle_run`` is that ``run.py`` (stdlib + numpy; TensorRT and Pillow
  imported lazily), kept here as an importable, tested module.
- ``triton_repo``: ``ssmprune triton-repo``: a Triton Inference Server model repository.

Modules are imported explicitly, so importing this package stays cheap.
"""
