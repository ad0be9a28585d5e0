"""Files that hold acknowledged data until the database has it: written so a crash keeps them.

Shared by the feedback journal (app/services/feedback_journal.py), the request log's spill
(app/services/request_log.py), the features store's snapshots and ``LATEST``
(app/pipeline/features_store.py) and the log monitor's cursor file (app/monitoring/monitor.py).
What a write-behind log may not lose goes through here: synced before the caller moves on, and a
new file's name made durable with its directory. :func:`exclusive_lock` serialises the processes
that share such files (the features store's publishing, SQLite's migrations); :func:`file_lock`
is the same ``flock`` shared or with a time limit (the Prometheus directory's, app/monitoring/metrics.py).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The standard library only at import: the log monitor (app/monitoring/monitor.py) saves its
# cursor through here, and runs on the Docker host without the service's dependencies.


def _refused() -> tuple[type[BaseException], ...]:
    """What the database says of a row that no retry will change (a constraint, a bad value)."""
    from sqlalchemy.exc import DataError, IntegrityError

    return (IntegrityError, DataError)


def write_or_set_aside(
    write: Callable[[list[Any]], None], rows: Sequence[Any], reject: Callable[[Any, BaseException], None]
) -> None:
    """``write(rows)``; when the database refuses the batch for good, each row alone, and a row it
    still refuses goes to ``reject(row, error)``: one bad row does not hold back the rest for ever.

    Anything else (unreachable, read-only, a missing grant) propagates, and the caller retries the
    whole batch: the writes are idempotent.
    """
    refused = _refused()
    try:
        write(list(rows))
        return
    except refused as exc:
        if len(rows) == 1:
            reject(rows[0], exc)
            return
    for row in rows:  # find the culprits
        try:
            write([row])
        except refused as exc:
            reject(row, exc)


def sync_directory(directory: Path) -> None:
    """Make a file's creation or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes, flags: int, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` (created 0600 if missing) and sync it before returning."""
    _write_synced(path, data, os.O_APPEND)


def write_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole: readers see all of ``data`` under that name or no file at all.

    A new file gets ``mode`` (less the umask): 0600, as acknowledged data is no one else's, unless
    the caller's files are meant to be shared (the features store's snapshots).
    """
    partial = path.with_name(f".{path.name}.partial")
    _write_synced(partial, data, os.O_TRUNC, mode)
    os.replace(partial, path)
    sync_directory(path.parent)


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
