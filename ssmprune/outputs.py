"""Output paths: checked before any work starts, then written whole or not at all.

Every command that writes calls ``prepare_output`` on each output first, so a
bad path is one line before minutes of work, not a traceback after them. The
writes go through ``atomic_file`` / ``atomic_dir``: a temporary beside the
target, renamed into place on success, removed on any exception, SIGINT or
SIGTERM included (``ssmprune.interrupt``).

Temporaries are named ``.NAME.PID-RANDOM.tmp`` beside the target ``NAME``:
the writer's process id lets the next write to the same place remove those of
a dead writer (one killed by SIGKILL or a power cut) and never those of a
live one, so two concurrent writers into one folder do not disturb each other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
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


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Remove the temporaries of dead writers of ``target`` (see the module docstring)."""
    pattern = re.compile(re.escape(f".{target.name}.") + r"(\d+)-[0-9a-f]{8}\.tmp")
    try:
        entries = list(os.scandir(target.parent if str(target.parent) else "."))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or _writer_alive(int(match.group(1))):
            continue
        # Best effort: another writer may have removed it first, or it may not be ours to
        # remove (another user's, in a shared folder); neither stops this write.
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors; returns those created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for f in folders:
        try:
            f.rmdir()
        except OSError:  # not empty: another writer uses it
            return


@contextmanager
def _cleaned_on_failure(target: Path, make_temp) -> Iterator[Path]:
    """A temporary beside ``target`` (``make_temp(path)`` creates it), removed with any
    parent folders made for it unless the block commits it (``Interrupted`` included)."""
    try:
        created = _make_parents(target.parent)
        _remove_stale(target)
        tmp = _temp_path(target)
        make_temp(tmp)
    except OSError as err:  # the place changed since prepare_output, or was never checked
        raise OutputPathError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        yield tmp
    except OSError as err:
        if err.errno in _FULL_ERRNOS:
            raise OutputPathError(f"cannot write {target}: {err.strerror}") from None
        raise
    finally:
        if os.path.lexists(tmp):  # not committed (or the emptied folder of a commit)
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            _remove_empty(created)


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it is synced and renamed
    to ``path``, on any exception or interruption removed (``path`` stays as it was)."""
    target = _named(path)
    with _cleaned_on_failure(target, lambda p: p.touch(exist_ok=False)) as tmp:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        with interrupt.deferred():  # the rename is the commit: it happens or not, whole
            _commit(os.replace, tmp, target)


@contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; on success it becomes ``path``.

    A new ``path`` is the folder renamed; an existing one gets each entry
    renamed into it, ``manifest.json`` last (a reader never sees a new
    manifest with an old file, and a new file with an old manifest fails its
    sha256); its other files stay. A subfolder replaces only a missing or
    empty one there. On any exception or interruption the temporary is
    removed and ``path`` is as it was.
    """
    target = _named(path)
    with _cleaned_on_failure(target, lambda p: p.mkdir()) as tmp:
        yield tmp
        with interrupt.deferred():
            _commit(_commit_dir, tmp, target)


def _commit(rename, tmp: Path, target: Path) -> None:
    try:
        rename(tmp, target)
    except OSError as err:  # the target changed since prepare_output (a folder made there)
        raise OutputPathError(f"cannot write {target}: {err.strerror or err}") from None


def _commit_dir(tmp: Path, target: Path) -> None:
    if not target.exists():
        try:
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
        fcntl.flock(fd, fcntl.LOCK_EX)
        for name in names:
            os.replace(tmp / name, target / name)
    finally:
        os.close(fd)
