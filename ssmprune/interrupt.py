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

``cancellable()`` is ``deferred()`` for a native call that may not poll for
minutes: TensorRT-RTX compiles an engine in one builder step, with no
callback in between. A thread sees the signal at once (``signal.set_wakeup_fd``:
the call releases the GIL, but Python runs handlers only between bytecodes of
the main thread) and, when the call has not ended ``grace`` seconds later,
ends the process: it removes the temporaries of the writes still open
(``track_temporary``: ``os._exit`` runs no ``finally``), the hook of
``handled()`` prints the interruption, then ``os._exit(128 + signal)``, even
when printing fails (a closed pipe).

Once an interruption has been raised, further signals are only recorded: a
second Ctrl-C must not cut the cleanup the first one started.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds a cancellable() call has to end after a signal before the process is ended.
CANCEL_GRACE_S = 2.0

_deferring = 0  # depth of nested deferred() blocks
_pending: Optional[int] = None  # the first signal received while deferring
_on_forced_exit: Optional[Callable[["Interrupted"], None]] = None
_raised = False  # an Interrupted has been raised: the command is on its way out
_temporaries: set[str] = set()  # the open temporaries of ssmprune.outputs


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
    global _pending, _raised
    if _deferring or _raised:
        _pending = _pending or signum
        return
    _raised = True
    raise Interrupted(signum)


def track_temporary(path: os.PathLike) -> None:
    """``path`` (an open write's temporary) is removed if ``cancellable()`` ends the process."""
    _temporaries.add(os.fspath(path))


def untrack_temporary(path: os.PathLike) -> None:
    """``path`` was committed or removed: nothing to remove at a forced exit."""
    _temporaries.discard(os.fspath(path))


@contextmanager
def handled(on_forced_exit: Optional[Callable[[Interrupted], None]] = None) -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` inside the block (main thread only: Python
    runs signal handlers there; elsewhere the block runs unchanged). ``on_forced_exit``
    reports an interruption that ``cancellable()`` ends with ``os._exit``."""
    global _on_forced_exit, _pending, _raised
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    _on_forced_exit = on_forced_exit
    try:
        yield
    finally:
        _on_forced_exit = _pending = None
        _raised = False
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


@contextmanager
def cancellable(grace: float = CANCEL_GRACE_S) -> Iterator[None]:
    """``deferred()`` that ends the process when the block has not ended ``grace`` seconds
    after a signal (see the module docstring). ``os._exit`` runs no ``finally``: the
    temporaries of the atomic writes open around it (``ssmprune bundle`` builds engines
    inside its folder's) are removed first (``track_temporary``); anything else the
    block's callers would clean up is not. Without ``handled()`` (no handler of ours) it
    is ``deferred()``."""
    if signal.getsignal(signal.SIGINT) is not _handler \
            or threading.current_thread() is not threading.main_thread():
        with deferred():
            yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(read_fd, done, grace), daemon=True,
                               name="ssmprune-interrupt")
    watcher.start()
    try:
        with deferred():
            yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        watcher.join()
        os.close(read_fd)
        os.close(write_fd)


def _watch(read_fd: int, done: threading.Event, grace: float) -> None:
    global _pending
    while not done.is_set():
        ready, _, _ = select.select([read_fd], [], [], 0.1)
        if not ready:
            continue
        signals = [s for s in os.read(read_fd, 64) if s in SIGNALS]
        if not signals:
            continue
        _pending = _pending or signals[0]
        if not done.wait(grace):
            _forced_exit(_pending)


def _forced_exit(signum: int) -> None:
    """Remove the open temporaries, report, end the process. Runs in the watcher thread:
    whatever fails on the way (a closed pipe: ``BrokenPipeError``) must not stop the exit,
    which is the point (a thread's exception would only end the thread)."""
    interrupted = Interrupted(signum)
    try:
        for path in list(_temporaries):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                try:
                    os.unlink(path)
                except OSError:  # gone, or not ours: the others are still removed
                    pass
        if _on_forced_exit is not None:
            _on_forced_exit(interrupted)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:  # noqa: B036  (nothing may stop the exit below)
        pass
    finally:
        os._exit(interrupted.exit_code)
