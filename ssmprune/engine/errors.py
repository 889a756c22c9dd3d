"""User errors of the engine stage (building, checking and loading TensorRT engines).

All derive from ``SsmpruneError``: the CLI prints them as one line, exit 2.
"""

from ssmprune.errors import BadInputFileError, SsmpruneError


class TensorRTUnavailableError(SsmpruneError):
    """No TensorRT flavour is installed, or the installed one cannot do what was asked."""


class NoGpuError(SsmpruneError):
    """An operation that needs an NVIDIA GPU (running an engine) on a machine without one."""


class EngineBuildError(SsmpruneError):
    """TensorRT could not parse the ONNX or build an engine from it."""


class UnsupportedBuildOptionError(SsmpruneError):
    """A build option the installed TensorRT flavour or version does not support."""


class PluginUnavailableError(SsmpruneError):
    """A custom node or engine needs a TensorRT plugin that is not registered."""


class EngineMismatchError(SsmpruneError):
    """An engine built for another TensorRT version or GPU architecture."""


class EngineFileError(BadInputFileError):
    """An engine or manifest that is missing, truncated, corrupted or of the wrong kind."""
