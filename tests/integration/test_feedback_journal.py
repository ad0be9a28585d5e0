"""The feedback journal: durable before the 200, shipped behind it, replayed after a crash.

On real databases (SQLite and the local PostgreSQL) and real files: a segment left by a
process that died without shipping it is replayed by the next one; torn tails, refused
records, an unwritable journal and a full backlog each have their outcome.
"""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import ProgrammingError

from app.errors import Unavailable
from app.services.feedback_journal import (
    REJECTED,
    REPLAYING,
    SUFFIX,
    FeedbackJournal,
    _Segment,
    encode,
    read_records,
)
from app.storage.db import Database, DatabaseUnavailableError, FeedbackRecord
from app.storage.models import Feedback, RecommendationRequest, as_utc, utcnow
from tests.helpers import in_forked_child

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ITEMS = [{"movie_id": m, "title": f"Movie {m}", "score": 0.5} for m in range(1, 11)]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        postgres_url = str(request.getfixturevalue("postgres_url"))
        url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


def _request(db: Database) -> str:
    request_id = uuid.uuid4().hex
    db.save_requests(
        [
            {
                "id": request_id,
                "age": 30,
                "gender": "F",
                "occupation": "artist",
                "user_id": None,
                "max_recs": 10,
                "model_version": "v1",
                "strategy": "segment",
                "items": ITEMS,
            }
        ]
    )
    return request_id


def _score(request_id: str, movie_id: int, score: float) -> FeedbackRecord:
    return FeedbackRecord(request_id, movie_id, f"Movie {movie_id}", score, None, "v1")


def _stored(db: Database) -> dict[tuple[str, int], float]:
    return {(row.request_id, row.movie_id): row.score for row in db.feedback_rows()}


def _pause_after_each_sync(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Make a journal write by any thread but the test's own stop after its sync: ``synced`` is set
    then, and the write goes on once ``go_on`` is."""
    synced, go_on = threading.Event(), threading.Event()
    real_append = _Segment.append

    def append_then_pause(segment: _Segment, data: bytes) -> None:
        real_append(segment, data)
        if threading.current_thread() is not threading.main_thread():
            synced.set()
            go_on.wait(30)

    monkeypatch.setattr(_Segment, "append", append_then_pause)
    return synced, go_on


def _background_recoveries_done() -> None:
    """Wait for the recoveries a journal's first write starts in the background (one running makes
    a direct ``recover()`` return 0 at once, and it may replay what the test means to)."""
    for thread in threading.enumerate():
        if thread.name == "movierec-journal-recovery":
            thread.join(30)


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def _on_disk(directory: Path) -> list[FeedbackRecord]:
    return [record for path in _segments(directory) for record in read_records(path.read_bytes())]


def test_a_saved_score_is_on_disk_at_once_and_in_the_database_when_shipped(
    db: Database, tmp_path: Path
) -> None:
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)  # nothing ships by itself
    request_id = _request(db)
    try:
        journal.save(_score(request_id, 3, 4.5))
        on_disk = _on_disk(journal.directory)
        assert [(r.request_id, r.movie_id, r.score) for r in on_disk] == [(request_id, 3, 4.5)]
        assert on_disk[0].at is not None  # stamped when acknowledged
        assert _stored(db) == {}
        assert journal.drain() == 1
        assert _stored(db) == {(request_id, 3): 4.5}
        created = db.feedback_rows()[0].created_at
        created = created if created.tzinfo else created.replace(tzinfo=UTC)  # SQLite keeps no zone
        assert created == on_disk[0].at  # the acknowledgement's time, not the shipment's
    finally:
        journal.close()
    assert _segments(journal.directory) == []  # every record committed: nothing left behind


def test_concurrent_scores_share_syncs_and_all_arrive(db: Database, tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=0.01)
    request_ids = [_request(db) for _ in range(8)]

    def post(request_id: str) -> None:
        for movie_id in range(1, 11):
            journal.save(_score(request_id, movie_id, 1 + movie_id % 5))

    threads = [threading.Thread(target=post, args=(request_id,)) for request_id in request_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal.close()
    assert len(_stored(db)) == 80
    assert journal._group.records == 80 and journal._group.batches < 80  # syncs were shared
    assert _segments(journal.directory) == []


def test_full_segments_are_deleted_once_shipped(db: Database, tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60, segment_bytes=512)
    request_id = _request(db)
    try:
        for movie_id in range(1, 11):
            journal.save(_score(request_id, movie_id, 3))
        full = _segments(journal.directory)
        assert len(full) > 2  # ~110 bytes a record: several segments of 512 bytes
        assert len(_on_disk(journal.directory)) == 10
        journal.drain()
        assert len(_segments(journal.directory)) == 1  # only the segment still being written
        assert len(_stored(db)) == 10
    finally:
        journal.close()
    assert _segments(journal.directory) == []


_WRITER = """
import os, sys
from app.services.feedback_journal import FeedbackJournal
from app.storage.db import Database, DatabaseUnavailableError, FeedbackRecord
db = Database(sys.argv[1])
journal = FeedbackJournal(__import__("pathlib").Path(sys.argv[2]), db, ship_interval=3600)
for movie_id in range(1, 11):
    journal.save(FeedbackRecord(sys.argv[3], movie_id, f"Movie {movie_id}", 2.0, None, "v1"))
print("acknowledged", flush=True)
if sys.argv[4] == "killed":
    os._exit(0)  # no exit hooks: as if killed before its shipper ran
"""


def _write_scores_in_a_process(db: Database, directory: Path, request_id: str, end: str) -> None:
    """Ten scores journaled by another process that then ends ``killed`` or normally (``exits``)."""
    out = subprocess.run(
        [sys.executable, "-c", _WRITER, db.engine.url.render_as_string(hide_password=False),
         str(directory), request_id, end],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "acknowledged"


def test_a_process_that_exits_normally_ships_its_scores_and_deletes_its_segments(
    db: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "journal"
    request_id = _request(db)
    _write_scores_in_a_process(db, directory, request_id, "exits")
    assert _stored(db) == {(request_id, m): 2.0 for m in range(1, 11)}
    assert _segments(directory) == []


def test_scores_of_a_process_that_died_unshipped_are_replayed_once(db: Database, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    request_id = _request(db)
    _write_scores_in_a_process(db, directory, request_id, "killed")
    assert _stored(db) == {} and len(_on_disk(directory)) == 10

    journal = FeedbackJournal(directory, db)
    try:
        # a newer score of one of them, acknowledged here after the dead process's; the first
        # score a process journals also starts its search for segments left by others
        journal.save(_score(request_id, 1, 5.0))
        journal.drain()
        deadline = time.monotonic() + 30
        while journal.replayed < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert journal.replayed == 10
        assert journal.recover() == 0  # the dead process's segment is gone
    finally:
        journal.close()
    stored = _stored(db)
    assert len(stored) == 10
    assert stored[(request_id, 1)] == 5.0  # the replay of an older score does not overwrite it
    assert all(stored[(request_id, m)] == 2.0 for m in range(2, 11))
    assert _segments(directory) == []


def test_scores_ended_processes_left_are_replayed_when_the_database_is_back_without_new_scores(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker started while the database was down (respawned during an outage) tried the
    segments ended processes had left once, at its start; after that only a score it journaled
    started another try. With no score reaching the workers after the outage (a quiet night, an
    instance out of rotation), those acknowledged scores stayed out of the database (training,
    the dashboard, the monitors) for as long. A failed start recovery is now tried again every
    ``recover_interval`` until the segments are replayed, this process journaling scores or not."""
    directory = tmp_path / "journal"
    directory.mkdir()
    request_id = _request(db)
    records = [FeedbackRecord(request_id, m, f"Movie {m}", 3.0, None, "v1", at=utcnow()) for m in (1, 2, 3)]
    (directory / f"1-1{SUFFIX}").write_bytes(b"".join(encode(r) for r in records) + bytes(4096))
    save_feedbacks = Database.save_feedbacks

    def unreachable(_self: Database, _records: Any) -> None:
        raise DatabaseUnavailableError("the database cannot be reached")

    monkeypatch.setattr(Database, "save_feedbacks", unreachable)
    journal = FeedbackJournal(directory, db, recover_interval=0.05)
    try:
        journal.recover_at_start()  # as a worker's start does (app/__init__.py): fails, logged
        assert len(_segments(directory)) == 1
        monkeypatch.setattr(Database, "save_feedbacks", save_feedbacks)  # the database is back
        deadline = time.monotonic() + 10
        while _segments(directory) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _stored(db) == {(request_id, m): 3.0 for m in (1, 2, 3)}
        assert _segments(directory) == []
    finally:
        journal.close()


def test_a_segment_its_writer_still_holds_is_not_replayed(db: Database, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    writer = FeedbackJournal(directory, db, ship_interval=60)
    other = FeedbackJournal(directory, db)  # another process would see the same lock
    request_id = _request(db)
    try:
        writer.save(_score(request_id, 2, 4.0))
        assert other.recover() == 0
        assert _stored(db) == {} and len(_segments(directory)) == 1
    finally:
        writer.close()
        other.close()
    assert _stored(db) == {(request_id, 2): 4.0}


def test_a_torn_tail_ends_the_records(tmp_path: Path) -> None:
    records = [_score("r", m, 3.0) for m in range(1, 4)]
    stamped = [FeedbackRecord(**{**r.__dict__, "at": utcnow()}) for r in records]
    whole = b"".join(encode(r) for r in stamped)
    assert [r.movie_id for r in read_records(whole + bytes(64))] == [1, 2, 3]  # zeros: the end marker
    torn = encode(FeedbackRecord(**{**records[0].__dict__, "movie_id": 9, "at": utcnow()}))
    assert [r.movie_id for r in read_records(whole + torn[:-3] + bytes(64))] == [1, 2, 3]  # cut short
    flipped = bytearray(torn)
    flipped[-2] ^= 0xFF
    assert [r.movie_id for r in read_records(whole + bytes(flipped) + bytes(64))] == [1, 2, 3]  # checksum


def test_the_last_acknowledged_score_wins_whatever_order_it_is_written_in(db: Database) -> None:
    request_id = _request(db)
    now = utcnow()
    older = FeedbackRecord(request_id, 4, "Movie 4", 1.0, 3.5, "v1", at=now - timedelta(seconds=5))
    newer = FeedbackRecord(request_id, 4, "Movie 4", 5.0, None, "v1", at=now)
    db.save_feedbacks([newer])
    db.save_feedbacks([older])  # a replay of an older one
    db.save_feedbacks([newer, older])  # both in one batch
    assert _stored(db) == {(request_id, 4): 5.0}
    with db.session() as session:
        assert session.scalar(select(func.count(Feedback.id))) == 1


@pytest.mark.parametrize("batches", ["in order", "one batch", "replayed after"])
def test_a_rescored_movie_keeps_its_first_time_and_prediction_whatever_batches_ship_it(
    db: Database, batches: str
) -> None:
    """A (request, movie) scored, then scored again: its row keeps the first score's time
    (``created_at``, the rating's timestamp for training, the dashboard's and the online
    monitor's windows) and prediction, and takes the last score. Only when the two shipped in
    that order in two batches: in one batch (both taken during an outage, or within the 0.1 s
    ship interval) the row was the second score's alone, and the same when the first was
    replayed after the second had shipped (a worker killed before shipping it)."""
    request_id = _request(db)
    now = utcnow()
    first = FeedbackRecord(request_id, 4, "Movie 4", 1.0, 3.5, "v1", at=now - timedelta(seconds=5))
    second = FeedbackRecord(request_id, 4, "Movie 4", 5.0, None, "v1", at=now)
    writes = {
        "in order": [[first], [second]],
        "one batch": [[first, second]],
        "replayed after": [[second], [first]],
    }
    for batch in writes[batches]:
        db.save_feedbacks(batch)
    (row,) = db.feedback_rows()
    assert (row.score, row.predicted_score) == (5.0, 3.5)
    assert (as_utc(row.created_at), as_utc(row.updated_at)) == (first.at, second.at)


def test_a_score_the_database_refuses_is_kept_aside_and_the_rest_ship(db: Database, tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)
    request_id = _request(db)
    try:
        journal.save(_score(request_id, 1, 4.0))
        journal.save(_score("no-such-request", 2, 3.0))  # foreign key: refused for good
        journal.save(_score(request_id, 3, 2.0))
        journal.drain()
    finally:
        journal.close()
    assert _stored(db) == {(request_id, 1): 4.0, (request_id, 3): 2.0}
    rejected = (journal.directory / REJECTED).read_text().splitlines()
    assert len(rejected) == 1 and '"request_id":"no-such-request"' in rejected[0]
    assert journal.rejected == 1
    assert _segments(journal.directory) == []


def test_an_unwritable_journal_answers_unavailable(db: Database, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    journal = FeedbackJournal(blocker / "journal", db)
    with pytest.raises(Unavailable) as raised:
        journal.save(_score(_request(db), 1, 4.0))
    assert raised.value.status == 503 and raised.value.headers == {"Retry-After": "5"}
    journal.close()
    assert _stored(db) == {}


def test_a_full_backlog_refuses_new_scores_before_writing_them(db: Database, tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60, max_unshipped=2)
    request_id = _request(db)
    try:
        journal.save(_score(request_id, 1, 4.0))
        journal.save(_score(request_id, 2, 4.0))
        with pytest.raises(Unavailable):
            journal.save(_score(request_id, 3, 4.0))
        assert len(_on_disk(journal.directory)) == 2  # the refused one was never written
        journal.drain()
        journal.save(_score(request_id, 3, 4.0))  # room again
    finally:
        journal.close()
    assert len(_stored(db)) == 3


def test_a_forked_child_writes_segments_of_its_own(db: Database, tmp_path: Path) -> None:
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)
    request_id = _request(db)
    try:
        journal.save(_score(request_id, 1, 4.0))
        parent_segments = _segments(journal.directory)

        def child() -> bool:
            journal.save(_score(request_id, 2, 3.0))
            return len(_segments(journal.directory)) == 2

        assert in_forked_child(child) == 0
        assert set(parent_segments) < set(_segments(journal.directory))
    finally:
        journal.close()
    _background_recoveries_done()
    assert journal.recover() == 1  # the child died without shipping: its score is replayed
    assert _stored(db) == {(request_id, 1): 4.0, (request_id, 2): 3.0}


def test_a_child_forked_during_another_threads_write_saves_scores_of_its_own(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the fork another thread held the journal's write (its locks and the group commit's
    turn), and the shipper was just started: the child must not wait for them for ever."""
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)
    request_id = _request(db)
    synced, go_on = _pause_after_each_sync(monkeypatch)
    saver = threading.Thread(target=journal.save, args=(_score(request_id, 1, 4.0),))
    saver.start()
    try:
        assert synced.wait(10)

        def child() -> bool:
            journal.save(_score(request_id, 2, 3.0))
            return len(read_records(_segments(journal.directory)[-1].read_bytes())) == 1

        assert in_forked_child(child) == 0
    finally:
        go_on.set()
        saver.join()
        journal.close()
    _background_recoveries_done()  # the saver's write started one, which may have replayed it
    journal.recover()
    assert journal.replayed == 1  # the child's score, left in its own segment
    assert _stored(db) == {(request_id, 1): 4.0, (request_id, 2): 3.0}


def test_close_waits_for_a_write_in_progress_and_ships_it(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop arriving between a score's sync and its queueing must neither delete nor lose it."""
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)
    request_id = _request(db)
    synced, go_on = _pause_after_each_sync(monkeypatch)
    saver = threading.Thread(target=journal.save, args=(_score(request_id, 6, 4.0),))
    saver.start()
    assert synced.wait(10)
    closer = threading.Thread(target=journal.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # waits for the write
    go_on.set()
    saver.join(10)
    closer.join(10)
    assert _stored(db) == {(request_id, 6): 4.0}
    assert _segments(journal.directory) == []
    with pytest.raises(Unavailable):  # closed: nothing more is acknowledged
        journal.save(_score(request_id, 7, 4.0))


def test_an_unreadable_segment_is_set_aside_and_the_others_replayed(db: Database, tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    directory.mkdir()
    request_id = _request(db)
    payload = b'{"not": "a score"}'
    (directory / "1-1.wal").write_bytes(
        struct.pack("<II", len(payload), zlib.crc32(payload)) + payload + bytes(16)
    )
    good = FeedbackRecord(request_id, 5, "Movie 5", 3.0, None, "v1", at=utcnow())
    (directory / "2-2.wal").write_bytes(encode(good) + bytes(16))
    journal = FeedbackJournal(directory, db)
    try:
        assert journal.recover() == 1
    finally:
        journal.close()
    assert _stored(db) == {(request_id, 5): 3.0}
    assert sorted(p.name for p in directory.iterdir()) == ["1-1.unreadable", "clock"]  # clock: _stamp_after


def test_a_segment_a_killed_process_was_creating_is_deleted(tmp_path: Path) -> None:
    """A worker killed (OOM, harakiri) while it zero-filled a new segment left its ``*.new`` file, up
    to a segment's 4 MiB, for ever: nothing ever deleted one, and each such kill took more of the
    journal's disk. One another process is creating (locked) is left alone."""
    import fcntl
    import os

    directory = tmp_path / "journal"
    directory.mkdir()
    (directory / "1-1.new").write_bytes(bytes(8192))  # its creator died
    creating = directory / "2-2.new"
    creating.write_bytes(bytes(8192))
    holder = os.open(creating, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # its creator lives
    journal = FeedbackJournal(directory, Database(f"sqlite:///{tmp_path / 'unused.db'}"))
    try:
        journal.recover()
        assert sorted(p.name for p in directory.iterdir()) == ["2-2.new"]
    finally:
        journal.close()
        os.close(holder)


def test_shipped_segments_the_read_only_journal_cannot_delete_are_left_to_the_next_replay(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The journal's filesystem remounted read-only (ext4 ``errors=remount-ro``) after scores were
    journaled: once shipped, deleting their segment failed inside the shipper's bookkeeping, so a
    drain (the web UI's rating) raised OSError for scores that were stored, the other segments of
    the batch were never counted as shipped, and the exit said they stayed unshipped. Shipping
    stands; the segments are left (read-only) and the next process's replay changes nothing."""
    import errno

    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60, segment_bytes=512)
    request_id = _request(db)
    for movie_id in range(1, 11):
        journal.save(_score(request_id, movie_id, 3))
    on_disk = _segments(journal.directory)
    assert len(on_disk) > 2
    real_unlink = Path.unlink

    def read_only(path: Path, missing_ok: bool = False) -> None:
        if path.suffix == SUFFIX:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    with caplog.at_level(logging.INFO, logger="app.services.feedback_journal"):
        try:
            assert journal.drain() == 10
            assert journal.stats()["pending"] == 0
        finally:
            journal.close()
    assert not [r for r in caplog.records if "not shipped at exit" in r.getMessage()]
    assert _segments(journal.directory) == on_disk  # nothing could be deleted
    monkeypatch.undo()
    db.save_feedbacks([FeedbackRecord(request_id, 1, "Movie 1", 5.0, None, "v1", at=utcnow())])  # re-scored
    after = FeedbackJournal(journal.directory, db)
    try:
        assert after.recover() == 10
    finally:
        after.close()
    assert _stored(db) == {(request_id, m): (5.0 if m == 1 else 3) for m in range(1, 11)}
    assert _segments(journal.directory) == []


def test_a_write_failing_for_a_reason_that_passes_is_retried_not_set_aside(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only database (a failover) or a missing grant is not the record's fault."""
    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)
    request_id = _request(db)
    real_save = db.save_feedbacks
    failures = [
        ProgrammingError(
            "INSERT INTO feedback", {}, Exception("cannot execute INSERT in a read-only transaction")
        )
    ]

    def flaky(records: Any) -> None:
        if failures:
            raise failures.pop()
        real_save(records)

    monkeypatch.setattr(db, "save_feedbacks", flaky)
    try:
        journal.save(_score(request_id, 8, 2.5))
        with pytest.raises(DatabaseUnavailableError):
            journal.drain()
        assert journal.drain() == 1
    finally:
        journal.close()
    assert _stored(db) == {(request_id, 8): 2.5}
    assert journal.rejected == 0 and not (journal.directory / REJECTED).exists()


def test_a_later_score_wins_after_the_clock_steps_back(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second score of an (id, movie), sent after the first's 200, while NTP stepped the wall
    clock back: it was stamped earlier, and the upsert (newest wins) dropped it."""
    import app.services.feedback_journal as journal_module

    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)
    request_id = _request(db)
    now = utcnow()
    clock = iter([now, now - timedelta(seconds=30)])
    monkeypatch.setattr(journal_module, "utcnow", lambda: next(clock))
    try:
        journal.save(FeedbackRecord(request_id, 3, "Movie 3", 1.0, None, "v1"))
        journal.save(FeedbackRecord(request_id, 3, "Movie 3", 5.0, None, "v1"))
        journal.drain()
    finally:
        journal.close()
    assert _stored(db) == {(request_id, 3): 5.0}


def test_a_later_score_wins_after_the_clock_steps_back_when_another_worker_takes_it(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, with the second score reaching the other uwsgi worker (or a worker started since,
    after a restart): each worker kept its stamps in order only against its own, so the second
    score, stamped 30 s before the first, lost the upsert (newest wins) and was dropped."""
    import app.services.feedback_journal as journal_module

    directory = tmp_path / "journal"
    first = FeedbackJournal(directory, db, ship_interval=60)
    second = FeedbackJournal(directory, db, ship_interval=60)  # the other worker
    request_id = _request(db)
    now = utcnow()
    clock = iter([now, now - timedelta(seconds=30)])
    monkeypatch.setattr(journal_module, "utcnow", lambda: next(clock))
    try:
        first.save(FeedbackRecord(request_id, 3, "Movie 3", 1.0, None, "v1"))
        second.save(FeedbackRecord(request_id, 3, "Movie 3", 5.0, None, "v1"))
        second.drain()
        first.drain()  # shipped last: the order of the shipments does not decide
    finally:
        first.close()
        second.close()
    assert _stored(db) == {(request_id, 3): 5.0}


def test_a_score_after_a_host_crash_wins_over_the_replayed_ones_with_the_clock_come_back_behind(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host crash (a power loss) keeps the synced segments but not the ``clock`` file (never
    synced), and a host often comes back with its clock behind (the RTC's time until NTP steps
    it). A re-score just after the restart was stamped before the replayed score of the same (id,
    movie), acknowledged before it, and lost the upsert: a replay now keeps the directory's last
    stamp at or after the stamps of the records it replays."""
    import app.services.feedback_journal as journal_module
    from app.services.feedback_journal import CLOCK

    directory = tmp_path / "journal"
    request_id = _request(db)
    _write_scores_in_a_process(db, directory, request_id, "killed")  # the crash: 2.0 each, unshipped
    (directory / CLOCK).unlink()  # what the page cache held of it is gone
    behind = utcnow() - timedelta(seconds=20)
    monkeypatch.setattr(journal_module, "utcnow", lambda: behind)
    journal = FeedbackJournal(directory, db, ship_interval=60)
    try:
        assert journal.recover() == 10
        journal.save(_score(request_id, 1, 5.0))
        journal.drain()
    finally:
        journal.close()
    stored = _stored(db)
    assert stored[(request_id, 1)] == 5.0
    assert all(stored[(request_id, m)] == 2.0 for m in range(2, 11))


def test_a_stamp_left_far_ahead_by_a_wrong_clock_is_not_kept(tmp_path: Path) -> None:
    """A last stamp more than an hour ahead of the wall clock (a host that ran with a wrong clock)
    would keep every later score stamped in the future: scores are stamped by the wall clock again."""
    from app.services.feedback_journal import _CLOCK, _EPOCH, _MICROSECOND, CLOCK

    directory = tmp_path / "journal"
    directory.mkdir()
    ahead = utcnow() + timedelta(days=365)
    (directory / CLOCK).write_bytes(_CLOCK.pack((ahead - _EPOCH) // _MICROSECOND))
    journal = FeedbackJournal(directory, Database(f"sqlite:///{tmp_path / 'unused.db'}"), ship_interval=60)
    try:
        before = utcnow()
        journal.save(_score("r", 1, 3.0))
        (record,) = _on_disk(directory)
        assert record.at is not None and before <= record.at <= utcnow()
    finally:
        journal.close()


def test_records_after_one_damaged_on_disk_are_replayed(db: Database, tmp_path: Path) -> None:
    """A record damaged in the middle of a dead process's segment was read as its end: the
    acknowledged records after it were dropped and the segment deleted."""
    directory = tmp_path / "journal"
    directory.mkdir()
    request_id = _request(db)
    frames = [bytearray(encode(FeedbackRecord(request_id, m, f"Movie {m}", 4.0, None, "v1", at=utcnow())))
              for m in range(1, 6)]  # fmt: skip
    frames[1][-3] ^= 0x01  # record 2 damaged after it was synced
    (directory / f"1-1{SUFFIX}").write_bytes(b"".join(bytes(f) for f in frames) + bytes(4096))
    journal = FeedbackJournal(directory, db)
    try:
        journal.recover()
    finally:
        journal.close()
    assert set(_stored(db)) == {(request_id, m) for m in (1, 3, 4, 5)}


def test_a_full_disk_while_setting_a_refused_score_aside_keeps_the_segment_for_later(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaying a dead process's 1,200 scores, one refused for good, with rejected.jsonl not
    writable just then (disk full): the whole segment was renamed *.unreadable, and the scores of
    its later batches never replayed."""
    import errno

    import app.services.feedback_journal as journal_module

    directory = tmp_path / "journal"
    directory.mkdir()
    request_ids = [_request(db) for _ in range(120)]
    records = [
        FeedbackRecord(r, m, f"Movie {m}", 3.0, None, "v1", at=utcnow())
        for r in request_ids
        for m in range(1, 11)
    ]
    records[7] = FeedbackRecord("no-such-request", 1, "Movie 1", 3.0, None, "v1", at=utcnow())
    (directory / f"1-1{SUFFIX}").write_bytes(b"".join(encode(r) for r in records) + bytes(4096))
    append, full = journal_module.append_durably, [True]

    def no_space(path: Path, data: bytes) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(path, data)

    monkeypatch.setattr(journal_module, "append_durably", no_space)
    journal = FeedbackJournal(directory, db)
    try:
        journal.recover()  # kept, logged
        assert not list(directory.glob("*.unreadable"))
        full[0] = False  # space freed
        journal.recover()
    finally:
        journal.close()
    assert len(_stored(db)) == 1199  # every score but the refused one


def test_a_refused_score_cut_short_on_a_full_disk_is_replayed_once_it_is_set_aside_whole(
    db: Database, tmp_path: Path
) -> None:
    """Setting a refused score aside on a disk that took only part of its line (a full disk, a
    file-size limit) left that part at the end of rejected.jsonl. The shipper tried again and,
    with room again, appended the whole line right after it: one line that is no JSON, which
    ``replay-rejected`` kept "for the operator" and counted as refused again for ever, while the
    segment, the score's only other copy, was deleted. A failed append now takes its bytes back."""
    import resource
    import signal

    from app.services.feedback_journal import _rejected_line, replay_rejected

    directory = tmp_path / "journal"
    directory.mkdir()
    limit = 16_384  # segments of 4 KiB fit, rejected.jsonl is filled up to 20 bytes short of it
    earlier = _rejected_line(_score("earlier", 1, 1.0), ValueError("refused")).rstrip(b"\n")
    (directory / REJECTED).write_bytes(earlier.ljust(limit - 21) + b"\n")

    def refused_on_a_full_disk_then_with_room() -> bool:
        db.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        journal = FeedbackJournal(directory, db, ship_interval=3600, segment_bytes=4096)
        try:
            journal.save(_score("later", 2, 2.0))  # no such request yet: refused for good
            with pytest.raises(DatabaseUnavailableError):
                journal.drain()  # its line cut short: kept in the segment, retried
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again
            journal.drain()
            return journal.rejected == 1
        finally:
            journal.close()

    assert in_forked_child(refused_on_a_full_disk_then_with_room, timeout=60) == 0
    _request_with_id(db, "earlier")
    _request_with_id(db, "later")  # the cause fixed
    assert replay_rejected(directory, db) == (2, 0)
    assert _stored(db) == {("earlier", 1): 1.0, ("later", 2): 2.0}
    assert not (directory / REJECTED).exists()


_STOPPING_WORKER = """
import sys, time
from pathlib import Path
from app.services.feedback_journal import FeedbackJournal
from app.services.request_log import RequestLog, RowSpill
from app.storage.db import Database, FeedbackRecord
db, directory = Database(sys.argv[1]), Path(sys.argv[2])
# registered in the order create_app registers them (app/__init__.py)
log = RequestLog(db, flush_interval=3600, spill=RowSpill(directory))
journal = FeedbackJournal(directory, db, ship_interval=3600)
items = [{"movie_id": m, "title": f"Movie {m}", "score": 0.5} for m in range(1, 11)]
log.append([{"id": f"req-{i}", "age": 30, "gender": "F", "occupation": "artist", "user_id": None,
             "max_recs": 10, "model_version": "v1", "strategy": "segment", "items": items}
            for i in range(30)])
for movie_id in range(1, 11):
    journal.save(FeedbackRecord("req-0", movie_id, f"Movie {movie_id}", 2.0, None, "v1"))
print(time.time(), flush=True)  # then the exit hooks run, as in a worker stopped gracefully
"""


def _stop_a_worker(url: str, directory: Path) -> float:
    """Seconds a process holding 30 buffered request rows and 10 unshipped scores takes to exit."""
    out = subprocess.run(
        [sys.executable, "-c", _STOPPING_WORKER, url, str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return time.time() - float(out.stdout.split()[-1])


def test_a_stop_during_an_outage_spills_the_rows_and_keeps_the_scores_within_one_budget(
    tmp_path: Path,
) -> None:
    """With the database down, the request log's final flush retried 10 s, then the journal's
    another 10 s: 20 s of a 30 s stop grace (uwsgi.ini worker-reload-mercy, docker-compose.yml),
    and a worker killed before the rows were spilled lost them. Now both share one budget."""
    from app.exit_hooks import EXIT_SECONDS
    from app.services.request_log import RowSpill

    directory = tmp_path / "journal"
    took = _stop_a_worker("postgresql+psycopg://x@127.0.0.1:1/x", directory)  # nothing listens on port 1
    assert took < EXIT_SECONDS + 3
    spilled = [
        line for path in directory.glob(f"{RowSpill.PREFIX}*.jsonl") for line in path.read_text().splitlines()
    ]
    assert sorted(orjson.loads(line)["id"] for line in spilled) == sorted(f"req-{i}" for i in range(30))
    assert sorted(record.movie_id for record in _on_disk(directory)) == list(range(1, 11))


def test_a_stop_with_the_database_up_writes_the_rows_and_ships_the_scores(
    db: Database, tmp_path: Path
) -> None:
    from app.services.request_log import RowSpill

    directory = tmp_path / "journal"
    _stop_a_worker(db.engine.url.render_as_string(hide_password=False), directory)
    with db.session() as session:
        stored = set(session.scalars(select(RecommendationRequest.id)))
    assert stored == {f"req-{i}" for i in range(30)}
    assert _stored(db) == {("req-0", m): 2.0 for m in range(1, 11)}
    assert _segments(directory) == [] and not list(directory.glob(f"{RowSpill.PREFIX}*"))


# ---------------------------------------------------------------------- movierec feedback replay-rejected


def _request_with_id(db: Database, request_id: str) -> None:
    row = {
        "id": request_id, "age": 30, "gender": "F", "occupation": "artist", "user_id": None,
        "max_recs": 10, "model_version": "v1", "strategy": "segment", "items": ITEMS,
    }  # fmt: skip
    db.save_requests([row])


def _replay_command(db: Database, directory: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``movierec feedback replay-rejected`` against ``db``, whose journal directory is ``directory``."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli

    settings = SimpleNamespace(
        sqlalchemy_url=db.engine.url.render_as_string(hide_password=False), feedback_journal=directory
    )
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    return CliRunner().invoke(cli, ["feedback", "replay-rejected"])


def test_replay_rejected_stores_what_the_database_takes_now_and_keeps_the_rest(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs said the scores set aside in rejected.jsonl can be posted again by hand once the
    cause is fixed, but gave no way to: ``movierec feedback replay-rejected`` stores them through
    the journal's own write (idempotent), removes the stored ones from the file, keeps the ones
    refused again, and exits 1 while some are."""
    directory = tmp_path / "journal"
    journal = FeedbackJournal(directory, db, ship_interval=60)
    request_id = _request(db)
    try:
        journal.save(_score(request_id, 1, 4.0))
        journal.save(_score("late-request", 2, 3.0))  # foreign key: refused for good (until it exists)
        journal.save(_score("never", 3, 2.0))
        journal.drain()
    finally:
        journal.close()
    rejected = directory / REJECTED
    assert len(rejected.read_text().splitlines()) == 2
    _request_with_id(db, "late-request")  # the cause fixed for one of them

    result = _replay_command(db, directory, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "1 stored, 1 refused again" in result.output, result.output
    assert _stored(db) == {(request_id, 1): 4.0, ("late-request", 2): 3.0}
    left = rejected.read_text().splitlines()
    assert len(left) == 1 and '"request_id":"never"' in left[0]

    stored_line = orjson.dumps({**orjson.loads(left[0]), "request_id": "late-request", "movie_id": 2})
    with rejected.open("ab") as file:  # as if the removal had not happened: replayed twice
        file.write(stored_line + b"\n")
    result = _replay_command(db, directory, monkeypatch)
    assert result.exit_code == 1 and "1 stored, 1 refused again" in result.output, result.output
    with db.session() as session:
        assert session.scalar(select(func.count(Feedback.id))) == 2  # nothing stored twice

    _request_with_id(db, "never")
    result = _replay_command(db, directory, monkeypatch)
    assert result.exit_code == 0 and "1 stored, 0 refused again" in result.output, result.output
    assert _stored(db)[("never", 3)] == 2.0 and not rejected.exists()
    assert not (directory / REPLAYING).exists()
    result = _replay_command(db, directory, monkeypatch)
    assert result.exit_code == 0 and "no rejected scores" in result.output, result.output


def test_replay_rejected_keeps_what_the_journal_sets_aside_meanwhile(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's journal may append to rejected.jsonl while a replay runs: its records stay."""
    from app.services.feedback_journal import replay_rejected

    directory = tmp_path / "journal"
    journal = FeedbackJournal(directory, db, ship_interval=60)
    try:
        journal.save(_score("first", 1, 1.0))
        journal.drain()
        save_feedbacks = db.save_feedbacks

        def meanwhile(records: Any) -> None:
            monkeypatch.setattr(db, "save_feedbacks", save_feedbacks)
            journal.save(_score("meanwhile", 2, 2.0))  # refused by the service while the replay writes
            journal.drain()
            save_feedbacks(records)

        monkeypatch.setattr(db, "save_feedbacks", meanwhile)
        assert replay_rejected(directory, db) == (0, 1)
    finally:
        journal.close()
    lines = (directory / REJECTED).read_text().splitlines()
    assert sorted(orjson.loads(line)["request_id"] for line in lines) == ["first", "meanwhile"]


def test_replay_rejected_with_the_database_unreachable_keeps_every_score(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "journal"
    journal = FeedbackJournal(directory, db, ship_interval=60)
    try:
        for movie_id in (1, 2):
            journal.save(_score("nowhere", movie_id, 1.0))
        journal.drain()
    finally:
        journal.close()
    before = (directory / REJECTED).read_bytes()

    def unreachable(_self: Database, _records: Any) -> None:
        raise DatabaseUnavailableError("the database cannot be reached")

    monkeypatch.setattr(Database, "save_feedbacks", unreachable)  # the command's own Database
    result = _replay_command(db, directory, monkeypatch)
    assert result.exit_code == 1 and "cannot be reached" in result.output, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert (directory / REJECTED).read_bytes() == before
    assert not (directory / REPLAYING).exists()


def test_replay_rejected_takes_up_what_a_killed_replay_left_and_runs_once_at_a_time(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.durable import file_lock
    from app.services.feedback_journal import _rejected_line

    directory = tmp_path / "journal"
    directory.mkdir()
    request_id = _request(db)
    refused = ValueError("refused")
    (directory / REPLAYING).write_bytes(
        _rejected_line(_score(request_id, 1, 1.0), refused)
    )  # a killed replay's
    (directory / REJECTED).write_bytes(_rejected_line(_score(request_id, 2, 2.0), refused) + b"not json\n")
    with file_lock(directory / "rejected.replay-lock"):
        result = _replay_command(db, directory, monkeypatch)
    assert result.exit_code == 1 and "another replay" in result.output, result.output
    assert (directory / REPLAYING).exists()
    result = _replay_command(db, directory, monkeypatch)
    assert result.exit_code == 1 and "2 stored, 1 refused again" in result.output, result.output
    assert _stored(db) == {(request_id, 1): 1.0, (request_id, 2): 2.0}
    assert (directory / REJECTED).read_bytes() == b"not json\n" and not (directory / REPLAYING).exists()


def test_scores_refused_by_an_unwritable_journal_are_one_error_while_it_lasts(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full or read-only disk refuses every score (503), and each refusal wrote its own ERROR
    line: every client sending a score, or one sending them in a loop, added an ERROR, each
    a candidate alert email. The condition is logged when it starts, then at most every 30 s."""
    import errno
    import logging

    def full(self: _Segment, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    journal = FeedbackJournal(tmp_path / "journal", db, ship_interval=60)
    request_id = _request(db)
    monkeypatch.setattr(_Segment, "append", full)
    caplog.set_level(logging.ERROR, logger="app.services.feedback_journal")
    try:
        for movie_id in range(5):
            with pytest.raises(Unavailable):
                journal.save(_score(request_id, movie_id, 4.0))
    finally:
        monkeypatch.undo()
        journal.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors.count("feedback journal: a score could not be written") == 1, errors
