"""Write-behind request logging never loses an acknowledged id (API.md "Durability"), on real databases."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.services.request_ids import RequestIds
from app.storage.db import make_engine
from app.storage.models import Feedback, RecommendationRequest, as_utc
from tests.helpers import (
    PROFILE,
    answered_after_flush,
    database_down,
    database_unreachable,
    frame_running,
    held_by_another_thread,
    in_forked_child,
    record_calls,
    spilling_process,
)

pytestmark = pytest.mark.integration

SLOW_FLUSH = 30.0  # seconds: long enough that nothing is flushed unless something asks for it


def _count(app: Any, model: Any) -> int:
    with app.extensions["movierec"].db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def _feedback_count(app: Any) -> int:
    """Feedback rows once the app's acknowledged scores have left its journal (~0.1 s behind the 200)."""
    app.extensions["movierec"].recommendations.feedback.drain()
    return _count(app, Feedback)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'log.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_a_score_arriving_before_the_flush_is_accepted_and_both_rows_stored(
    make_app: Any, database_url: str, auth_headers: dict
) -> None:
    app = make_app(database_url=database_url, request_log_flush_seconds=SLOW_FLUSH)
    client = app.test_client()
    served = client.post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()
    log = app.extensions["movierec"].recommendations.request_log
    assert log.pending() == 1 and _count(app, RecommendationRequest) == 0  # really still pending
    score = {"id": served["id"], "movie": served["recommendations"][2], "score": 3.5}
    response = client.post("/api/recommend/score", json=score, headers=auth_headers)
    assert response.status_code == 200
    assert _count(app, RecommendationRequest) == 1 and _feedback_count(app) == 1
    wrong_movie = {**score, "movie": "Not Recommended (1900)"}
    assert client.post("/api/recommend/score", json=wrong_movie, headers=auth_headers).status_code == 400


def test_many_pending_rows_are_all_written_in_batches(
    make_app: Any, database_url: str, auth_headers: dict
) -> None:
    app = make_app(database_url=database_url, request_log_flush_seconds=0.01)
    client = app.test_client()
    ids = [
        client.post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()["id"] for _ in range(300)
    ]
    log = app.extensions["movierec"].recommendations.request_log
    deadline = time.monotonic() + 60
    while log.pending():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert _count(app, RecommendationRequest) == 300 == len(set(ids))
    assert log.written == 300


def test_a_score_reaching_another_worker_waits_for_the_pending_row(
    make_app: Any, postgres_url: str, auth_headers: dict
) -> None:
    """Two apps on one database and one JWT secret stand in for two uwsgi workers."""
    issuer = make_app(database_url=postgres_url, request_log_flush_seconds=SLOW_FLUSH)
    other_app = make_app(database_url=postgres_url)
    other = other_app.test_client()
    served = issuer.test_client().post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()
    score = {"id": served["id"], "movie": served["recommendations"][0], "score": 5}
    response, waited = answered_after_flush(
        lambda: other.post("/api/recommend/score", json=score, headers=auth_headers), issuer
    )
    assert response.status_code == 200 and waited >= 0.3
    assert _feedback_count(other_app) == 1


def test_ids_not_issued_here_are_refused_at_once(
    make_app: Any, postgres_url: str, auth_headers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused without waiting for another worker's flush: the database is read once, not polled."""
    app = make_app(database_url=postgres_url)
    client = app.test_client()
    served = client.post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()
    forged = [str(uuid.uuid4()), RequestIds(b"another secret").issue(), served["id"][:-1] + "0", "not-a-uuid"]
    reads = record_calls(monkeypatch, app.extensions["movierec"].recommendations.db, "served_request")
    for request_id in forged:
        if request_id == served["id"]:
            continue
        body = {"id": request_id, "movie": served["recommendations"][0], "score": 4}
        response = client.post("/api/recommend/score", json=body, headers=auth_headers)
        assert response.status_code == 400, request_id
        assert response.get_json()["error"]["fields"] == {
            "id": "must be a recommendation id issued by this service"
        }
        assert reads.count((request_id,)) <= 1, f"{request_id} was waited for"


def test_database_down_recommendations_served_scores_of_known_lists_journaled_rows_kept_and_retried(
    make_app: Any, postgres_url: str, auth_headers: dict
) -> None:
    app = make_app(database_url=postgres_url, request_log_flush_seconds=0.01)
    client = app.test_client()
    db = app.extensions["movierec"].db
    # a list this worker has seen scored: its next scores need nothing from the database
    known = client.post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()
    first = {"id": known["id"], "movie": known["recommendations"][0], "score": 2}
    app.extensions["movierec"].recommendations.request_log.flush()
    assert client.post("/api/recommend/score", json=first, headers=auth_headers).status_code == 200
    assert _feedback_count(app) == 1
    with database_down(app):
        served = [client.post("/api/recommend", json=PROFILE, headers=auth_headers) for _ in range(20)]
        assert all(r.status_code == 200 for r in served)
        body = served[0].get_json()
        score = {"id": body["id"], "movie": body["recommendations"][0], "score": 4}
        down = client.post("/api/recommend/score", json=score, headers=auth_headers)
        assert down.status_code == 503 and down.get_json()["error"]["code"] == "unavailable"
        # a score of the known list is durable in the journal: acknowledged, shipped later
        second = {**first, "movie": known["recommendations"][1], "score": 5}
        assert client.post("/api/recommend/score", json=second, headers=auth_headers).status_code == 200
        log = app.extensions["movierec"].recommendations.request_log
        journal = app.extensions["movierec"].recommendations.feedback
        # both background writers met the outage (a wait, not a time limit: on a loaded machine
        # their first try may come later than usual)
        _wait_for(
            lambda: log.failures >= 1 and journal.stats()["failures"] >= 1,
            60,
            f"the writers never tried the database: {log.stats()} {journal.stats()}",
        )
        assert log.pending() == 20 and log.failures >= 1
        assert journal.stats()["pending"] == 1 and journal.stats()["failures"] >= 1
    # the flusher backs off at most 5 s between attempts; the margin is for a loaded CI machine
    deadline = time.monotonic() + 45
    while log.pending() or journal.stats()["pending"]:
        assert time.monotonic() < deadline, "buffered rows were not retried after the database came back"
        time.sleep(0.05)
    assert _count(app, RecommendationRequest) == 21
    with db.session() as session:
        stored = {row.title: row.score for row in session.scalars(select(Feedback))}
    assert stored == {first["movie"]: 2.0, second["movie"]: 5.0}
    assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200


def test_a_write_failing_in_an_unforeseen_way_keeps_its_rows_and_retries(tmp_path: Path) -> None:
    """Not only database errors: rows whose write raised anything go back to the queue (left "in
    flight", no flusher would ever write them) and the flusher writes them once it can."""
    from app.services.request_log import RequestLog
    from app.storage.db import Database

    db = Database(f"sqlite:///{tmp_path / 'log.db'}")
    db.upgrade()
    real_save, calls = db.save_requests, []

    def flaky_save(rows: list[dict[str, Any]]) -> None:
        calls.append(len(rows))
        if len(calls) == 1:
            raise ValueError("a bug in the write path")
        real_save(rows)

    db.save_requests = flaky_save  # type: ignore[method-assign]
    log = RequestLog(db, flush_interval=0.01)
    log.append([{"id": f"row-{i}", "max_recs": 1, "model_version": "v", "strategy": "segment", "items": []}
                for i in range(5)])  # fmt: skip
    deadline = time.monotonic() + 30
    while log.pending():
        assert time.monotonic() < deadline, f"rows stranded: {log.stats()}"
        time.sleep(0.05)
    assert calls[0] == 5 and sum(calls[1:]) == 5
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(RecommendationRequest)) == 5
    log.close()
    db.dispose()


def test_a_child_forked_while_another_thread_held_the_log_logs_rows_of_its_own(tmp_path: Path) -> None:
    """A lock held by another thread at a fork stays held in the child for ever (that thread is not
    copied): a child forked while the flusher was between two waits hung in its first append."""
    from app.services.request_log import RequestLog
    from app.storage.db import Database

    db = Database(f"sqlite:///{tmp_path / 'fork.db'}")
    db.upgrade()
    log = RequestLog(db, flush_interval=3600)

    def row(request_id: str) -> dict[str, Any]:
        return {"id": request_id, "max_recs": 1, "model_version": "v", "strategy": "segment", "items": []}

    log.append([row("parent")])

    def child() -> bool:
        db.engine.dispose(close=False)  # connections of its own (the parent's stay the parent's)
        log.append([row("child")])
        return log.flush() == 2  # its own row and the one it inherited (writes are idempotent)

    with held_by_another_thread(log._lock):
        assert in_forked_child(child) == 0
    log.close()
    with db.session() as session:
        assert set(session.scalars(select(RecommendationRequest.id))) == {"parent", "child"}
    db.dispose()


def _flusher_waits_at(log: Any) -> str | None:
    """Where the log's flusher thread is parked: ``"idle"`` (waiting for rows, no timeout),
    ``"write_lock"`` (waiting for another writer), or None (elsewhere, or running)."""
    import inspect

    from app.services.request_log import RequestLog

    lines, start = inspect.getsourcelines(RequestLog._run)
    idle = start + next(i for i, line in enumerate(lines) if line.strip() == "self._wake.wait()")
    lock = start + next(i for i, line in enumerate(lines) if line.strip() == "with self._write_lock:")
    thread = log._thread
    innermost = sys._current_frames().get(thread.ident) if thread is not None else None
    frame = frame_running(innermost, RequestLog._run.__code__)
    if frame is None:
        return None
    if frame.f_lineno == idle and innermost.f_code.co_name == "wait":
        return "idle"
    if frame.f_lineno == lock and innermost is frame:
        return "write_lock"
    return None


def test_rows_a_failed_score_write_put_back_are_written_without_new_traffic(tmp_path: Path) -> None:
    """A score's persist() holds the rows while the flusher backs off from the outage: the flusher
    wakes, finds the queue empty (the rows are in flight) and sleeps until woken. When the
    persist fails, the rows go back and the flusher must be told, or it sleeps on with them
    (appends wake it only on an empty queue or a full batch): CI saw 20 rows pending 45 s after
    the database came back."""
    from app.services.request_log import RequestLog
    from app.storage.db import Database, DatabaseUnavailableError

    db = Database(f"sqlite:///{tmp_path / 'log.db'}")
    db.upgrade()
    real_save = db.save_requests
    database_down = threading.Event()
    database_down.set()
    persist_writing, persist_may_fail = threading.Event(), threading.Event()
    outcome: dict[str, BaseException] = {}

    def save(rows: list[dict[str, Any]]) -> None:
        if threading.current_thread().name == "score":  # the score's own write: held, then fails
            persist_writing.set()
            persist_may_fail.wait(10)
            raise DatabaseUnavailableError("connection refused")
        if database_down.is_set():
            raise DatabaseUnavailableError("connection refused")
        real_save(rows)

    def score() -> None:
        try:
            log.persist("row-0")
        except DatabaseUnavailableError as exc:
            outcome["error"] = exc

    db.save_requests = save  # type: ignore[method-assign]
    log = RequestLog(db, flush_interval=0.001, max_backoff=1.0)
    log.append([{"id": f"row-{i}", "max_recs": 1, "model_version": "v", "strategy": "segment", "items": []}
                for i in range(5)])  # fmt: skip
    deadline = time.monotonic() + 60
    while log.failures < 4:  # the flusher met the outage; its back-off is now 0.4 s or more
        assert time.monotonic() < deadline, log.stats()
        time.sleep(0.005)
    scorer = threading.Thread(target=score, name="score", daemon=True)
    scorer.start()
    assert persist_writing.wait(10)
    while (parked := _flusher_waits_at(log)) is None:
        assert time.monotonic() < deadline + 10, "the flusher neither sleeps nor waits for the writer"
        time.sleep(0.005)
    database_down.clear()  # the database is back; the score's write still fails
    persist_may_fail.set()
    scorer.join(10)
    assert isinstance(outcome.get("error"), DatabaseUnavailableError)
    deadline = time.monotonic() + 60
    while log.pending():
        assert time.monotonic() < deadline, f"rows left with a sleeping flusher ({parked}): {log.stats()}"
        time.sleep(0.01)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(RecommendationRequest)) == 5
    log.close()
    db.dispose()


def test_a_full_backlog_refuses_new_recommendations_instead_of_losing_them(
    make_app: Any, postgres_url: str, auth_headers: dict
) -> None:
    app = make_app(database_url=postgres_url, request_log_flush_seconds=SLOW_FLUSH, request_log_max_pending=3)
    client = app.test_client()
    statuses = [
        client.post("/api/recommend", json=PROFILE, headers=auth_headers).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 503]


def test_rows_being_written_count_against_the_backlog(tmp_path: Path) -> None:
    """docs/serving.md: past MOVIEREC_REQUEST_LOG_MAX_PENDING buffered rows a recommendation is
    refused. The rows of a write still in progress (a database that has not answered yet) are
    buffered too: they are lost if it fails, and counting only the rows waiting behind it let
    the buffer hold a whole batch more than the bound."""
    from app.errors import Unavailable
    from app.services.request_log import RequestLog
    from app.storage.db import Database

    db = Database(f"sqlite:///{tmp_path / 'log.db'}")
    db.upgrade()
    writing, release = threading.Event(), threading.Event()

    def hanging_write(rows: list[dict[str, Any]]) -> None:
        writing.set()
        release.wait(30)
        db.save_requests(rows)

    log = RequestLog(db, write=hanging_write, flush_interval=0.01, max_pending=3)
    try:
        log.append(_rows(3))
        assert writing.wait(10), "the flusher never began its write"
        with pytest.raises(Unavailable):
            log.append(_rows(1, "more"))
        assert log.pending() == 3
    finally:
        release.set()
        log.close(timeout=10)
    assert _stored_ids(db) == {f"row-{i}" for i in range(3)}
    db.dispose()


def test_rows_still_buffered_at_exit_are_written(tmp_path: Path) -> None:
    """A process that exits normally flushes its buffer (atexit), however long the flush interval."""
    url = f"sqlite:///{tmp_path / 'exit.db'}"
    script = textwrap.dedent(
        f"""
        from app.storage.db import Database
        from app.services.request_log import RequestLog
        db = Database({url!r})
        db.upgrade()
        log = RequestLog(db, flush_interval=3600)
        log.append([{{"id": f"row-{{i}}", "max_recs": 1, "model_version": "v", "strategy": "segment",
                      "items": []}} for i in range(250)])
        print(log.pending())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.stdout.strip().splitlines()[-1] == "250"
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(RecommendationRequest)) == 250
    engine.dispose()


def _rows(n: int, prefix: str = "row", version: str = "v") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "max_recs": 1, "model_version": version, "strategy": "segment", "items": []}
        for i in range(n)
    ]


def _stored_ids(db: Any) -> set[str]:
    with db.session() as session:
        return set(session.scalars(select(RecommendationRequest.id)))


def test_rows_the_database_would_not_take_at_exit_are_kept_on_disk_and_written_by_the_next_process(
    tmp_path: Path, postgres_url: str
) -> None:
    """A graceful stop with the database down (docker stop during an outage) kept the rows for
    10 s, then dropped them: every id served during the outage was lost, and a score of one got
    503 for ever. Now they go to the spill, and the next process writes them; a second close (the
    exit hooks run twice) does not wait again."""
    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url

    spill_dir = tmp_path / "journal"
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    log = RequestLog(down, flush_interval=3600, spill=RowSpill(spill_dir))
    log.append(_rows(30))
    started = time.monotonic()
    log.close(timeout=0.5)
    assert log.pending() == 0 and len(list(spill_dir.glob("requests-*.jsonl"))) == 1
    log.close(timeout=5)
    assert time.monotonic() - started < 4  # the second close returned at once
    down.dispose()

    db = Database(sqlalchemy_url(postgres_url))
    db.upgrade()
    later = RequestLog(db, spill=RowSpill(spill_dir))
    assert later.replay_spilled() == 30
    assert _stored_ids(db) == {f"row-{i}" for i in range(30)}
    assert not list(spill_dir.glob("requests-*.jsonl")) and not list(spill_dir.glob(".*partial"))
    assert later.replay_spilled() == 0
    later.close()
    db.dispose()


def test_rows_a_full_disk_cannot_keep_stay_buffered_and_leave_no_partial_file(tmp_path: Path) -> None:
    """A spill the disk could not take whole (full, or a file-size limit) left its half-written
    ``.requests-<pid>-<tag>-<ns>.jsonl.partial`` behind: a new name at each attempt (every second
    of an outage, and at exit), read and removed by nothing, so they kept the journal's disk full
    (and /health/ready at 503, every score refused) after the outage had ended. Now a failed
    spill removes what it wrote; its rows stay buffered, as before."""
    import resource

    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database

    spill_dir = tmp_path / "journal"
    spill_dir.mkdir()

    def spill_on_a_disk_too_small() -> bool:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
        log = RequestLog(down, flush_interval=3600, spill=RowSpill(spill_dir))
        log.append(_rows(200))  # ~16 KB of rows
        log.close(timeout=0)  # no time for the database: straight to the spill, which fails
        return log.pending() == 200

    assert in_forked_child(spill_on_a_disk_too_small, timeout=60) == 0
    assert [path.name for path in spill_dir.iterdir()] == []


def test_a_row_the_database_refuses_for_good_is_set_aside_and_the_rest_written(
    tmp_path: Path, postgres_url: str
) -> None:
    """One row PostgreSQL refuses (a model version longer than its column) failed every batch that
    held it, and nothing behind it was written again. Now it is set aside in
    rejected-requests.jsonl and the rows around it are written."""
    import orjson

    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url

    db = Database(sqlalchemy_url(postgres_url))
    db.upgrade()
    spill = RowSpill(tmp_path / "journal")
    log = RequestLog(db, flush_interval=0.01, spill=spill)
    log.append(_rows(5, "before"))
    log.append(_rows(1, "poison", version="v" * 65))
    log.append(_rows(5, "after"))
    deadline = time.monotonic() + 30
    while log.pending():
        assert time.monotonic() < deadline, f"rows stranded behind the refused one: {log.stats()}"
        time.sleep(0.05)
    assert _stored_ids(db) == {f"before-{i}" for i in range(5)} | {f"after-{i}" for i in range(5)}
    rejected = [
        orjson.loads(line) for line in (tmp_path / "journal" / RowSpill.REJECTED).read_bytes().splitlines()
    ]
    assert [row["id"] for row in rejected] == ["poison-0"] and "too long" in rejected[0]["error"]
    assert spill.rejected == 1
    log.append(_rows(3, "later"))
    log.flush()
    assert {f"later-{i}" for i in range(3)} <= _stored_ids(db)
    log.close()
    db.dispose()


def test_a_refused_row_in_a_backlog_flushed_at_once_is_looked_for_in_its_batch_only(
    tmp_path: Path, postgres_url: str
) -> None:
    """A flush (the exit's final one, a score's persist(), the UI's drain) wrote the whole backlog as
    one batch: with one row refused for good in it, every row of the backlog was then written alone
    to find it (after an outage, 50,000 statements: minutes, far past the 10 s a stopping worker
    has, and a worker killed then loses the rows it has not spilled). Now a flush writes batches of
    ``batch_size`` like the flusher, and only the refused row's batch is written row by row."""
    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url

    db = Database(sqlalchemy_url(postgres_url))
    db.upgrade()
    sizes: list[int] = []

    def write(rows: list[dict[str, Any]]) -> None:
        sizes.append(len(rows))
        db.save_requests(rows)

    log = RequestLog(
        db, write=write, spill=RowSpill(tmp_path / "journal"), flush_interval=SLOW_FLUSH, batch_size=50
    )
    try:
        for stage in ("flush", "persist"):
            sizes.clear()
            log.append(_rows(300, f"{stage}-before"))
            log.append(_rows(1, f"{stage}-poison", version="v" * 65))
            log.append(_rows(300, f"{stage}-after"))
            if stage == "flush":
                log.flush()
            else:
                assert log.persist(f"{stage}-after-299")
            assert max(sizes) <= 50, stage
            # the refused row's batch written row by row (and a last batch of one row)
            assert sizes.count(1) <= 50 + 1, f"{stage}: {sizes.count(1)} rows written alone"
            assert {f"{stage}-after-{i}" for i in range(300)} <= _stored_ids(db)
    finally:
        log.close()
        db.dispose()


def test_a_final_flush_in_batches_ends_within_its_budget_and_spills_the_rest(tmp_path: Path) -> None:
    """The final flush writes its batches one after the other; a database that takes each slowly
    (not hung: no statement deadline cuts it) must not keep a stopping worker past its budget."""
    import orjson

    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database

    db = Database(f"sqlite:///{tmp_path / 'log.db'}")
    db.upgrade()
    written: list[str] = []
    batches_started: list[float] = []  # time.monotonic() as each batch's write begins

    def slow_write(rows: list[dict[str, Any]]) -> None:
        batches_started.append(time.monotonic())
        time.sleep(0.2)
        db.save_requests(rows)
        written.extend(row["id"] for row in rows)

    spill = RowSpill(tmp_path / "journal")
    log = RequestLog(db, write=slow_write, spill=spill, flush_interval=SLOW_FLUSH, batch_size=10)
    log.append(_rows(200))  # twenty batches: 4 s
    stopping = time.monotonic()
    log.close(timeout=1.0)
    # No batch begins once the 1 s budget is over, and each takes 0.2 s at least, however fast
    # the machine: 6 at most begin during the stop (the budget restarted, or ignored, 10 or 20)
    begun = [moment for moment in batches_started if moment >= stopping]
    assert 0 < len(begun) <= 6, len(begun)
    spilled = [
        orjson.loads(line)["id"]
        for path in spill.directory.glob(f"{RowSpill.PREFIX}*.jsonl")
        for line in path.read_bytes().splitlines()
    ]
    assert written and spilled
    assert sorted(written + spilled) == sorted(f"row-{i}" for i in range(200))
    db.dispose()


def test_the_app_writes_spilled_rows_when_it_starts(
    make_app: Any, make_settings: Any, postgres_url: str
) -> None:
    from app.services.request_log import RowSpill

    settings = make_settings(database_url=postgres_url)
    RowSpill(settings.feedback_journal).save(_rows(4, "left"))
    app = make_app(database_url=postgres_url)
    log = app.extensions["movierec"].recommendations.request_log
    assert log.spill is not None and log.spill.directory == settings.feedback_journal
    assert {f"left-{i}" for i in range(4)} <= _stored_ids(app.extensions["movierec"].db)
    assert not list(settings.feedback_journal.glob("requests-*.jsonl"))


def test_a_damaged_spill_file_is_set_aside_and_the_others_written(tmp_path: Path) -> None:
    """The first file in order that did not parse stopped the replay, at every start and every
    30 s: the rows of the files after it were never written, and their ids' scores got 503."""
    from app.services.request_log import RowSpill
    from app.storage.db import Database

    db = Database(f"sqlite:///{tmp_path / 'spill.db'}")
    db.upgrade()
    spill = RowSpill(tmp_path / "journal")
    spill.directory.mkdir()
    (spill.directory / "requests-1-1.jsonl").write_bytes(
        b'{"id": "broken-0", "max_recs": 1'
    )  # damaged on disk
    spill.save(_rows(3, prefix="good"))
    spill.replay(db.save_requests, 500)
    assert _stored_ids(db) == {"good-0", "good-1", "good-2"}
    assert [p.name for p in spill.directory.iterdir() if p.suffix == ".unreadable"] == [
        "requests-1-1.unreadable"
    ]
    db.dispose()


@contextmanager
def _silent_able_database(postgres_url: str) -> Iterator[tuple[Any, threading.Event]]:
    """A migrated database reached through a relay that goes silent (accepts, never answers) while
    the event is set; the Database has no statement deadline of its own."""
    from sqlalchemy import make_url

    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url
    from tests.integration.reliability import tcp_relay

    direct = make_url(sqlalchemy_url(postgres_url))
    Database(sqlalchemy_url(postgres_url)).upgrade()
    silent = threading.Event()
    with tcp_relay((direct.host or "127.0.0.1", direct.port or 5432), silent) as relay:
        relayed = direct.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
        db = Database(relayed)
        assert db.ping()
        try:
            yield db, silent
        finally:
            silent.clear()
            relay.cut()
            db.engine.dispose()


def _spilled_rows(spill_dir: Path) -> list[str]:
    """The ids of every row in the spill files, as often as they are there."""
    import orjson

    return [
        orjson.loads(line)["id"]
        for path in spill_dir.glob("requests-*.jsonl")
        for line in path.read_bytes().splitlines()
    ]


def _spilled_ids(spill_dir: Path) -> set[str]:
    return set(_spilled_rows(spill_dir))


def _wait_for(condition: Callable[[], bool], seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.02)


def test_a_stop_while_a_batch_hangs_in_a_silent_database_spills_that_batch_too(
    tmp_path: Path, postgres_url: str
) -> None:
    """The flusher's batch was in flight when the database stopped answering (it accepts, never
    replies). The stop waited its budget for the flusher, then spilled only the rows still
    pending: the batch in flight, acknowledged recommendations, was dropped, and a final flush
    given time left would have waited on that write without a bound. Now the stop ends within
    its budget and the in-flight rows are on disk with the rest."""
    from app.services.request_log import RequestLog, RowSpill

    spill_dir = tmp_path / "journal"
    with _silent_able_database(postgres_url) as (db, silent):
        log = RequestLog(db, flush_interval=0.01, spill=RowSpill(spill_dir))
        silent.set()
        log.append(_rows(30))
        deadline = time.monotonic() + 60
        while log.stats()["pending"] and not log._inflight:  # the flusher's batch is on its way
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)  # ... and stuck in the silent database
        log.append(_rows(5, "later"))  # and more queued behind it
        started = time.monotonic()
        log.close(timeout=1.0)
        assert time.monotonic() - started < 2.5
        assert _spilled_ids(spill_dir) == {f"row-{i}" for i in range(30)} | {f"later-{i}" for i in range(5)}


def test_a_stop_against_a_silent_database_ends_within_its_budget(tmp_path: Path, postgres_url: str) -> None:
    """The exit budget bounded the wait for a write in flight, not the final write itself: a
    database that stopped answering held it for the whole statement deadline (15 s, or for ever
    without one) of the 10 s a stopping worker has. The write is now cut at the budget's end and
    the rows spilled."""
    from app.services.request_log import RequestLog, RowSpill

    spill_dir = tmp_path / "journal"
    with _silent_able_database(postgres_url) as (db, silent):
        log = RequestLog(db, flush_interval=3600, spill=RowSpill(spill_dir))  # nothing written before
        log.append(_rows(20))
        silent.set()
        started = time.monotonic()
        log.close(timeout=1.0)
        assert time.monotonic() - started < 3.0
        assert _spilled_ids(spill_dir) == {f"row-{i}" for i in range(20)}


def _created_at(db: Any) -> dict[str, datetime]:
    with db.session() as session:
        return {row.id: as_utc(row.created_at) for row in session.scalars(select(RecommendationRequest))}


def test_a_row_served_during_an_outage_keeps_its_served_time_when_written_later(
    make_app: Any, postgres_url: str, auth_headers: dict
) -> None:
    """The online monitor's windows (breaker, drift, coverage) place a list by its row's
    created_at: that must be the time the list was served, not the time the database took the
    row, whether the flusher writes it after an outage or a score persists it first."""
    app = make_app(database_url=postgres_url, request_log_flush_seconds=0.01)
    client = app.test_client()
    db = app.extensions["movierec"].db
    log = app.extensions["movierec"].recommendations.request_log
    with database_down(app):
        before = datetime.now(UTC)
        served = [client.post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()["id"]]
        batch = client.post("/api/recommend/batch", json={"requests": [PROFILE] * 2}, headers=auth_headers)
        served += [item["id"] for item in batch.get_json()["results"]]
        after = datetime.now(UTC)
        deadline = time.monotonic() + 60
        while log.failures < 2:  # the flusher met the outage, twice
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(1.0)  # an outage long enough to tell the served time from the written one
    back = datetime.now(UTC)
    deadline = time.monotonic() + 45
    while log.pending():
        assert time.monotonic() < deadline, "buffered rows were not retried after the database came back"
        time.sleep(0.05)
    stored = _created_at(db)
    assert all(before <= stored[request_id] <= after < back for request_id in served), stored

    # a score that persists its list's row before the flusher does writes the same served time
    slow = make_app(database_url=postgres_url, request_log_flush_seconds=SLOW_FLUSH)
    client = slow.test_client()
    before = datetime.now(UTC)
    body = client.post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()
    after = datetime.now(UTC)
    time.sleep(1.0)
    score = {"id": body["id"], "movie": body["recommendations"][0], "score": 4}
    assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200
    assert before <= _created_at(db)[body["id"]] <= after


def test_rows_spilled_at_exit_are_written_with_the_time_they_were_served(
    tmp_path: Path, postgres_url: str
) -> None:
    """Rows kept on disk through an outage are written by the next process with the time they were
    served. Files spilled by earlier releases are still written: with the time they hold (ISO text,
    the time the row was queued), or, holding none, at the replay time."""
    import orjson

    from app.recommender.bundle import RecommendQuery
    from app.services.recommendations import RecommendationService, Served
    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url

    spill_dir = tmp_path / "journal"
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")  # nothing listens on port 1
    log = RequestLog(down, flush_interval=3600, spill=RowSpill(spill_dir))
    query = RecommendQuery(max_recs=1, age=30, gender="F", occupation="writer")
    before = datetime.now(UTC)
    log.append(
        [RecommendationService.log_row(Served(f"served-{i}", [], "v", "segment"), query) for i in range(3)]
    )
    after = datetime.now(UTC)
    log.close(timeout=0.5)
    down.dispose()
    queued = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    older = [{**row, "created_at": queued} for row in _rows(2, "iso")] + _rows(2, "unstamped")
    (spill_dir / f"{RowSpill.PREFIX}1-1.jsonl").write_bytes(
        b"".join(orjson.dumps(row) + b"\n" for row in older)
    )
    time.sleep(1.0)  # the replay is later than any served time

    db = Database(sqlalchemy_url(postgres_url))
    db.upgrade()
    later = RequestLog(db, spill=RowSpill(spill_dir))
    replayed = datetime.now(UTC)
    assert later.replay_spilled() == 7
    stored = _created_at(db)
    assert all(before <= stored[f"served-{i}"] <= after for i in range(3)), stored
    assert stored["iso-0"] == stored["iso-1"] == queued
    assert all(stored[f"unstamped-{i}"] >= replayed for i in range(2)), stored
    later.close()
    db.dispose()


def test_rows_acknowledged_during_an_outage_reach_the_disk_while_it_lasts_and_are_written_once_after(
    make_app: Any, postgres_url: str, auth_headers: dict
) -> None:
    """While the database refused writes, the rows of the lists served stayed in memory, and
    reached the disk only at a graceful exit: a hard kill during an outage (SIGKILL, the OOM
    killer, harakiri, a host crash) lost every id acknowledged since it began. Now the flusher
    keeps them on disk within about a second, in files of their own (no row twice); they stay
    buffered too (a score of one still finds its list here), are written from memory once the
    database is back, and their files are removed then: nothing is left to replay."""
    app = make_app(database_url=postgres_url, request_log_flush_seconds=0.01)
    client = app.test_client()
    services = app.extensions["movierec"]
    log, spill_dir = services.recommendations.request_log, services.settings.feedback_journal

    def served(count: int) -> set[str]:
        return {
            client.post("/api/recommend", json=PROFILE, headers=auth_headers).get_json()["id"]
            for _ in range(count)
        }

    with database_down(app):
        first = served(5)
        _wait_for(lambda: first <= _spilled_ids(spill_dir), 10, "ids acknowledged in an outage not on disk")
        second = served(3)
        _wait_for(lambda: second <= _spilled_ids(spill_dir), 10, "later ids of the outage not on disk")
        assert sorted(_spilled_rows(spill_dir)) == sorted(first | second)  # each row once
        assert log.pending() == 8 and all(log.get(request_id) for request_id in first | second)
    _wait_for(lambda: not log.pending(), 45, "buffered rows were not retried after the database came back")
    _wait_for(lambda: not _spilled_rows(spill_dir), 10, "rows written from memory left their files behind")
    assert _stored_ids(services.db) == first | second


def test_rows_acknowledged_during_an_outage_survive_a_hard_kill(tmp_path: Path, postgres_url: str) -> None:
    """A worker SIGKILLed while the database was unreachable lost every row it had buffered since
    the outage began: the ids were acknowledged, their scores answered 503 for good. Now those
    rows are on disk within about a second, and the process that comes next writes them."""
    from urllib.parse import urlsplit

    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url
    from tests.integration.reliability import tcp_relay

    db = Database(sqlalchemy_url(postgres_url))
    db.upgrade()
    spill_dir = tmp_path / "journal"
    address = urlsplit(postgres_url)
    with tcp_relay((address.hostname or "127.0.0.1", address.port or 5432)) as relay:
        relayed = address._replace(netloc=f"{address.username}@127.0.0.1:{relay.port}").geturl()
        script = textwrap.dedent(
            f"""
            import sys
            from pathlib import Path
            from app.services.request_log import RequestLog, RowSpill
            from app.storage.db import Database
            log = RequestLog(Database({sqlalchemy_url(relayed)!r}), flush_interval=0.01,
                             spill=RowSpill(Path({str(spill_dir)!r})))
            for line in sys.stdin:  # "<prefix> <count>": rows served, then acknowledged
                prefix, count = line.split()
                log.append([{{"id": f"{{prefix}}-{{i}}", "max_recs": 1, "model_version": "v",
                              "strategy": "segment", "items": []}} for i in range(int(count))])
                print("acknowledged", flush=True)
            """
        )
        worker = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert worker.stdin is not None and worker.stdout is not None

        def serve(prefix: str, count: int) -> set[str]:
            worker.stdin.write(f"{prefix} {count}\n")
            worker.stdin.flush()
            assert worker.stdout.readline().strip() == "acknowledged"
            return {f"{prefix}-{i}" for i in range(count)}

        try:
            before = serve("before", 5)
            _wait_for(lambda: _stored_ids(db) == before, 10, "rows not written with the database up")
            relay.cut()  # the database gone: refused, its connections reset
            during = serve("outage", 20)
            _wait_for(
                lambda: during <= _spilled_ids(spill_dir), 10, "ids acknowledged in an outage not on disk"
            )
            worker.kill()  # SIGKILL, still in the outage: no exit hook runs
            assert worker.wait(10) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    replacement = RequestLog(db, spill=RowSpill(spill_dir))
    assert replacement.replay_spilled() == 20
    assert _stored_ids(db) == before | during
    assert not _spilled_rows(spill_dir)
    replacement.close()
    db.dispose()


def test_a_live_workers_spill_files_are_left_to_it_and_an_ended_ones_replayed(tmp_path: Path) -> None:
    """Every worker replayed the files another worker kept on disk during an outage, one write
    and one directory fsync a file, holding up its own flusher after recovery, while that worker
    wrote the same rows from memory (and removes its files once they are committed). Files of a
    live process of this host are now left to it; once it has ended (a hard kill), anyone's
    replay writes them. This process's own files, not kept by its log, are replayed as before."""
    from app.services.request_log import RowSpill

    spill = RowSpill(tmp_path / "journal")
    written: list[dict[str, Any]] = []
    with spilling_process(spill.directory, ["live-0", "live-1"]) as theirs:
        spill.save(_rows(1, "own"))
        assert spill.replay(written.extend, batch_size=500) == 1
        assert [row["id"] for row in written] == ["own-0"] and theirs.exists()
    assert spill.replay(written.extend, batch_size=500) == 2  # its writer ended: written by anyone
    assert sorted(row["id"] for row in written) == ["live-0", "live-1", "own-0"]
    assert not _spilled_rows(spill.directory)


@pytest.mark.parametrize("back_at_the_stop", [False, True])
def test_a_stop_after_rows_reached_the_disk_in_an_outage_neither_spills_nor_replays_them_twice(
    tmp_path: Path, postgres_url: str, back_at_the_stop: bool
) -> None:
    """The rows the flusher already keeps on disk are not written there again at exit (the exit's
    spill holds the rest, and the replay gets every row once); and when the database is back in
    time for the exit's flush, their files are removed with the rows written, not replayed by the
    next process."""
    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url

    db = Database(sqlalchemy_url(postgres_url))
    db.upgrade()
    spill_dir = tmp_path / "journal"
    log = RequestLog(db, flush_interval=0.01, spill=RowSpill(spill_dir))
    with database_unreachable(db):
        log.append(_rows(10, "early"))
        _wait_for(lambda: len(_spilled_rows(spill_dir)) == 10, 10, "rows of an outage not on disk")
        log.append(_rows(5, "late"))
        if not back_at_the_stop:
            log.close(timeout=0.5)
    every_row = sorted(f"early-{i}" for i in range(10)) + sorted(f"late-{i}" for i in range(5))
    if back_at_the_stop:
        log.close(timeout=5)
        assert sorted(_stored_ids(db)) == every_row and not _spilled_rows(spill_dir)
    else:
        assert log.pending() == 0 and sorted(_spilled_rows(spill_dir)) == every_row
    db.dispose()


def test_rows_ended_processes_kept_on_disk_are_written_without_new_traffic(
    tmp_path: Path, postgres_url: str
) -> None:
    """docs/serving.md promised the rows an ended process kept on disk are written "every 30 s
    while any wait"; they were written only at a start, or after this process wrote rows of its
    own: a worker with no new recommendations left them waiting, their ids' scores answering
    503. Now an idle flusher looks at that interval, and a start that met the database down leaves
    the flusher retrying."""
    from app.services.request_log import RequestLog, RowSpill
    from app.storage.db import Database
    from tests.helpers import sqlalchemy_url

    db = Database(sqlalchemy_url(postgres_url))
    db.upgrade()
    spill = RowSpill(tmp_path / "journal", interval=0.2)
    RowSpill(spill.directory).save(_rows(3, "left-at-start"))
    log = RequestLog(db, flush_interval=0.01, spill=spill)
    try:
        with database_unreachable(db):
            assert log.recover_spilled() == 0  # the start: the database is down, nothing written
        _wait_for(
            lambda: _stored_ids(db) == {f"left-at-start-{i}" for i in range(3)},
            10,
            "rows kept on disk not written once the database was back",
        )
        log.append(_rows(2, "own"))
        _wait_for(lambda: not log.pending(), 10, "the flusher did not write")
        RowSpill(spill.directory).save(_rows(3, "left-later"))  # a sibling stopped in an outage
        _wait_for(
            lambda: {f"left-later-{i}" for i in range(3)} <= _stored_ids(db),
            10,
            "rows kept on disk waited for new traffic",
        )
        assert not _spilled_rows(spill.directory)
    finally:
        log.close()
        db.dispose()
