"""SIGINT and SIGTERM: one interruption that stops any command and leaves nothing behind.

``handled()`` (the CLI group runs every command inside it) makes both signals
raise ``Interrupted``, a ``KeyboardInterrupt``, in the main thread, so
``finally`` blocks and the atomic writers of ``ssmprune.outputs`` clean up on
the way out. Without it SIGTERM (what ``docker stop``, systemd and CI runners
send) ends the process at once, with no cleanup at all.

``deferred()`` holds the signals back for a stretch that must not be cut or
whose callers swallow exceptions: the renames that commit an output, and a
TensorRT build (TensorRT logs a ``KeyboardInterrupt`` raised in one of its
Python callbacks and builds on). Inside it the handler only records the
signal; ``requested()`` lets a polling callback see it (the build's progress
monitor then cancels the build) and the stretch's end raises it.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_deferring = 0  # depth of nested deferred() blocks
_pending: Optional[int] = None  # the first signal received while deferring


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum: int, frame) -> None:
    global _pending
    if _deferring:
        _pending = _pending or signum
        return
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` inside the block (main thread only: Python
    runs signal handlers there; elsewhere the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


@contextmanager
def deferred() -> Iterator[None]:
    """Record SIGINT / SIGTERM inside the block and raise ``Interrupted`` when it ends
    (replacing any exception the block raised: the interruption is what happened)."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def requested() -> Optional[int]:
    """The signal received inside the current ``deferred()`` block, if any."""
    return _pending
