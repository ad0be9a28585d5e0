"""Files that hold acknowledged data until the database has it: written so a crash keeps them.

Shared by the feedback journal (app/services/feedback_journal.py), the request log's spill
(app/services/request_log.py) and the log monitor's cursor file (app/monitoring/monitor.py).
What a write-behind log may not lose goes through app/durable.py's helpers (synced before the
caller moves on, a new file's name made durable with its directory, the locks that serialise the
processes sharing such files), imported from there by every caller. What is the service's own is
here: :func:`write_or_set_aside`, a batch the database refuses row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["write_or_set_aside"]


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
