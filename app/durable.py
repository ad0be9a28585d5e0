"""Writes a crash keeps: files synced before they are renamed into place, and the directory that
holds a new name synced after; and the ``flock`` that serialises the processes sharing such files.

The generic helpers, below every layer that needs them, and imported from here by each: the
service's write-behind files (app/services: the feedback journal, the request log's spill, the
reload marker), the features store's snapshots, ``LATEST`` and
publishing lock (app/pipeline/features_store.py), the scheduler's last tick
(app/pipeline/schedule.py), SQLite's migration lock (app/storage/db.py), the log monitor's cursor
(app/monitoring/monitor.py) and the model store's bundles and ``latest``
(app/recommender/bundle.py, app/registry/export.py), which never import app/services. The
standard library only: the log monitor runs on the Docker host without the service's dependencies.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def sync_directory(directory: Path) -> None:
    """Make a file's creation or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(directory: Path) -> None:
    """Sync every file of ``directory``'s tree, then its directories, deepest first and
    ``directory`` itself last: renamed into place afterwards, it is whole after a crash.

    Symlinks are not followed. One open and one ``fsync`` per entry (a bundle is tens of files);
    a file already on disk costs next to nothing.
    """
    for root, _dirs, files in os.walk(directory, topdown=False, onerror=_raise):
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_directory(Path(root))


def _raise(error: OSError) -> None:
    """os.walk's ``onerror``: a tree that cannot be read whole cannot be synced whole."""
    raise error


def write_synced(path: Path, data: bytes, flags: int = os.O_TRUNC, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` (opened with ``flags``; created with ``mode`` less the umask)
    and sync it before returning; its name is not synced (:func:`sync_directory`).

    An append (``os.O_APPEND``) that fails part-way takes back the bytes it wrote (:func:`append_durably`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, mode)
    written = 0
    try:
        view = memoryview(data)
        while view:
            count = os.write(fd, view)
            written += count
            view = view[count:]
        os.fsync(fd)
    except BaseException:
        if flags & os.O_APPEND and written:
            _take_back(fd, written)
        raise
    finally:
        os.close(fd)


def _take_back(fd: int, written: int) -> None:
    """Cut the file of ``fd`` back to where a failed append of ``written`` bytes began, if the file
    still ends where that append ended (nothing was appended after it). Best effort: the append's
    failure is what its caller is told."""
    with suppress(OSError):
        end = os.lseek(fd, 0, os.SEEK_CUR)  # an O_APPEND write leaves the offset at its end
        if os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - written)


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created 0600 if missing) and sync it before returning.

    One that fails part-way (a full disk, a file-size limit) takes back what it wrote, so the file
    keeps whole lines: the part left ended the file, and the next append, once there was room, made
    of it and its own line one line that was no JSON (a score set aside in the feedback journal's
    rejected.jsonl that ``replay-rejected`` could not read back). Appenders to one file serialise
    (the journal's ``rejected.lock``): an append made between a failure and its taking back would
    stop it.
    """
    write_synced(path, data, os.O_APPEND)


def write_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole: readers see all of ``data`` under that name or no file at all.

    A new file gets ``mode`` (less the umask): 0600, as acknowledged data is no one else's, unless
    the caller's files are meant to be shared (the features store's snapshots).

    A write that fails (a full disk, a file-size limit) removes what it wrote: the request log's
    spill names each file anew, and the ``.partial`` files of its failed attempts (one a second
    during an outage) stayed, holding the disk full after the outage had ended.
    """
    partial = path.with_name(f".{path.name}.partial")
    try:
        write_synced(partial, data, os.O_TRUNC, mode)
        os.replace(partial, path)
    except BaseException:
        with suppress(OSError):
            partial.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


@contextmanager
def written_beside(path: Path) -> Iterator[Path]:
    """A name beside ``path`` (``.<name>.partial``) for the block to write ``path``'s content to;
    renamed to ``path`` when the block ends, removed when it fails or is interrupted: ``path`` is
    the earlier file or the whole new one, never one cut short. Not synced (:func:`write_durably`):
    for files a reader must not take half of, which a crash may lose (reports, summaries).

    A symlink is written through: the rename is made at its target. A file that is no regular
    file (``/dev/null``, a FIFO) is written to as it is: renamed over, it was replaced by a
    regular file (``/dev/null`` too, as root)."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        yield target
        return
    partial = target.with_name(f".{target.name}.partial")
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing), waiting for any holder."""
    with file_lock(path):
        yield


@contextmanager
def file_lock(
    path: Path, *, shared: bool = False, timeout: float | None = None, mode: int = 0o666
) -> Iterator[bool]:
    """Hold an ``flock`` on ``path`` (created if missing, with ``mode`` before the umask):
    exclusive, or ``shared`` with other shared holders. Waits for the holders, for at most
    ``timeout`` seconds when given; yields whether it was taken (False: not held).

    The kernel releases it when the holder dies, so it never goes stale. It is per open file,
    so it also serialises threads of one process that each take it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, operation | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        yield True
    finally:
        os.close(fd)  # and with it the lock
