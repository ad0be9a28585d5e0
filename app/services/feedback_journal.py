"""The feedback journal: where a score becomes durable before its 200, and how it reaches the database.

A 200 from ``/api/recommend/score`` means the score is on stable storage (API.md "Durability"
as this service implements it, docs/serving.md): written to this journal, a local write-ahead
log, and ``fdatasync``'ed. A write-behind log then copies the journal into the ``feedback``
table in batches, ~0.1 s behind while the database is up; the journal keeps each score until
the batch holding it is committed. Before, each score waited for its own PostgreSQL commit:
on two cores that share the database, a score cost twice an authenticated no-op, half of it
waiting for the commit and half the database's own work per transaction (docs/performance.md).

**Segments.** The journal directory holds files named ``<pid>-<nanoseconds>.wal``:

* a segment is ``segment_bytes`` of zeros, written and synced when it is created, so appending
  overwrites allocated blocks and ``fdatasync`` flushes the data alone (an append that grows a
  file commits its new size too: 223 against 582 µs per sync on the eleventh machine);
* a record is its payload's length (4 bytes), the payload's CRC-32 (4 bytes) and the payload
  (one JSON object). A zero length ends the records; so does a record whose checksum fails: a
  crash tore it before its sync returned, so it was never acknowledged;
* each process writes segments of its own and holds an exclusive ``flock`` on each until it
  has shipped it; concurrent scores of a process share one write and one sync (group commit,
  :mod:`app.services.group_commit`).

**Shipping.** Acknowledged records queue in a :class:`~app.services.request_log.RequestLog`
with this journal's write; a segment is deleted once the process has moved on to the next one
and every record in it is committed, or at a graceful exit when every record is.

**Recovery.** A segment nobody holds a lock on was left by a process that ended before
shipping it (killed, or the database was down when it stopped). :meth:`FeedbackJournal.recover`
replays such segments into the database and deletes them; it runs when the app starts (in each
uwsgi worker: ``lazy-apps``: :meth:`FeedbackJournal.recover_at_start`, which tries again every
``recover_interval`` until it succeeds) and every ``recover_interval`` in each process that writes
scores.
Replaying is idempotent: :meth:`Database.save_feedbacks` keeps, per (request, movie), the score
acknowledged last.

A record the database refuses for good (not for being unreachable) is appended to
``rejected.jsonl`` beside the segments and logged as an error: never dropped silently. Once the
cause is fixed, :func:`replay_rejected` (``movierec feedback replay-rejected``) writes them again
and keeps in the file only those refused again; the journal appends under the same lock
(``rejected.lock``), so it is safe while the service runs.

**Stamps.** Each score carries its acknowledgement time, and the database keeps per (request,
movie) the score stamped last. A stamp is the wall clock, but later than every stamp before it
in the directory, whichever process made it: the last one is kept in its ``clock`` file
(:meth:`FeedbackJournal._stamped`), which a replay brings up to the stamps it replays (a host
crash loses the unsynced file, not the segments: :meth:`FeedbackJournal._stamp_after`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from app.durable import append_durably, file_lock, sync_directory, write_durably
from app.errors import Unavailable
from app.exit_hooks import close_at_exit, reset_after_fork
from app.monitoring.logs import LogEvery, describe_error
from app.services.durable_files import write_or_set_aside
from app.services.group_commit import GroupCommit
from app.services.request_log import RequestLog
from app.storage.db import Database, DatabaseUnavailableError, FeedbackRecord
from app.storage.models import as_utc, utcnow

log = logging.getLogger(__name__)

SUFFIX = ".wal"
REJECTED = "rejected.jsonl"
REJECTED_LOCK = "rejected.lock"  # held to append to rejected.jsonl, and by a replay to take or rewrite it
REPLAYING = "rejected.replaying"  # the records a replay took from rejected.jsonl (replay_rejected)
_REPLAY_LOCK = "rejected.replay-lock"  # one replay at a time
_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
CLOCK = "clock"  # the directory's last stamp (FeedbackJournal._stamped)
_CLOCK = struct.Struct("<q")  # microseconds since the epoch
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_AHEAD = timedelta(hours=1)  # a last stamp further ahead of the wall clock is a clock fault: not kept
_ZEROS = bytes(1 << 20)


def _last_stamp(fd: int) -> int:
    """The ``clock`` file's last stamp (microseconds since the epoch; 0 for a new file), read
    through ``fd`` under its ``flock``."""
    stored = os.pread(fd, _CLOCK.size, 0)
    return int(_CLOCK.unpack(stored)[0]) if len(stored) == _CLOCK.size else 0


# --------------------------------------------------------------------------- records


def encode(record: FeedbackRecord) -> bytes:
    """One framed record: length, checksum, JSON payload."""
    payload = orjson.dumps(
        {
            "r": record.request_id,
            "m": record.movie_id,
            "t": record.title,
            "s": record.score,
            "p": record.predicted_score,
            "v": record.model_version,
            "a": record.at,
        }
    )
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> FeedbackRecord:
    fields = orjson.loads(payload)
    return FeedbackRecord(
        request_id=fields["r"],
        movie_id=fields["m"],
        title=fields["t"],
        score=fields["s"],
        predicted_score=fields["p"],
        model_version=fields["v"],
        at=datetime.fromisoformat(fields["a"]),
    )


_PAYLOAD_START = b'{"r":'  # every payload's first bytes (encode() writes "r" first)


def read_records(data: bytes) -> list[FeedbackRecord]:
    """Every whole record of a segment's bytes.

    A zero length or a record whose checksum fails is where the records end after a crash (a
    torn last write), but it may also be one record damaged on disk with acknowledged records
    after it: so the rest is searched for further whole records (a payload's start, then its
    header's length and checksum) rather than dropped with the segment.
    """
    records: list[FeedbackRecord] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, checksum = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        if length and end <= len(data):
            payload = data[start:end]
            if zlib.crc32(payload) == checksum:
                records.append(decode(payload))
                offset = end
                continue
        found = data.find(_PAYLOAD_START, offset + _HEADER.size + 1)  # zeros: not found, at C speed
        if found < 0:
            break
        offset = found - _HEADER.size
    return records


class _Unreadable(Exception):
    """A segment whose bytes cannot be read back as records."""


class _Segment:
    """One of this process's journal files: open, locked, written from ``offset`` on."""

    __slots__ = ("count", "fd", "offset", "path", "sealed", "size", "unshipped")

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.offset = 0
        self.count = 0  # records written
        self.unshipped = 0  # written, not yet committed to the database
        self.sealed = False  # no more records: the process moved on to another segment

    @classmethod
    def create(cls, directory: Path, size: int) -> _Segment:
        """A new segment, locked and filled under a temporary name before it appears as ``*.wal``
        (a recovery scanning the directory must never find it unlocked)."""
        name = f"{os.getpid()}-{time.time_ns()}"
        path, filling = directory / f"{name}{SUFFIX}", directory / f"{name}.new"
        fd = os.open(filling, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            written = 0
            while written < size:
                written += os.write(fd, _ZEROS[: size - written])
            os.fsync(fd)
            os.rename(filling, path)
            sync_directory(directory)
        except BaseException:
            os.close(fd)
            filling.unlink(missing_ok=True)
            raise
        return cls(path, fd, size)

    def fits(self, n: int) -> bool:
        return self.offset + n <= self.size

    def append(self, data: bytes) -> None:
        """Write ``data`` after the last record and sync it: durable on return."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.offset + len(data) - len(view))
            view = view[written:]
        os.fdatasync(self.fd)
        self.offset += len(data)

    def remove(self) -> None:
        """Delete the file (every record in it is committed) and release it.

        A file that cannot be deleted (the filesystem remounted read-only) is left and released:
        its records are committed, and the replay of it by a later process changes nothing. The
        failure used to escape into the shipper's bookkeeping, after the commit: a drain raised,
        and the rest of the batch was never counted as shipped.
        """
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning(
                "feedback journal: a shipped segment could not be deleted; the next start replays it",
                extra={"segment": self.path.name, "reason": describe_error(exc)},
            )
        finally:
            self.release()

    def release(self) -> None:
        """Close the file, and with it the lock: another process may replay what it holds (once)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- the journal


class FeedbackJournal:
    """Scores saved durably here (:meth:`save`), shipped to the database behind the response."""

    # each process's own (:meth:`_own_state`): a forked child starts afresh
    _segments: dict[str, _Segment]
    _active: _Segment | None
    _group: GroupCommit[FeedbackRecord]
    _lock: threading.Lock
    _io_lock: threading.Lock
    _clock_fd: int
    _recovering: threading.Lock

    def __init__(
        self,
        directory: Path,
        db: Database,
        *,
        segment_bytes: int = 4 << 20,
        ship_interval: float = 0.1,
        batch_size: int = 500,
        max_unshipped: int = 100_000,
        recover_interval: float = 30.0,
    ) -> None:
        self.directory = directory
        self.db = db
        self.segment_bytes = segment_bytes
        self.batch_size = batch_size
        self.max_unshipped = max_unshipped
        self.recover_interval = recover_interval
        # save() refuses a score past max_unshipped before writing it, so the shipper's own
        # bound (which would refuse a score already durable) is never the one that applies
        self.shipper = RequestLog(
            db,
            write=self._ship,
            on_written=self._shipped,
            reject=self._reject,
            name="feedback journal",
            flush_at_exit=False,  # close() flushes it, then deletes the segments
            flush_interval=ship_interval,
            batch_size=batch_size,
            max_pending=2 * max_unshipped + 1024,
        )
        self._closed = False
        self._disk_problem: str | None = None  # the last disk_problem(), logged when it changes
        self._write_failed = LogEvery(30.0)  # a full or read-only disk: not one ERROR per refused score
        self._own_state()
        reset_after_fork(self.forget_inherited)
        self._next_recovery = 0.0
        self.rejected = 0
        self.replayed = 0
        close_at_exit(self)

    # ------------------------------------------------------------------ request path

    def save(self, record: FeedbackRecord) -> None:
        """Make ``record`` durable here; returns once it is synced. 503 when it cannot be."""
        if self.shipper.pending() >= self.max_unshipped:
            raise Unavailable(
                "scores are not reaching the database (unreachable?); try again shortly",
                headers={"Retry-After": "5"},
            )
        self._group.save(record)  # stamped when written (_stamped), if it has no time yet

    def disk_problem(self) -> str | None:
        """Why the journal's filesystem cannot take more scores, or None (readiness, app/api/health.py).

        It can when it has room for one more segment (``segment_bytes``, allocated whole when a
        process moves on to a new one) for an unprivileged user, and a free inode for its file
        (a filesystem that counts none, as btrfs, is not judged on inodes), and when this process
        may create files there: a filesystem mounted (or remounted after an error) read-only, or a
        directory the service's user may not write in, has room to spare and takes no score. One
        ``statvfs`` and one ``access`` of the directory (its nearest existing parent before the
        first score, which must then be a directory): no probe file. Logged once when the disk
        becomes unusable, and when it has room again (per process).
        """
        try:
            path = self.directory
            while not path.exists() and path != path.parent:
                path = path.parent
            stats = os.statvfs(path)
            writable = path.is_dir() and os.access(
                path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids
            )
        except OSError as exc:
            problem: str | None = f"the feedback journal's disk cannot be checked ({exc.strerror or exc})"
        else:
            free = stats.f_bavail * stats.f_frsize
            if stats.f_flag & os.ST_RDONLY:
                problem = "the feedback journal's filesystem is read-only: scores cannot be stored"
            elif not writable:
                problem = (
                    "the feedback journal's directory cannot be written by the service: "
                    "scores cannot be stored"
                )
            elif free < self.segment_bytes:
                problem = (
                    f"the feedback journal's disk is full ({free / (1 << 20):.1f} MiB free, a journal "
                    f"segment takes {self.segment_bytes / (1 << 20):.1f} MiB): scores cannot be stored"
                )
            elif stats.f_files and not stats.f_favail:
                problem = "the feedback journal's disk has no free inode: scores cannot be stored"
            else:
                problem = None
        if (problem is None) != (self._disk_problem is None):
            if problem is not None:
                log.error("feedback journal: %s", problem, extra={"directory": str(self.directory)})
            else:
                log.info(
                    "feedback journal: its disk has room again", extra={"directory": str(self.directory)}
                )
        self._disk_problem = problem
        return problem

    def drain(self) -> int:
        """Commit every score this process acknowledged, now; raises when the database cannot take them."""
        return self.shipper.flush()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            segments = len(self._segments)
        counts = {"segments": segments, "replayed": self.replayed, "rejected": self.rejected}
        return {**self.shipper.stats(), **counts}

    def close(self, timeout: float = 10.0) -> None:
        """Ship what is left; delete the segments whose records are all committed, release the rest.

        ``timeout`` bounds the shipping: the exit hooks give it what the request log left of their
        budget (app/exit_hooks.py), possibly nothing; scores not shipped by then are safe in their
        segments and replayed at the next start. Once: the exit hooks may call it twice (uwsgi's
        and Python's), and a second call waited ``timeout`` again for a database that was down,
        past a container's stop timeout.
        """
        with self._io_lock:  # a write in progress finishes (and queues its records) first
            if self._closed:
                return
            self._closed = True
        self._stopped.set()  # a start recovery still trying (recover_at_start) gives up
        self.shipper.close(timeout)
        with self._lock:
            for segment in list(self._segments.values()):
                segment.sealed = True
                if segment.unshipped == 0:
                    segment.remove()
                else:  # left for recover() in the next process
                    log.error(
                        "feedback journal: scores not shipped at exit stay in the journal",
                        extra={"segment": segment.path.name, "scores": segment.unshipped},
                    )
                    segment.release()
            self._segments.clear()
            self._active = None
            self._close_clock()

    # ------------------------------------------------------------------ writing (group commit)

    def _append(self, records: Sequence[FeedbackRecord]) -> None:
        """Write and sync one batch (the group commit's writer; one at a time), then queue it to ship."""
        with self._io_lock:
            if self._closed:
                raise Unavailable("the service is stopping; try again shortly", headers={"Retry-After": "1"})
            try:
                records = self._stamped(records)
                data = b"".join(encode(record) for record in records)
                with self._lock:
                    segment = self._writable(len(data))
                    segment.unshipped += len(records)  # counted before it exists: never deleted under it
                try:
                    segment.append(data)
                except BaseException:
                    with self._lock:
                        segment.unshipped -= len(records)
                        # after a failed write or sync the file's state is unknown: never write it again
                        self._seal(segment)
                    raise
            except OSError as exc:
                self._write_failed.log(
                    log,
                    logging.ERROR,
                    "feedback journal: a score could not be written",
                    reason=describe_error(exc),
                )
                raise Unavailable(
                    "scores cannot be stored right now (the feedback journal is not writable)",
                    headers={"Retry-After": "5"},
                ) from exc
            name = segment.path.name
            with self._lock:
                first = segment.count
                segment.count += len(records)
            self.shipper.append(
                {"id": f"{name}:{first + i}", "segment": name, "record": record}
                for i, record in enumerate(records)
            )
        if time.monotonic() >= self._next_recovery:
            self._next_recovery = time.monotonic() + self.recover_interval
            recovery = threading.Thread(
                target=self._recover_logged, name="movierec-journal-recovery", daemon=True
            )
            recovery.start()

    def _writable(self, n: int) -> _Segment:
        """This process's segment with room for ``n`` bytes (a new one when full). Holds ``_lock``."""
        segment = self._active
        if segment is not None and segment.fits(n):
            return segment
        if segment is not None:
            self._seal(segment)
        self.directory.mkdir(parents=True, exist_ok=True)
        segment = _Segment.create(self.directory, max(self.segment_bytes, n))
        self._segments[segment.path.name] = segment
        self._active = segment
        return segment

    def _stamped(self, records: Sequence[FeedbackRecord]) -> Sequence[FeedbackRecord]:
        """``records``, those without a time stamped now (holds ``_io_lock``; before their write).

        A stamp is the wall clock, but later than every stamp before it in this directory, of
        any process: a clock stepped back (an NTP step, a resumed VM) must not make a later score
        lose to an earlier one of the same (id, movie). Each worker used to keep its own stamps in
        order only, and the later score reached the other worker, or one started since, half the
        time. The last stamp is in the ``clock`` file, read and written under an exclusive
        ``flock``: two system calls on the page cache per batch, not synced (a host crash
        loses it, and the replay of the segments it leaves brings it back: :meth:`_stamp_after`).
        One further ahead than :data:`_MAX_AHEAD` is a clock that was wrong, not stepped: it is not
        kept (the stamps would stay ahead for ever).
        """
        if all(record.at is not None for record in records):
            return records
        if self._clock_fd < 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._clock_fd = os.open(self.directory / CLOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._clock_fd, fcntl.LOCK_EX)
        try:
            now = (utcnow() - _EPOCH) // _MICROSECOND
            last = _last_stamp(self._clock_fd)
            tick = last + 1 if now < last + 1 <= now + _MAX_AHEAD // _MICROSECOND else now
            stamped = []
            for record in records:
                if record.at is None:
                    record = dataclasses.replace(record, at=_EPOCH + tick * _MICROSECOND)
                    tick += 1
                stamped.append(record)
            os.pwrite(self._clock_fd, _CLOCK.pack(tick - 1), 0)
        finally:
            fcntl.flock(self._clock_fd, fcntl.LOCK_UN)
        return stamped

    def _close_clock(self) -> None:
        fd, self._clock_fd = self._clock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def forget_inherited(self) -> None:
        """In a forked child: the parent's segments stay the parent's. Closing the child's copies of
        their files keeps the parent's locks the parent's alone (a lock lives while any copy of
        its open file does), so they can be replayed once the parent is gone. The clock file is
        opened again: a lock on the parent's open file would not exclude the parent."""
        for segment in self._segments.values():
            segment.release()
        self._close_clock()
        # the locks and the group commit's turn may have been held by another thread of the parent
        # (the shipper resets its own: app/services/request_log.py)
        self._own_state()

    def _own_state(self) -> None:
        """What each process has of its own: its segments, its locks, its group commit."""
        self._segments = {}
        self._active = None
        self._group = GroupCommit(self._append, shared_failure=Unavailable)
        self._lock = threading.Lock()  # this process's segments
        # held by the writer from choosing its segment to queueing the records it wrote, and by
        # close(): a segment is never closed under a write, nor deleted before its records queue
        self._io_lock = threading.Lock()
        self._recovering = threading.Lock()
        self._stopped = threading.Event()  # set by close()
        self._clock_fd = -1  # the directory's clock file, opened at the first stamp (_stamped)

    def _seal(self, segment: _Segment) -> None:
        """No more records go to ``segment``; delete it once they are all committed. Holds ``_lock``."""
        segment.sealed = True
        if self._active is segment:
            self._active = None
        if segment.unshipped == 0:
            self._segments.pop(segment.path.name, None)
            segment.remove()

    # ------------------------------------------------------------------ shipping

    def _ship(self, rows: list[dict[str, Any]]) -> None:
        """Commit a batch (the shipper sets aside a record refused for good: :meth:`_reject`)."""
        self.db.save_feedbacks([row["record"] for row in rows])

    def _shipped(self, rows: list[dict[str, Any]]) -> None:
        """Records committed: a sealed segment whose records are all committed is deleted."""
        with self._lock:
            for row in rows:
                segment = self._segments.get(row["segment"])
                if segment is None:  # a forked child shipping its parent's queue
                    continue
                segment.unshipped -= 1
                if segment.sealed and segment.unshipped == 0:
                    self._seal(segment)

    def _reject(self, row: dict[str, Any], exc: BaseException) -> None:
        """A record the database refuses for good: kept in ``rejected.jsonl``, never dropped silently."""
        record: FeedbackRecord = row["record"]
        with file_lock(self.directory / REJECTED_LOCK, mode=0o600):  # not while a replay takes the file
            append_durably(self.directory / REJECTED, _rejected_line(record, exc))
        self.rejected += 1
        log.error(
            "feedback journal: the database refused a score; it is kept in %s",
            REJECTED,
            extra={
                "request_id": record.request_id,
                "movie_id": record.movie_id,
                "reason": describe_error(exc),
            },
        )

    # ------------------------------------------------------------------ recovery

    def recover_at_start(self) -> None:
        """:meth:`recover`, as a process starts; when it fails (the database down), a thread of this
        process tries again every ``recover_interval`` until it succeeds, whether the process
        journals scores or not.

        Until 2026-12-07 only a score journaled here started another try: with no score reaching
        a worker started during an outage, the scores ended processes had left stayed out of the
        database (training, the dashboard, the monitors) once it was back, for as long.
        """
        failed = LogEvery(300.0)  # the wait is logged when it starts, then at most every 5 minutes
        try:
            self.recover()
        except Exception as exc:  # noqa: BLE001 - kept on disk, tried again below
            self._wait_logged(failed, exc)
            threading.Thread(
                target=self._recover_until_done,
                args=(failed,),
                name="movierec-journal-start-recovery",
                daemon=True,
            ).start()

    def _recover_until_done(self, failed: LogEvery) -> None:
        """:meth:`recover` every ``recover_interval`` until one succeeds or the journal is closed."""
        stopped = self._stopped
        while not stopped.wait(self.recover_interval):
            try:
                self.recover(wait=True)
                return
            except Exception as exc:  # noqa: BLE001 - kept on disk, tried again
                self._wait_logged(failed, exc)

    @staticmethod
    def _wait_logged(failed: LogEvery, exc: BaseException) -> None:
        failed.log(
            log,
            logging.ERROR,
            "feedback journal: left scores wait to be replayed",
            reason=describe_error(exc),
        )

    def recover(self, *, wait: bool = False) -> int:
        """Replay the segments no live process holds into the database, then delete them; scores replayed.

        Another recovery of this process running, it returns 0 at once, or (``wait``) waits for it
        and then replays what is left.

        Raises what the database raised when it cannot take them (unreachable, read-only, …): the
        segment being replayed stays, for the next attempt. A segment that cannot be read back is
        renamed ``*.unreadable`` and the others are replayed. A segment a killed process was still
        creating (``*.new``, no record in it) is deleted (:meth:`_remove_abandoned`).
        """
        if not self.directory.is_dir() or not self._recovering.acquire(blocking=wait):
            return 0
        try:
            self._remove_abandoned()
            total = 0
            for path in sorted(self.directory.glob(f"*{SUFFIX}")):
                with self._lock:
                    if path.name in self._segments:
                        continue
                try:
                    total += self._replay(path)
                except (DatabaseUnavailableError, SQLAlchemyError):
                    raise  # the next attempt replays it
                except _Unreadable:  # an unreadable file must not block the others: set aside, kept
                    log.exception("feedback journal: a segment could not be read back; renamed *.unreadable")
                    with contextlib.suppress(OSError):
                        path.rename(path.with_suffix(".unreadable"))
                except Exception:
                    log.exception(
                        "feedback journal: a segment could not be replayed now; kept for the next attempt"
                    )
            return total
        finally:
            self._recovering.release()

    def _remove_abandoned(self) -> None:
        """Delete the ``*.new`` files of processes killed while they created a segment.

        Such a file holds no record (a segment gets its first once renamed ``*.wal``), but up to
        ``segment_bytes`` of zeros, and nothing else would ever delete it. One is abandoned when
        nobody holds its lock and it is not empty: its creator locks it before writing a byte and
        holds the lock until it has renamed or deleted it. An empty one may be a creation between
        its ``open`` and its ``flock``: it is left (it takes no room).
        """
        for path in self.directory.glob("*.new"):
            with contextlib.suppress(OSError):  # BlockingIOError: its creator lives
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if os.fstat(fd).st_size > 0:
                        path.unlink()
                        log.warning(
                            "feedback journal: deleted a segment a killed process was creating",
                            extra={"segment": path.name},
                        )
                finally:
                    os.close(fd)

    def strays(self) -> list[Path]:
        """Segments waiting in the journal directories of other database URLs (an address renamed?)."""
        return sorted(p for p in self.directory.parent.glob(f"*/*{SUFFIX}") if p.parent != self.directory)

    def _replay(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # replayed and deleted by another process meanwhile
            return 0
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its writer lives
                return 0
            status = os.fstat(fd)
            if status.st_nlink == 0:  # replayed and deleted before we locked it
                return 0
            try:
                records = read_records(os.pread(fd, status.st_size, 0))
            except Exception as exc:
                raise _Unreadable(str(exc)) from exc
            self._stamp_after(records)
            for start in range(0, len(records), self.batch_size):
                batch = [{"record": record} for record in records[start : start + self.batch_size]]
                write_or_set_aside(self._ship, batch, self._reject)
            path.unlink(missing_ok=True)
            sync_directory(self.directory)
        finally:
            os.close(fd)
        self.replayed += len(records)
        log.warning(
            "feedback journal: replayed the scores an ended process left in its segment",
            extra={"segment": path.name, "scores": len(records)},
        )
        return len(records)

    def _stamp_after(self, records: Sequence[FeedbackRecord]) -> None:
        """Keep the directory's last stamp at or after every stamp of ``records`` (replayed ones).

        The ``clock`` file is not synced, and a host crash (a power loss) that keeps the synced
        segments loses it; the host then often comes back with its clock behind (the RTC's time
        until NTP steps it), and a re-score stamped by that clock lost the upsert to the replayed
        score of the same (id, movie) it followed. Raised before the records are written, so the
        scores taken while the database is still down come after them too. Best effort: a clock
        file that cannot be written (a read-only disk) does not hold the replay back.
        """
        stamps = [record.at for record in records if record.at is not None]
        if not stamps:
            return
        latest = (as_utc(max(stamps)) - _EPOCH) // _MICROSECOND
        try:
            fd = os.open(self.directory / CLOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # with _stamped's, in any process
                if latest > _last_stamp(fd):
                    os.pwrite(fd, _CLOCK.pack(latest), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning(
                "feedback journal: the clock file could not be brought past the replayed scores",
                extra={"reason": describe_error(exc)},
            )

    def _recover_logged(self) -> None:
        try:
            self.recover()
        except DatabaseUnavailableError as exc:
            log.error(
                "feedback journal: segments left by ended processes wait for the database",
                extra={"reason": describe_error(exc)},
            )
        except Exception:
            log.exception("feedback journal: recovery failed")


# --------------------------------------------------------------------------- rejected.jsonl


def _rejected_line(record: FeedbackRecord, exc: BaseException) -> bytes:
    """A line of ``rejected.jsonl``: the record's fields and why the database refused it."""
    return orjson.dumps({**dataclasses.asdict(record), "error": describe_error(exc, 500)}) + b"\n"


def _rejected_record(line: bytes) -> FeedbackRecord:
    """The record of a ``rejected.jsonl`` line; ValueError, KeyError or TypeError when it holds none."""
    fields = orjson.loads(line)
    at = fields.get("at")
    return FeedbackRecord(
        request_id=fields["request_id"],
        movie_id=fields["movie_id"],
        title=fields["title"],
        score=fields["score"],
        predicted_score=fields["predicted_score"],
        model_version=fields["model_version"],
        at=datetime.fromisoformat(at) if at is not None else None,
    )


class ReplayInProgress(Exception):
    """Another ``replay_rejected`` holds the journal directory's rejected scores."""


def replay_rejected(directory: Path, db: Database, batch_size: int = 500) -> tuple[int, int]:
    """Write the scores of ``directory``'s ``rejected.jsonl`` to ``db`` again; (stored, refused again).

    Through the journal's own write (:meth:`Database.save_feedbacks`, a batch at a time, a batch
    refused for good split into its records: :func:`write_or_set_aside`), so it is idempotent: a
    stored score is replaced only by one stamped the same or later. The stored ones leave the
    file, the ones refused again (with their new reason) and lines that hold no record stay.

    Safe while the service runs: under the journal's lock for the file (``rejected.lock``), the
    file is renamed ``rejected.replaying``; the journal then appends to a new ``rejected.jsonl``,
    and what is left is put before it, under the lock again, with one atomic replace. When the
    database cannot take them (unreachable, …) every score not yet stored is put back and the
    error raised. A replay killed outright leaves ``rejected.replaying``, taken up by the next.
    Raises :class:`ReplayInProgress` while another replay runs.
    """
    if not directory.is_dir():
        return 0, 0
    with file_lock(directory / _REPLAY_LOCK, timeout=0, mode=0o600) as taken:
        if not taken:
            raise ReplayInProgress(f"another replay of {directory / REJECTED} is running")
        rejected, replaying = directory / REJECTED, directory / REPLAYING
        with file_lock(directory / REJECTED_LOCK, mode=0o600):
            if rejected.exists():
                if replaying.exists():  # an earlier replay was killed: its records first
                    append_durably(replaying, rejected.read_bytes())
                    rejected.unlink()
                else:
                    rejected.rename(replaying)
                sync_directory(directory)
        if not replaying.exists():
            return 0, 0
        kept: list[bytes] = []  # lines that stay in rejected.jsonl
        rows: list[dict[str, Any]] = []
        for line in replaying.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                rows.append({"record": _rejected_record(line), "line": line})
            except (ValueError, KeyError, TypeError):
                kept.append(line)  # not a record: left for the operator to read
        unreadable = len(kept)

        def refused(row: dict[str, Any], exc: BaseException) -> None:
            row["refused"] = True
            kept.append(_rejected_line(row["record"], exc).rstrip(b"\n"))

        def write(batch: list[dict[str, Any]]) -> None:
            db.save_feedbacks([row["record"] for row in batch])

        done = 0
        try:
            for done in range(0, len(rows), batch_size):
                write_or_set_aside(write, rows[done : done + batch_size], refused)
            done = len(rows)
        finally:  # stored ones out; refused again, and not yet written, back before the new ones
            left = kept + [row["line"] for row in rows[done:] if not row.get("refused")]
            with file_lock(directory / REJECTED_LOCK, mode=0o600):
                appended = rejected.read_bytes() if rejected.exists() else b""
                content = b"".join(line + b"\n" for line in left) + appended
                if content:
                    write_durably(rejected, content)
                else:
                    rejected.unlink(missing_ok=True)
                replaying.unlink()
                sync_directory(directory)
    stored = len(rows) - (len(kept) - unreadable)
    log.info("feedback journal: rejected scores replayed", extra={"stored": stored, "refused": len(kept)})
    return stored, len(kept)
