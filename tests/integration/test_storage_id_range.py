"""Row ids that every score consumes do not run out: ``feedback.id`` is 64-bit on PostgreSQL.

Every ``INSERT … ON CONFLICT DO UPDATE`` of the score path takes a value from the id's sequence,
updates, retries and journal replays included. As a 32-bit ``serial`` (migration 0001) it passed
2^31-1 within weeks at ~1,000 scores/s; PostgreSQL then refused every new score
("reached maximum value of sequence"), a ``DataError`` the feedback journal sets aside for good
in ``rejected.jsonl``. Migration 0007 makes the column and its sequence ``bigint``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from app.storage.db import MIGRATIONS, Database, FeedbackRecord
from tests.helpers import PROFILE, login, migrate, sqlalchemy_url, stored_feedback

pytestmark = pytest.mark.integration

INT32_MAX = 2**31 - 1
BEFORE_BIGINT = "0006_breaker_per_version"
HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()  # 0007 or a later one: what pg.upgrade() reaches


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    database = Database(sqlalchemy_url(postgres_url))
    yield database
    database.dispose()


def _request(database: Database) -> str:
    request_id = uuid.uuid4().hex
    database.save_requests(
        [
            {
                "id": request_id, "age": 30, "gender": "F", "occupation": "artist", "user_id": None,
                "max_recs": 2, "model_version": "v1", "strategy": "segment",
                "items": [{"movie_id": 7, "title": "Movie 7", "score": 0.9}],
            }
        ]
    )  # fmt: skip
    return request_id


def _score(request_id: str, movie_id: int = 7, score: float = 4.0) -> FeedbackRecord:
    return FeedbackRecord(request_id, movie_id, f"Movie {movie_id}", score, 3.5, "v1")


def _sql(database: Database, sql: str, **params: Any) -> Any:
    with database.engine.begin() as connection:
        result = connection.execute(text(sql), params)
        return result.scalar() if result.returns_rows else None


def _id_types(database: Database) -> tuple[str, str]:
    """The data types of ``feedback.id`` and of its sequence."""
    column = _sql(
        database,
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'feedback' AND column_name = 'id'",
    )
    sequence = _sql(
        database,
        "SELECT data_type FROM information_schema.sequences WHERE sequence_name = "
        "split_part(pg_get_serial_sequence('feedback', 'id'), '.', 2)",
    )
    return column, sequence


def _past_int32(database: Database) -> None:
    """The sequence as it is after 2^31-1 insert attempts (every upsert consumes a value)."""
    _sql(database, "SELECT setval(pg_get_serial_sequence('feedback', 'id'), :at)", at=INT32_MAX)


def test_the_previous_schema_refuses_a_score_past_the_32_bit_id(pg: Database) -> None:
    """What the migration is for: at revision 0006 the 2^31-th score is refused for good."""
    from sqlalchemy.exc import DataError

    migrate(pg, BEFORE_BIGINT)
    request_id = _request(pg)
    _past_int32(pg)
    with pytest.raises(DataError, match="maximum value"):
        pg.save_feedbacks([_score(request_id)])


def test_scores_are_stored_past_the_32_bit_id(pg: Database) -> None:
    pg.upgrade()
    request_id = _request(pg)
    _past_int32(pg)
    pg.save_feedbacks([_score(request_id, 7), _score(request_id, 9)])
    pg.save_feedbacks([_score(request_id, 7, 2.0)])  # an update consumes an id too
    rows = pg.feedback_rows()
    assert [(row.movie_id, row.score) for row in rows] == [(7, 2.0), (9, 4.0)]
    assert all(row.id > INT32_MAX for row in rows)
    assert _id_types(pg) == ("bigint", "bigint")


def test_the_journal_ships_a_score_past_the_32_bit_id(make_app: Any, postgres_url: str) -> None:
    """Through the service: the score is stored, not set aside in rejected.jsonl."""
    app = make_app(database_url=postgres_url)
    client = app.test_client()
    headers = login(client)
    services = app.extensions["movierec"]
    _past_int32(services.db)
    body = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
    response = client.post(
        "/api/recommend/score",
        json={"id": body["id"], "movie": body["recommendations"][0], "score": 4},
        headers=headers,
    )
    assert response.status_code == 200
    rows = stored_feedback(app)
    assert [(row.request_id, row.score) for row in rows] == [(body["id"], 4.0)]
    assert rows[0].id > INT32_MAX
    journal = services.recommendations.feedback
    assert journal.rejected == 0 and not (journal.directory / "rejected.jsonl").exists()


def test_an_existing_database_is_upgraded_with_its_rows(pg: Database) -> None:
    """From the previous revision, with scores in it: ids and rows kept, the sequence continues."""
    migrate(pg, BEFORE_BIGINT)
    assert _id_types(pg) == ("integer", "integer")
    request_id = _request(pg)
    pg.save_feedbacks([_score(request_id, movie) for movie in (1, 2, 3)])
    before = [(row.id, row.movie_id, row.score, row.created_at) for row in pg.feedback_rows()]
    _sql(pg, "SELECT setval(pg_get_serial_sequence('feedback', 'id'), :at)", at=INT32_MAX - 1)

    pg.upgrade()  # what the service runs at start (and `movierec db upgrade`)

    assert _id_types(pg) == ("bigint", "bigint")
    assert _sql(pg, "SELECT version_num FROM alembic_version") == HEAD
    assert [(row.id, row.movie_id, row.score, row.created_at) for row in pg.feedback_rows()] == before
    pg.save_feedbacks([_score(request_id, movie) for movie in (4, 5)])  # INT32_MAX, then past it
    ids = {row.movie_id: row.id for row in pg.feedback_rows()}
    assert ids[4] == INT32_MAX and ids[5] == INT32_MAX + 1
    pg.upgrade()  # once migrated, a restart changes nothing
    assert len(pg.feedback_rows()) == 5


def test_the_downgrade_restores_the_32_bit_id(pg: Database) -> None:
    pg.upgrade()
    request_id = _request(pg)
    pg.save_feedbacks([_score(request_id)])
    migrate(pg, BEFORE_BIGINT, down=True)
    assert _id_types(pg) == ("integer", "integer")
    assert [row.movie_id for row in pg.feedback_rows()] == [7]
    pg.upgrade()
    assert _id_types(pg) == ("bigint", "bigint")


def test_sqlite_ids_stay_the_64_bit_rowid(tmp_path: Path) -> None:
    """SQLite's ``INTEGER PRIMARY KEY`` is already 64-bit: the migration leaves the table alone."""
    database = Database(f"sqlite:///{tmp_path / 'ids.db'}")
    try:
        migrate(database, BEFORE_BIGINT)
        request_id = _request(database)
        database.save_feedbacks([_score(request_id, 1)])
        database.upgrade()
        table = _sql(database, "SELECT sql FROM sqlite_master WHERE name = 'feedback'")
        assert "id INTEGER NOT NULL" in table  # still the rowid alias
        _sql(database, "UPDATE feedback SET id = :at", at=INT32_MAX)
        database.save_feedbacks([_score(request_id, 2)])
        ids = {row.movie_id: row.id for row in database.feedback_rows()}
        assert ids == {1: INT32_MAX, 2: INT32_MAX + 1}
    finally:
        database.dispose()


def test_the_downgrade_refuses_ids_past_32_bits_and_changes_nothing(pg: Database) -> None:
    pg.upgrade()
    request_id = _request(pg)
    _past_int32(pg)
    pg.save_feedbacks([_score(request_id)])
    with pytest.raises(RuntimeError, match="cannot be downgraded"):
        migrate(pg, BEFORE_BIGINT, down=True)
    assert _id_types(pg) == ("bigint", "bigint")
    assert [row.id for row in pg.feedback_rows()] == [INT32_MAX + 1]


def test_a_sequence_owned_by_nothing_is_migrated_too(pg: Database) -> None:
    """A database whose id sequence is not owned by the column (restored from a dump without the
    ``OWNED BY``, a sequence re-created by hand) has no ``pg_get_serial_sequence``: the upgrade
    found the sequence through it only and failed ("ALTER SEQUENCE  AS bigint": a syntax error),
    so the service did not start. The sequence is found through the column's default too."""
    migrate(pg, BEFORE_BIGINT)
    request_id = _request(pg)
    pg.save_feedbacks([_score(request_id, 1)])
    _sql(pg, "ALTER SEQUENCE feedback_id_seq OWNED BY NONE")
    _sql(pg, "SELECT setval('feedback_id_seq', :at)", at=INT32_MAX)

    pg.upgrade()

    assert _sql(pg, "SELECT version_num FROM alembic_version") == HEAD
    assert _sql(
        pg, "SELECT data_type FROM information_schema.sequences WHERE sequence_name = 'feedback_id_seq'"
    ) == ("bigint")
    pg.save_feedbacks([_score(request_id, 2)])  # past the 32-bit id
    assert {row.movie_id: row.id for row in pg.feedback_rows()}[2] == INT32_MAX + 1
