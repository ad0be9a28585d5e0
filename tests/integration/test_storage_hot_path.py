"""The score path's storage: one-statement writes, idempotent retries, dead pooled connections.

On real databases: SQLite and the local PostgreSQL (fresh database per test).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

import app.storage.db as db_module
from app.storage.db import Database, DatabaseUnavailableError, FeedbackRecord
from app.storage.models import Feedback, RecommendationRequest
from tests.helpers import sqlalchemy_url

pytestmark = pytest.mark.integration

ITEMS = [{"movie_id": 7, "title": "Movie 7", "score": 0.9}, {"movie_id": 9, "title": "Movie 9", "score": 0.5}]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hot.db'}"
    else:
        url = sqlalchemy_url(str(request.getfixturevalue("postgres_url")))
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def pg(postgres_url: str) -> Any:
    database = Database(sqlalchemy_url(postgres_url))
    database.upgrade()
    yield database
    database.dispose()


def _row(request_id: str | None = None) -> dict[str, Any]:
    return {
        "id": request_id or uuid.uuid4().hex,
        "age": 30,
        "gender": "F",
        "occupation": "artist",
        "user_id": None,
        "max_recs": 2,
        "model_version": "v1",
        "strategy": "segment",
        "items": ITEMS,
    }


def _count(database: Database, model: Any) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)))


def _kill_connections(postgres_url: str) -> int:
    """Terminate every server process of the test database (as a restart would)."""
    name = postgres_url.rsplit("/", 1)[1]
    admin = postgres_url.rsplit("/", 1)[0] + "/test"
    with psycopg.connect(admin, autocommit=True) as connection:
        killed = connection.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
    return int(killed[0]) if killed else 0


def test_a_batch_retried_after_part_of_it_landed_stores_every_row_once(db: Database) -> None:
    rows = [_row() for _ in range(5)]
    db.save_requests(rows[:2])  # the part whose commit landed before the connection dropped
    db.save_requests(rows)  # the retry of the whole batch (PostgreSQL: COPY meets a duplicate)
    assert _count(db, RecommendationRequest) == 5
    stored = db.served_request(rows[3]["id"])
    assert stored is not None
    assert stored.items == ITEMS and stored.model_version == "v1"
    assert stored.inputs == {"age": 30, "gender": "F", "occupation": "artist", "user_id": None}
    assert db.served_request("never-issued") is None


def test_a_rescore_updates_the_one_row_and_keeps_its_prediction(db: Database) -> None:
    row = _row()
    db.save_requests([row])
    db.save_feedback(FeedbackRecord(row["id"], 7, "Movie 7", 2.0, 3.25, "v1"))
    db.save_feedback(FeedbackRecord(row["id"], 7, "Movie 7", 4.5, None, "v1"))
    db.save_feedback(FeedbackRecord(row["id"], 9, "Movie 9", 1.0, None, "v1"))
    with db.session() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.movie_id)).all()
        got = [(r.movie_id, r.score, r.predicted_score, r.updated_at >= r.created_at) for r in rows]
    assert got == [(7, 4.5, 3.25, True), (9, 1.0, None, True)]


def test_a_batch_of_scores_is_one_write_and_the_last_score_of_a_pair_wins(db: Database) -> None:
    first, second = _row(), _row()
    db.save_requests([first, second])
    db.save_feedbacks(
        [
            FeedbackRecord(first["id"], 7, "Movie 7", 2, None, "v1"),  # an int score, no prediction
            FeedbackRecord(second["id"], 9, "Movie 9", 3.5, None, "v2"),
            FeedbackRecord(first["id"], 7, "Movie 7", 4.5, None, "v1"),  # same pair again: this wins
        ]
    )
    db.save_feedbacks([FeedbackRecord(second["id"], 7, "Movie 7", 1.0, 3.75, "v2")])
    with db.session() as session:
        rows = session.scalars(select(Feedback).order_by(Feedback.request_id, Feedback.movie_id)).all()
        got = {(r.request_id, r.movie_id, r.title, r.score, r.predicted_score, r.model_version) for r in rows}
    assert got == {
        (first["id"], 7, "Movie 7", 4.5, None, "v1"),
        (second["id"], 9, "Movie 9", 3.5, None, "v2"),
        (second["id"], 7, "Movie 7", 1.0, 3.75, "v2"),
    }


def test_a_batch_naming_an_unknown_request_stores_nothing(db: Database) -> None:
    row = _row()
    db.save_requests([row])
    with pytest.raises(IntegrityError):
        db.save_feedbacks(
            [
                FeedbackRecord(row["id"], 7, "Movie 7", 4.0, None, "v1"),
                FeedbackRecord("nope", 7, "M", 1.0, None, "v1"),
            ]
        )
    assert _count(db, Feedback) == 0


def _stored_row_then_restart(pg: Database, postgres_url: str, *, pooled: int = 1) -> dict[str, Any]:
    """A stored request row and ``pooled`` connections waiting in the pool, all then killed by the
    server (as a restart would)."""
    row = _row()
    pg.save_requests([row])
    assert pg.served_request(row["id"]) is not None  # a connection now waits in the pool
    held = [pg.engine.connect() for _ in range(pooled)]  # at once: ``pooled`` of them wait there
    for connection in held:
        connection.exec_driver_sql("SELECT 1")
    for connection in held:
        connection.close()
    assert _kill_connections(postgres_url) >= pooled
    return row


def test_an_idle_connection_killed_by_the_server_costs_no_request(
    pg: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stored_row_then_restart(pg, postgres_url)
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 0.0)  # it has been idle "long enough"
    assert _count(pg, RecommendationRequest) == 1  # through a session: no retry, only the ping saves it


def test_a_busy_connection_killed_under_it_is_retried_once_for_idempotent_statements(
    pg: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = _stored_row_then_restart(pg, postgres_url)
    monkeypatch.setattr(
        db_module, "IDLE_PING_SECONDS", 3600.0
    )  # never pinged: the kill is found by the write
    pg.save_feedback(FeedbackRecord(row["id"], 7, "Movie 7", 5.0, None, "v1"))
    assert _count(pg, Feedback) == 1


def test_a_restart_that_killed_every_pooled_connection_costs_the_score_no_error(
    pg: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry of a score write gets a live connection, not the next dead one from the pool."""
    row = _stored_row_then_restart(pg, postgres_url, pooled=3)
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 3600.0)  # never pinged
    pg.save_feedback(FeedbackRecord(row["id"], 7, "Movie 7", 5.0, None, "v1"))
    pg.save_feedback(FeedbackRecord(row["id"], 9, "Movie 9", 4.0, None, "v1"))
    assert _count(pg, Feedback) == 2


def test_a_request_log_batch_meeting_a_killed_connection_is_stored_once(
    pg: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``COPY`` is retried once on a fresh connection, like the score write."""
    _stored_row_then_restart(pg, postgres_url, pooled=3)
    monkeypatch.setattr(db_module, "IDLE_PING_SECONDS", 3600.0)  # never pinged: the COPY finds the kill
    rows = [_row() for _ in range(3)]
    pg.save_requests(rows)
    assert _count(pg, RecommendationRequest) == 4
    assert all(pg.served_request(row["id"]) is not None for row in rows)


def test_a_request_log_batch_with_a_bad_row_stores_none_of_it(pg: Database) -> None:
    """One ``COPY`` is one transaction even without ``BEGIN``: a failing row leaves nothing behind."""
    rows = [_row() for _ in range(3)]
    rows[2]["gender"] = "too long for the column"
    with pytest.raises(DataError):
        pg.save_requests(rows)
    assert _count(pg, RecommendationRequest) == 0
    pg.save_requests(rows[:2])  # and the connection it used is fit for the next batch
    assert _count(pg, RecommendationRequest) == 2


def test_no_database_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    database = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(DatabaseUnavailableError):
        database.served_request("x")
    with pytest.raises(DatabaseUnavailableError):
        database.save_feedback(FeedbackRecord("x", 1, "Movie 1", 3.0, None, "v1"))
    with pytest.raises(DatabaseUnavailableError):
        database.save_requests([_row()])
    database.dispose()


def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "hot.db").mkdir()  # a directory where the database file should be
    database = Database(f"sqlite:///{tmp_path / 'hot.db'}")
    with pytest.raises(DatabaseUnavailableError):
        database.served_request("x")
    database.dispose()


def test_bad_sql_on_sqlite_is_a_bug_not_an_unavailable_database(tmp_path: Path) -> None:
    """SQLite reports bad SQL as ``OperationalError`` too; it must not become a 503 "retry later"."""
    database = Database(f"sqlite:///{tmp_path / 'hot.db'}")
    database.upgrade()
    with pytest.raises(OperationalError) as raised:
        database.run(lambda connection: connection.execute(text("SELECT no_such_column FROM feedback")))
    assert not isinstance(raised.value, DatabaseUnavailableError)
    database.dispose()
