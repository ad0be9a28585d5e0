"""Write-behind log of served recommendations (``recommendation_requests``).

Why: committing one row per ``/api/recommend`` made the database, not the lookup, the cost
of a request. Here a request only appends its row to an in-memory buffer; a background
thread writes the buffer in batches (one ``COPY`` per batch on PostgreSQL, one multi-row
INSERT on SQLite: :meth:`Database.save_requests`). The promises of
API.md "Durability" are kept as follows:

* **Nothing acknowledged is dropped while the process lives.** A row leaves the buffer only
  after the batch holding it is committed; a failed batch goes back to the front of the
  buffer and is retried with back-off (the database being down never loses rows). The
  buffer is flushed synchronously at interpreter exit (``atexit``) and from uwsgi's own
  ``atexit`` hook (app/exit_hooks.py), which a worker runs when it stops gracefully (SIGTERM
  under uwsgi.ini, or a recycle; uwsgi skips the hooks of a worker stopped brutally while a
  request is in flight, hence the graceful SIGTERM there). Rows the database still would not
  take by then go to disk (:class:`RowSpill`) and the next process writes them.
* **Nothing acknowledged is lost to a hard kill during an outage either.** While the database
  refuses writes, the flusher also writes the rows not on disk yet to the spill, every
  ``spill_every`` (1 s) once the outage has lasted that long (:meth:`RequestLog._keep_on_disk`).
  They stay buffered as well (a score still finds its list here, and the backlog bound still
  counts them) and are written from memory when the database is back; their files are removed
  once every row in them is committed. A process killed meanwhile leaves them to the next
  one's replay (idempotent: ``save_requests`` skips stored ids, so a row replayed twice, or
  replayed and written from memory, is stored once). A hard kill (SIGKILL, harakiri, the OOM
  killer, SIGINT) loses at most the rows of the last flush interval, or during an outage those
  of its last second, plus, with a database that hangs rather than refuses, the rows served
  while one write attempt hangs (up to the statement deadline).
* **A score is never refused because its row is pending.** :meth:`RequestLog.get` sees
  pending and in-flight rows, and :meth:`RequestLog.persist` commits a pending row (and,
  for free, the rows queued before it) before the feedback row that references it.
  Rows pending in *another* worker are waited for by the score path (and the web UI's list
  page) with signed ids (:mod:`app.services.request_ids`).
* **Bounded memory.** With the database unreachable the buffer grows up to ``max_pending``
  rows; past that, new recommendations are refused (503) rather than acknowledged and lost.

The flusher thread is started lazily by the first append in each process, so the log works
whether uwsgi forks before (``lazy-apps``) or after loading the app; a forked child gets locks
of its own (:meth:`RequestLog._forked`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from app.durable import append_durably, file_lock, sync_directory, write_durably
from app.errors import Unavailable
from app.exit_hooks import close_at_exit, reset_after_fork
from app.monitoring.logs import LogEvery, describe_error
from app.recommender.bundle import process_tag, tagged_process_alive
from app.services.durable_files import write_or_set_aside
from app.storage.db import Database, DatabaseUnavailableError

log = logging.getLogger(__name__)


class RequestLog:
    """Buffer request rows in memory and write them to the database in batches, off the request path."""

    def __init__(
        self,
        db: Database,
        *,
        write: Callable[[list[dict[str, Any]]], None] | None = None,
        on_written: Callable[[list[dict[str, Any]]], None] | None = None,
        reject: Callable[[dict[str, Any], BaseException], None] | None = None,
        spill: RowSpill | None = None,
        name: str = "request log",
        flush_at_exit: bool = True,
        flush_interval: float = 0.1,
        batch_size: int = 500,
        max_pending: int = 50_000,
        max_backoff: float = 5.0,
        spill_every: float = 1.0,
    ) -> None:
        self.db = db
        # What a batch is written with (one transaction), and told once it is: request rows by
        # default; the feedback journal ships its scores through a log of its own
        # (app/services/feedback_journal.py).
        self._write = write or db.save_requests
        self._on_written = on_written
        # A row the database refuses for good (a value too long, a constraint) is handed to
        # ``reject`` instead of going back to the queue, where every later batch, holding it,
        # failed too and nothing behind it was written any more.
        self._reject = reject or (spill.reject if spill is not None else None)
        # Where rows still unwritten at exit go (the database unreachable): on disk, replayed later;
        # and, during an outage, every ``spill_every`` the rows not there yet (a hard kill's insurance).
        self.spill = spill
        self.spill_every = spill_every
        self._on_disk: list[tuple[Path, list[str]]] = []  # files written during an outage: their ids
        self._on_disk_ids: set[str] = set()  # buffered rows already in one of them
        self._keep_next: float | None = None  # monotonic: when the outage's next rows go to disk
        self.name = name
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.max_backoff = max_backoff
        self._pending: dict[str, dict[str, Any]] = {}  # insertion-ordered: oldest first
        self._inflight: dict[str, dict[str, Any]] = {}  # taken by a writer, not yet committed
        self._new_locks()
        self._thread: threading.Thread | None = None
        self._owner_pid: int | None = None
        self._closed = False
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        self._errors_logged = LogEvery(30.0)  # an outage is one line every 30 s, not one per retry
        self._kept_logged = LogEvery(30.0)  # rows kept on disk during an outage, and failing to be
        self._keep_failed = LogEvery(30.0)
        # ended processes' rows waiting for the database: tried every spill interval (30 s) by
        # each worker's flusher, logged when the wait starts and then every 5 minutes, not each time
        self._replay_failed = LogEvery(300.0)
        reset_after_fork(self._forked)
        if flush_at_exit:  # else its owner closes it (the feedback journal: one final flush, not two)
            close_at_exit(self)

    # ------------------------------------------------------------------ request path

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Queue rows (each with a unique ``id``); returns at once. 503 when the backlog is full.

        Request rows carry the time they were served (``created_at``, set by their builder,
        :meth:`RecommendationService.log_row`); the log adds nothing to a row.
        """
        with self._lock:
            batch = list(rows)
            if len(self._pending) + len(self._inflight) + len(batch) > self.max_pending:
                raise Unavailable(
                    f"the {self.name} cannot keep up (database unreachable?); try again shortly",
                    headers={"Retry-After": "5"},
                )
            was_empty = not self._pending
            for row in batch:
                self._pending[row["id"]] = row
            self._ensure_thread()
            # Wake the flusher only when it has to act: the first row starts its wait, a full
            # batch ends it. Waking it on every append cost a thread switch per request.
            if was_empty or len(self._pending) >= self.batch_size:
                self._wake.notify()

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The row for ``request_id`` while it is still buffered here (pending or being written)."""
        with self._lock:
            return self._pending.get(request_id) or self._inflight.get(request_id)

    def persist(self, request_id: str) -> bool:
        """Commit ``request_id``'s row now if it is buffered here; False when it is not held here.

        The rows queued before it are committed with it, in batches of ``batch_size`` (see
        :meth:`flush`). Raises :class:`DatabaseUnavailableError` when the database cannot take it (the row
        stays buffered and will be retried).
        """
        if self.get(request_id) is None:
            return False
        with self._write_lock:  # waits for a batch in flight, which may already hold this row
            while True:
                with self._lock:
                    if request_id not in self._pending and request_id not in self._inflight:
                        return True
                self._write_batch_locked(self.batch_size)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._inflight)

    def flush(self, timeout: float | None = None, deadline: float | None = None) -> int:
        """Write everything buffered now, in the caller's thread; returns rows written, raises on failure.

        ``timeout``: the longest to wait for a batch another thread is writing (the flusher's, held
        by a database that hangs until its statement deadline) before raising
        :class:`DatabaseUnavailableError`; None waits for it. ``deadline`` (monotonic): when
        the writes must be over, each bounded by what is left (:meth:`Database.statement_limit`);
        the rows not written by then stay buffered and :class:`DatabaseUnavailableError` is raised.

        In batches of ``batch_size``, as the flusher writes: a row refused for good is then looked
        for in its batch alone. One batch of the whole backlog (after an outage, tens of
        thousands of rows) was written row by row, each in a statement of its own, for the one
        row: minutes, past the 10 s a stopping worker has for its final flush.
        """
        if not self._write_lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise DatabaseUnavailableError(f"{self.name}: a write in progress did not end in time")
        total = 0
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        return total
                if deadline is None:
                    total += self._write_batch_locked(self.batch_size)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnavailableError(f"{self.name}: no time was left to write the rest")
                with self.db.statement_limit(left):
                    total += self._write_batch_locked(self.batch_size)
        finally:
            self._write_lock.release()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the flusher and flush what is left (retrying until ``timeout``, then spilling it).

        ``timeout`` bounds the whole close (waiting for the flusher, then the final flush), not
        each step: the exit hooks give it what is left of their budget (app/exit_hooks.py), and
        with none left the rows are spilled without trying the database (an attempt may take
        ``connect_timeout``). A second call with nothing left returns at once: the exit hooks
        may call it twice (uwsgi's and Python's), and each waited ``timeout`` with the database
        down.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closed and not self._pending and not self._inflight:
                return
            self._closed = True
            self._wake.notify_all()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        self._final_flush(deadline)

    def stats(self) -> dict[str, Any]:
        """For /api/model and monitoring."""
        return {
            "pending": self.pending(),
            "written": self.written,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ writing

    def _write_batch_locked(self, limit: int) -> int:
        """Take up to ``limit`` pending rows, commit them, release them. Caller holds ``_write_lock``."""
        with self._lock:
            if not self._pending:
                return 0
            ids = list(itertools.islice(self._pending, limit))
            batch = {request_id: self._pending.pop(request_id) for request_id in ids}
            self._inflight.update(batch)
        try:
            if self._reject is None:
                self._write(list(batch.values()))
            else:
                write_or_set_aside(self._write, list(batch.values()), self._reject)
        except BaseException as exc:
            # whatever failed, the rows go back: left in flight, no flusher would ever see them
            with self._lock:
                for request_id in ids:
                    self._inflight.pop(request_id, None)
                # back to the front, oldest first, ahead of rows queued meanwhile
                self._pending = {**batch, **self._pending}
                self.failures += 1
                self.last_error = describe_error(exc, 300)
                # and the flusher told: when this writer was a score's persist() or a flush(),
                # the flusher may have found the queue empty meanwhile (the rows were in flight)
                # and gone to sleep, and appends wake it only on an empty queue or a full batch
                self._wake.notify()
            if isinstance(exc, (DatabaseUnavailableError, SQLAlchemyError, OSError)):
                raise DatabaseUnavailableError(str(exc)) from exc
            raise
        with self._lock:
            for request_id in ids:
                self._inflight.pop(request_id, None)
            self.written += len(ids)
            self.last_error = None
        if self._on_written is not None:
            self._on_written(list(batch.values()))
        return len(ids)

    def _ensure_thread(self) -> None:
        """Start the flusher in this process (called with ``_lock`` held)."""
        pid = os.getpid()
        if self._thread is not None and self._owner_pid == pid and self._thread.is_alive():
            return
        self._owner_pid = pid
        self._thread = threading.Thread(
            target=self._run, name="movierec-" + self.name.replace(" ", "-"), daemon=True
        )
        self._thread.start()

    def _new_locks(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._write_lock = threading.Lock()  # one batch write at a time, in order

    def _forked(self) -> None:
        """In a forked child: locks of its own, and the rows it inherited queued again.

        A lock another thread of the parent held at the fork stays held in the child for ever (that
        thread is not copied): a child that forked while the flusher was between two waits hung in
        its first ``append``. Rows the parent had in flight are queued again, written by the child
        too (writes are idempotent); the flusher is started again by the child's first append.
        """
        self._new_locks()
        self._pending = {**self._inflight, **self._pending}
        self._inflight = {}
        self._thread = None
        # the parent's outage files are the parent's to remove; the child keeps its copies anew
        self._on_disk, self._on_disk_ids, self._keep_next = [], set(), None

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._lock:
                if not self._pending and not self._closed:
                    # idle until a row comes; with a spill, waking at its interval for the files
                    # ended processes left (written with no traffic of this process's own)
                    if self.spill is None:
                        self._wake.wait()
                    else:
                        self._wake.wait(self.spill.interval)
                if self._closed:
                    return
                rows_waiting = bool(self._pending)
                if rows_waiting:
                    # gather a batch: the first row waits at most flush_interval (appends wake this
                    # wait, so it loops to its deadline unless a full batch is ready)
                    deadline = time.monotonic() + self.flush_interval
                    while len(self._pending) < self.batch_size and not self._closed:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._wake.wait(remaining)
                    if self._closed:
                        return
            if not rows_waiting:
                self._tend_spill()
                continue
            try:
                with self._write_lock:
                    self._write_batch_locked(limit=self.batch_size)
                backoff = 0.0
                self._keep_next = None  # the outage, if there was one, is over
                self._tend_spill()
            except DatabaseUnavailableError as exc:
                backoff = min(self.max_backoff, max(0.05, backoff * 2))
                if self._errors_logged.due() is not None:
                    log.error(
                        "%s: database write failed; rows kept and retried",
                        self.name,
                        extra={"pending": self.pending(), "reason": describe_error(exc)},
                    )
                self._back_off(backoff)
            except Exception:
                log.exception("%s: unexpected error while writing; rows kept and retried", self.name)
                self._back_off(0.5, wakeable=False)  # not once per append: each would log again

    def _back_off(self, seconds: float, wakeable: bool = True) -> None:
        """Wait ``seconds`` before the next write, or (``wakeable``) until woken: rows put back, a
        full batch; a close ends it. Meanwhile the rows not on disk yet go there every ``spill_every``."""
        retry_at = time.monotonic() + seconds
        if self.spill is not None and self._keep_next is None:  # the outage begins
            self._keep_next = time.monotonic() + self.spill_every
        while True:
            self._keep_on_disk()
            with self._lock:
                left = retry_at - time.monotonic()
                if self._closed or left <= 0:
                    return
                if self._keep_next is not None:
                    left = min(left, max(0.01, self._keep_next - time.monotonic()))
                if self._wake.wait(left) and wakeable:
                    return

    def _keep_on_disk(self) -> None:
        """During an outage, the buffered rows not on disk yet go to the spill (flusher thread only).

        At most every ``spill_every``, the first time once the outage has lasted that long (a
        failed batch retried at once writes nothing). The rows stay buffered: they are written
        from memory when the database is back, and the file is removed then
        (:meth:`_tend_spill`); a process killed meanwhile leaves it to the next one's replay.
        """
        if self.spill is None or self._keep_next is None or time.monotonic() < self._keep_next:
            return
        self._keep_next = time.monotonic() + self.spill_every
        with self._lock:
            if self._closed:  # the exit's own spill takes them
                return
            buffered = [*self._inflight.values(), *self._pending.values()]  # a copy, filtered unlocked
        rows = [row for row in buffered if row["id"] not in self._on_disk_ids]
        if not rows:
            return
        try:
            path = self.spill.save(rows)
        except OSError as exc:  # a full disk: tried again every spill_every, logged every 30 s
            self._keep_failed.log(
                log,
                logging.ERROR,
                f"{self.name}: rows the database would not take could not be kept on disk as well",
                rows=len(rows),
                reason=describe_error(exc),
            )
            return
        ids = [row["id"] for row in rows]
        self._on_disk.append((path, ids))
        self._on_disk_ids.update(ids)
        if self._kept_logged.due() is not None:
            log.warning(
                "%s: rows the database would not take are kept on disk until it does",
                self.name,
                extra={"rows": len(self._on_disk_ids), "file": str(path)},
            )

    def _tend_spill(self) -> None:
        """After a write, or idle: remove the outage's files whose rows are all committed now, and
        write the files ended processes left (at most once per the spill's ``interval``)."""
        if self.spill is None:
            return
        self._forget_written()
        if self.spill.due():
            self._replay_logged()

    def _forget_written(self, closing: bool = False) -> None:
        """Remove the outage's files none of whose rows is buffered any more: all committed (or
        set aside as refused). Once the log is closed only its closing thread (``closing``) may:
        rows leave the buffer then for the exit's spill, not only when committed."""
        if not self._on_disk:
            return
        done: list[tuple[Path, list[str]]] = []
        kept: list[tuple[Path, list[str]]] = []
        with self._lock:
            if self._closed and not closing:
                return
            for entry in self._on_disk:  # one pass (a list of the removed ones, searched for each
                # file, took 3.6 s for an outage's 8,000 files in the flusher thread)
                buffered = any(i in self._pending or i in self._inflight for i in entry[1])
                (kept if buffered else done).append(entry)
        for path, ids in done:
            path.unlink(missing_ok=True)  # a crash before this replays committed rows: harmless
            self._on_disk_ids.difference_update(ids)
        self._on_disk = kept

    def _final_flush(self, deadline: float) -> None:
        """Flush, retrying until ``deadline`` (monotonic); then what is left goes to the spill."""
        delay = 0.05
        reason = "no time was left before exit to write them"
        while self.pending() and time.monotonic() < deadline:
            try:
                written = self.flush(timeout=deadline - time.monotonic(), deadline=deadline)
                if written:
                    log.info("%s flushed at shutdown", self.name, extra={"rows": written})
                self._forget_written(closing=True)  # not replayed again by the next process
                return
            except DatabaseUnavailableError as exc:
                reason = str(exc)
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
                delay = min(1.0, delay * 2)
        if self.pending():
            self._spill_pending(reason)

    def _spill_pending(self, reason: str) -> None:
        """At exit, rows the database would not take go to the spill: replayed by the next process.

        Rows a write still holds are spilled too: a write that did not end by now (a database
        that hangs) may never end before the process does. If it does commit them after all,
        the replay skips the ids already stored. Rows already on disk (kept there during the
        outage, :meth:`_keep_on_disk`) are not written again: their files stay for the replay.
        """
        with self._lock:
            rows = [*self._inflight.values(), *self._pending.values()]
        if self.spill is not None and rows:
            new = [row for row in rows if row["id"] not in self._on_disk_ids]
            try:
                path = self.spill.save(new) if new else None
            except OSError as exc:
                reason = f"{reason}; and they could not be kept on disk: {exc}"
            else:
                with self._lock:
                    for row in rows:
                        self._pending.pop(row["id"], None)
                # counted, not named: an outage leaves a file a second, and a line of their names
                # grew with it (~160 KB an hour; past the 1 MiB monitor-docker.py rebuilds whole)
                files = len(self._on_disk) + (path is not None)
                self._on_disk, self._on_disk_ids = [], set()  # the next process's to replay now
                log.error(
                    "%s: rows the database would not take before exit are kept on disk until it does",
                    self.name,
                    extra={
                        "rows": len(rows),
                        "directory": str(self.spill.directory),
                        "files": files,
                        "reason": describe_error(reason),
                    },
                )
                return
        log.error(
            "%s: rows could not be written before exit",
            self.name,
            extra={"pending": self.pending(), "reason": describe_error(reason)},
        )

    def replay_spilled(self) -> int:
        """Write the rows other processes spilled; rows written (0 without a spill).

        The files this process keeps during an outage are skipped: their rows are still buffered
        here. Raises what the database raised when it cannot take them: the files stay for a
        later try.
        """
        if self.spill is None:
            return 0
        return self.spill.replay(self._write, self.batch_size, skip={entry[0] for entry in self._on_disk})

    def recover_spilled(self) -> int:
        """At start: :meth:`replay_spilled`; when the database cannot take them now, the flusher is
        started to try again every ``spill.interval``, this process serving or not. Rows written."""
        written = self._replay_logged()
        if written is not None:
            return written
        with self._lock:
            self._ensure_thread()
        return 0

    def _replay_logged(self) -> int | None:
        """:meth:`replay_spilled`: rows written; None when the database could not take them,
        logged at the first failure, then at most every 5 minutes while they wait.

        Only ended processes' files are tried (:meth:`RowSpill.replay`); until 2026-12-06 a live
        worker's outage files were too, and every idle worker logged this ERROR every 30 s of an
        outage, for rows their own worker held and wrote."""
        try:
            return self.replay_spilled()
        except Exception as exc:  # noqa: BLE001 - kept on disk, tried again later
            self._replay_failed.log(
                log,
                logging.ERROR,
                f"{self.name}: rows an ended process kept on disk wait for the database",
                directory=str(self.spill.directory) if self.spill is not None else None,
                reason=describe_error(exc),
            )
            return None


class RowSpill:
    """Request rows that could not reach the database (before their process ended, or for now), on disk.

    Files ``requests-<pid>-<tag>-<ns>.jsonl`` in the feedback journal's directory (local storage
    that outlives the process, one directory per database), each written whole and synced
    (:func:`write_durably`); ``tag`` is the writer's :func:`process_tag` (its start time), which
    tells it from a later process given its pid (a restarted container's). :meth:`replay` writes
    them to the database (idempotent: stored ids are skipped) and deletes them; the app runs it
    at start, and each process's flusher again at most every ``interval``, whether it is writing
    rows or idle. A process also keeps its buffered rows here during an outage
    (:meth:`RequestLog._keep_on_disk`): the same files, the same replay, skipped by their own
    process (which still holds the rows and removes the file once they are written) and, while it
    lives, by every other (:meth:`written_by_another_live_process`). A row the database refuses
    for good is appended to ``rejected-requests.jsonl`` and logged, never dropped silently.
    """

    PREFIX = "requests-"
    NAME = re.compile(r"requests-(?P<pid>\d+)-(?P<tag>[0-9a-f]{12}|untagged)-\d+\.jsonl")
    """A file's name since 2026-12-06; the ``requests-<pid>-<ns>.jsonl`` of earlier releases,
    with no start time to tell their writer, are anyone's to replay, as they were then."""
    REJECTED = "rejected-requests.jsonl"
    REJECTED_LOCK = "rejected-requests.lock"

    def __init__(self, directory: Path, interval: float = 30.0) -> None:
        self.directory = directory
        self.interval = interval
        self.rejected = 0
        self._next = 0.0
        self._replaying = threading.Lock()

    def save(self, rows: list[dict[str, Any]]) -> Path:
        pid = os.getpid()
        path = self.directory / f"{self.PREFIX}{pid}-{process_tag(pid) or 'untagged'}-{time.time_ns()}.jsonl"
        write_durably(path, b"".join(orjson.dumps(row) + b"\n" for row in rows))
        return path

    def due(self) -> bool:
        """True at most once per ``interval``, and only when a spilled file is waiting."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return any(self.directory.glob(f"{self.PREFIX}*.jsonl"))

    def replay(
        self,
        write: Callable[[list[dict[str, Any]]], None],
        batch_size: int,
        skip: Collection[Path] = (),
    ) -> int:
        """Write every spilled file's rows (but ``skip``'s, and those another live process keeps),
        ``batch_size`` at a time, then delete it; rows written.

        The files of a live process are its own to remove: it holds their rows in memory and
        writes them from there (until 2026-12-06 every other worker replayed them too, one write
        and one directory fsync a file, holding up its own flusher after an outage). Those of an
        ended process (stopped, or killed hard) are written by whoever replays first.

        Raises what the database raised when it cannot take them: the file stays.
        """
        if not self.directory.is_dir() or not self._replaying.acquire(blocking=False):
            return 0
        total = files = 0
        alive: dict[tuple[int, str | None], bool] = {}  # one look at each writer a replay
        try:
            for path in sorted(self.directory.glob(f"{self.PREFIX}*.jsonl")):
                if path in skip or self.written_by_another_live_process(path.name, alive):
                    continue
                try:
                    rows = [_row(line) for line in path.read_bytes().splitlines() if line]
                except FileNotFoundError:  # another process replayed it meanwhile
                    continue
                except (OSError, ValueError):  # unreadable: set aside and kept, the others still written
                    log.exception(
                        "request log: a file of rows kept on disk cannot be read; renamed *.unreadable"
                    )
                    with contextlib.suppress(OSError):
                        path.rename(path.with_suffix(".unreadable"))
                    continue
                for start in range(0, len(rows), batch_size):
                    write_or_set_aside(write, rows[start : start + batch_size], self.reject)
                path.unlink(missing_ok=True)
                sync_directory(self.directory)
                total += len(rows)
                files += 1
        finally:
            self._replaying.release()
            if files:  # one line a replay: an outage leaves a file per worker-second, not one per exit
                log.warning(
                    "request log: wrote the rows other processes had kept on disk",
                    extra={"files": files, "rows": total},
                )
        return total

    @classmethod
    def written_by_another_live_process(
        cls, name: str, seen: dict[tuple[int, str | None], bool] | None = None
    ) -> bool:
        """Whether the file ``name`` was written by a process of this host that still runs, not
        this one: :func:`tagged_process_alive`, its pid and start time (a later process given its pid is not
        it). A name of an earlier release says nothing of its writer: False. ``seen`` caches the
        answer per writer."""
        match = cls.NAME.fullmatch(name)
        if match is None:
            return False
        pid, tag = int(match["pid"]), None if match["tag"] == "untagged" else match["tag"]
        if pid == os.getpid():
            return False
        seen = {} if seen is None else seen
        if (pid, tag) not in seen:
            seen[pid, tag] = tagged_process_alive(pid, tag)
        return seen[pid, tag]

    def reject(self, row: dict[str, Any], exc: BaseException) -> None:
        """Append ``row`` to ``rejected-requests.jsonl``, under a lock that every worker's flusher
        takes: an append that fails part-way takes its bytes back (:func:`append_durably`), which
        must not cut another worker's line appended meanwhile."""
        line = orjson.dumps({**row, "error": describe_error(exc, 500)}) + b"\n"
        with file_lock(self.directory / self.REJECTED_LOCK, mode=0o600):
            append_durably(self.directory / self.REJECTED, line)
        self.rejected += 1
        log.error(
            "request log: the database refused a row; it is kept in %s",
            self.REJECTED,
            extra={"request_id": row.get("id"), "reason": describe_error(exc)},
        )


def _row(line: bytes) -> dict[str, Any]:
    """A spilled row: its served time as the request thread read it (seconds since the epoch).

    Files spilled before 2026-12-06 hold it as ISO text (the time the row was queued), made
    seconds again here; a row without one is written at the replay time (save_requests).
    """
    row: dict[str, Any] = orjson.loads(line)
    if isinstance(row.get("created_at"), str):
        row["created_at"] = datetime.fromisoformat(row["created_at"]).timestamp()
    return row
