"""User errors of shipping (bundles, Triton model repositories): one ``error:`` line, exit 2."""

from ssmprune.errors import SsmpruneError


class NotShippableError(SsmpruneError):
    """An artifact that the target (a bundle's run.py, a Triton server) cannot run as it is:
    a v3-plugin engine, a TensorRT-RTX engine on Triton, an engine without its export."""


class LabelsError(SsmpruneError):
    """A labels file that is unreadable or does not fit the model's classes."""
