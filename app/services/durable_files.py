"""Files that hold acknowledged data until the database has it: written so a crash keeps them.

Shared by the feedback journal (app/services/feedback_journal.py), the request log's spill
(app/services/request_log.py), the features store's snapshots and ``LATEST``
(app/pipeline/features_store.py) and the log monitor's cursor file (app/monitoring/monitor.py).
What a write-behind log may not lose goes through here: synced before the caller moves on, and a
new file's name made durable with its directory (app/durable.py's helpers, re-exported here).
:func:`exclusive_lock` serialises the processes that share such files (the features store's
publishing, SQLite's migrations); :func:`file_lock` is the same ``flock`` shared or with a time
limit (the Prometheus directory's, app/monitoring/metrics.py).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The standard library (and app/durable.py, which is too) only at import: the log monitor
# (app/monitoring/monitor.py) saves its cursor through here, and runs on the Docker host without
# the service's dependencies.
from app.durable import append_durably, sync_directory, write_durably

__all__ = [
    "append_durably",
    "exclusive_lock",
    "file_lock",
    "sync_directory",
    "write_durably",
    "write_or_set_aside",
]


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
