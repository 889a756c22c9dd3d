"""Output paths: checked before any work starts, then written whole or not at all.

Every command that writes calls ``prepare_output`` on each output first, so a
bad path is one line before minutes of work, not a traceback after them. The
writes go through ``atomic_file`` / ``atomic_files`` / ``atomic_dir``: a
temporary, renamed into place on success, removed on any exception, SIGINT or
SIGTERM included, and before ``cancellable()``'s forced exit
(``ssmprune.interrupt``).

Temporaries are named ``.NAME.PID-RANDOM.tmp`` beside the target ``NAME``,
or ``.ssmprune.PID-RANDOM.tmp`` inside a folder that already exists (so its
entries are renamed within its own file system: ``-o`` may be a mount point
or a symlink to another disk). The writer holds ``flock(LOCK_EX)`` on its
temporary for the temporary's whole life; the next write to the same place
removes only those whose lock it can take, that is those of a dead writer
(the kernel drops the lock of a SIGKILLed process). A lock, not the process
id in the name, decides: in a container every run has the same id, and a
live writer in another PID namespace (a shared volume) has an id that means
nothing here. The id stays in the name for a person reading a listing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Literal, Union

from ssmprune import interrupt
from ssmprune.errors import OutputPathError

PathLike = Union[str, os.PathLike]

#: Renamed into an existing folder last: the export manifest, which vouches for the
#: other files' sha256 (``exporter.manifest.MANIFEST_FILE``).
COMMIT_LAST = "manifest.json"

# Errors of writing that say the place the output goes is full or read-only: one line, not a bug.
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def prepare_output(path: PathLike, kind: Literal["file", "dir"], *,
                   inputs: Iterable[PathLike] = (), option: str = "-o") -> Path:
    """Check an output before any work starts and remove stale temporaries at its place.

    ``path`` must be non-empty; a ``file`` output must not be an existing
    folder or special file, a ``dir`` output not an existing file; its
    nearest existing ancestor must be a writable folder (missing parents are
    created when written); it must not be, lie inside, or hold any of
    ``inputs`` (compared resolved): an output may not overwrite an input.
    Raises ``OutputPathError``, one line naming ``option``. Returns ``path``
    as a ``Path``.
    """
    text = "" if path is None else os.fspath(path)
    if not str(text).strip():
        raise OutputPathError(f"{option} is empty: give a {_KIND_NAMES[kind]} path")
    if "\0" in str(text):
        raise OutputPathError(f"{option} {text!r} holds a NUL character")
    target = _named(text)
    try:
        _check_place(target, kind, option)
        _check_inputs(target, inputs, option)
        _remove_stale(target)
    except OSError as err:  # a name too long, a symlink loop: the path itself is bad
        raise OutputPathError(f"{option} {text}: {err.strerror or err}") from None
    return target


_KIND_NAMES = {"file": "file", "dir": "folder"}


def _check_place(target: Path, kind: str, option: str) -> None:
    if target.exists():
        if kind == "file" and target.is_dir():
            raise OutputPathError(f"{option} {target} is a folder; give a file path")
        if kind == "file" and not target.is_file():
            raise OutputPathError(f"{option} {target} exists and is not a regular file")
        if kind == "dir" and not target.is_dir():
            raise OutputPathError(f"{option} {target} exists and is not a folder")
        if kind == "dir" and not os.access(target, os.W_OK | os.X_OK):
            raise OutputPathError(f"{option} {target} is not a writable folder")
        if kind == "dir" and target.absolute() == target.absolute().parent:
            raise OutputPathError(f"{option} {target} is the root folder")
        if kind == "dir":  # written inside itself: its parent need not be writable
            return
    for ancestor in target.absolute().parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputPathError(f"{option} {target} lies under {ancestor}, which is a "
                                      "file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputPathError(f"{option} {target}: cannot write into {ancestor} "
                                      "(permission denied)")
            return
    raise OutputPathError(f"{option} {target}: no existing folder above it")


def _check_inputs(target: Path, inputs: Iterable[PathLike], option: str) -> None:
    out = target.resolve()
    for given in inputs:
        if given is None or not os.fspath(given):
            continue
        src = Path(given).resolve()
        if out == src:
            relation = "is"
        elif src in out.parents:
            relation = "lies inside"
        elif out in src.parents:
            relation = "holds"
        else:
            continue
        raise OutputPathError(f"{option} {target} {relation} the input {given}: an output may "
                              "not overwrite an input")


def _named(path: PathLike) -> Path:
    """``path``, absolute when it ends in ``.`` or ``..`` (a temporary is named after the
    target's last component, which those lack)."""
    target = Path(path)
    return Path(os.path.abspath(target)) if target.name in ("", "..") else target


#: The temporary of a write into an existing folder, inside that folder.
_INSIDE = "ssmprune"  # -> .ssmprune.PID-RANDOM.tmp
_POLL_S = 0.05  # how often a wait for a folder's lock looks for an interruption


def _temp_name(name: str) -> str:
    return f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _temp_pattern(name: str) -> "re.Pattern[str]":
    # Strict: a process id of at most 10 digits and 8 hex digits; any other name is not ours.
    return re.compile(re.escape(f".{name}.") + r"\d{1,10}-[0-9a-f]{8}\.tmp")


def _places(target: Path) -> list[tuple[Path, str]]:
    """(folder, name) of the temporaries a write of ``target`` may have left."""
    places = [(target.parent if str(target.parent) else Path("."), target.name)]
    if target.is_dir():
        places.append((target, _INSIDE))
    return places


def _remove_stale(target: Path) -> None:
    """Remove the temporaries of dead writers of ``target`` (see the module docstring)."""
    for folder, name in _places(target):
        pattern = _temp_pattern(name)
        try:
            entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            _remove_if_unlocked(Path(entry.path))


def _remove_if_unlocked(path: Path) -> None:
    """Remove ``path`` (a file or folder) if no live writer holds its lock.

    Best effort: it may be gone (another cleaner), not ours to remove
    (another user's, in a shared folder) or not a file or folder at all (a
    planted fifo or symlink, never opened); none of that stops this write.
    """
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its writer is alive
            return
        if not _same_file(fd, path):  # replaced since it was opened
            return
        if stat.S_ISDIR(mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st, now = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _create_locked(folder: Path, name: str, is_dir: bool) -> tuple[Path, int]:
    """A new temporary ``folder/.NAME.PID-RANDOM.tmp`` and an fd holding its lock.

    The lock is taken after the temporary exists, so a cleaner can take it
    first and remove the temporary: then it is made again under a new name.
    """
    for _ in range(100):
        path = folder / _temp_name(name)
        if is_dir:
            os.mkdir(path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _same_file(fd, path):
                return path, fd
        except BlockingIOError:  # a cleaner holds it and is removing it
            pass
        os.close(fd)
    raise OutputPathError(f"cannot make a temporary in {folder}: removed as fast as it is made")


def _make_parents(folder: Path, created: list[Path]) -> None:
    """Create ``folder`` and its missing ancestors, appending each to ``created`` (deepest
    first) as it is made, so a failure half-way leaves the list right for cleanup."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
        created.insert(0, f)


def _remove_empty(folders: list[Path]) -> None:
    for f in folders:
        try:
            f.rmdir()
        except OSError:  # not empty: another writer uses it
            return


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def _temporary(target: Path, is_dir: bool) -> Iterator[Path]:
    """A locked temporary for ``target`` (beside it, or inside an existing folder target),
    removed with any parent folders made for it unless the block commits it.

    It is created and removed with signals held (``interrupt.deferred``): a
    signal between making it and entering the ``try``, or a second Ctrl-C
    during its removal, would leave it. While it is open, ``interrupt``
    removes it before a forced exit (``cancellable()``'s ``os._exit``).
    """
    created: list[Path] = []
    tmp, fd = None, None
    try:
        try:
            _remove_stale(target)  # may be long (a big stale folder): not with signals held
            with interrupt.deferred():
                inside = is_dir and target.is_dir()
                if not inside:
                    _make_parents(target.parent, created)
                folder, name = (target, _INSIDE) if inside else (target.parent, target.name)
                tmp, fd = _create_locked(folder, name, is_dir)
                interrupt.track_temporary(tmp)
        except OSError as err:  # the place changed since prepare_output, or was never checked
            raise OutputPathError(f"cannot write {target}: {err.strerror or err}") from None
        try:
            yield tmp
        except OSError as err:
            if err.errno in _FULL_ERRNOS:
                raise OutputPathError(f"cannot write {target}: {err.strerror}") from None
            if not os.path.lexists(tmp):  # removed under us: another user, a manual rm
                raise OutputPathError(f"cannot write {target}: its temporary {tmp.name} was "
                                      f"removed by another process ({err.strerror})") from None
            raise
    finally:
        with interrupt.deferred():
            if tmp is not None:
                interrupt.untrack_temporary(tmp)
                if os.path.lexists(tmp):  # not committed (or the emptied folder of a commit)
                    _remove(tmp)
                    _remove_empty(created)
            else:
                _remove_empty(created)
            if fd is not None:
                os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_files(*paths: PathLike) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``paths`` to write; on success all are synced,
    then all renamed in the order given, in one stretch no signal cuts; on any
    exception or interruption all are removed (every path stays as it was).

    For files that vouch for each other (an engine and its manifest): synced
    first, renamed together, an interruption leaves the old set or the new.
    """
    targets = [_named(p) for p in paths]
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(_temporary(t, is_dir=False)) for t in targets]
        yield tmps
        for tmp in tmps:
            _fsync(tmp)
        with interrupt.deferred():  # the renames are the commit: they happen or not, whole
            for tmp, target in zip(tmps, targets):
                _commit(os.replace, tmp, target)


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is synced and renamed
    to ``path``, on any exception or interruption removed (``path`` stays as it was)."""
    with atomic_files(path) as (tmp,):
        yield tmp


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes ``path``.

    A new ``path`` is the folder renamed; an existing one gets each entry
    renamed into it, ``manifest.json`` last (a reader never sees a new
    manifest with an old file, and a new file with an old manifest fails its
    sha256); its other files stay. A subfolder replaces only a missing or
    empty one there. On any exception or interruption the temporary is
    removed and ``path`` is as it was.
    """
    target = _named(path)
    with _temporary(target, is_dir=True) as tmp:
        yield tmp
        _commit(_commit_dir, tmp, target)


def _commit(rename, tmp: Path, target: Path) -> None:
    try:
        rename(tmp, target)
    except OSError as err:  # the target changed since prepare_output (a folder made there)
        raise OutputPathError(f"cannot write {target}: {err.strerror or err}") from None


def _commit_dir(tmp: Path, target: Path) -> None:
    if tmp.parent != target:  # beside a target that did not exist
        try:
            with interrupt.deferred():
                os.rename(tmp, target)
            return
        except OSError as err:  # a concurrent writer made it first: rename file by file
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    names = sorted((p.name for p in tmp.iterdir()), key=lambda n: (n == COMMIT_LAST, n))
    fd = os.open(target, os.O_RDONLY)
    try:
        # One writer's renames at a time (a lock on the folder itself): two concurrent
        # writes into one folder end with one writer's files and manifest, never a mix.
        # Taken before the renames' deferred(), polling: a blocking flock could not be
        # interrupted, and another process holding the lock would hang the command.
        _lock_polling(fd)
        with interrupt.deferred():
            for name in names:
                os.replace(tmp / name, target / name)
            if tmp.parent == target:
                tmp.rmdir()
    finally:
        os.close(fd)


def _lock_polling(fd: int) -> None:
    """``flock(fd, LOCK_EX)``, waiting in short steps that a signal can end."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pending = interrupt.requested()
            if pending is not None:  # inside a caller's deferred(): stop waiting
                raise interrupt.Interrupted(pending) from None
            time.sleep(_POLL_S)
