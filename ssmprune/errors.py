"""User-facing error types.

Anything derived from ``SsmpruneError`` is a problem with the user's input: the
CLI prints it as one line and exits with status 2. Any other exception is a bug
and keeps its traceback.
"""


class SsmpruneError(Exception):
    """Base class of every error caused by bad user input."""


class UnknownModelError(SsmpruneError):
    """A model name that is not registered."""


class ConfigError(SsmpruneError):
    """An impossible model or pruning configuration."""


class InputShapeError(SsmpruneError):
    """An input whose shape does not match what the model was built for."""


class CheckpointError(SsmpruneError):
    """A checkpoint that cannot be read or does not fit the model."""


class BadInputFileError(SsmpruneError):
    """A file that is missing, unreadable, truncated or of the wrong kind."""


class OutputPathError(SsmpruneError):
    """An output path that cannot be written, or that would overwrite an input."""
