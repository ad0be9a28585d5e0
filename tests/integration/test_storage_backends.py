"""Feedback is durable on both databases: journaled on 200, then committed, visible to a fresh connection."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import create_engine, text

from tests.helpers import PROFILE, journal_records, login, sqlalchemy_url

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    return request.getfixturevalue("postgres_url")


def test_feedback_round_trip_is_committed(make_app, database_url) -> None:
    app = make_app(database_url=database_url)
    client = app.test_client()
    headers = login(client)
    body = client.post("/api/recommend", json={**PROFILE, "max_recs": 4}, headers=headers).get_json()
    for title, score in zip(body["recommendations"][:3], (5, 3.5, 1), strict=True):
        response = client.post(
            "/api/recommend/score", json={"id": body["id"], "movie": title, "score": score}, headers=headers
        )
        assert response.status_code == 200
    assert len(journal_records(app)) == 3  # durable when acknowledged

    # a brand-new connection, not the app's session, sees the rows the journal shipped (~0.1 s)
    engine = create_engine(sqlalchemy_url(database_url))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            shipped = conn.execute(text("SELECT count(*) FROM feedback")).scalar_one()
        if shipped == 3:
            break
        time.sleep(0.05)
    with engine.connect() as conn:
        request_row = conn.execute(
            text(
                "SELECT age, gender, occupation, max_recs, model_version "
                "FROM recommendation_requests WHERE id = :id"
            ),
            {"id": body["id"]},
        ).one()
        scores = conn.execute(
            text("SELECT title, score FROM feedback WHERE request_id = :id ORDER BY id"), {"id": body["id"]}
        ).all()
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    assert tuple(request_row) == (30, "M", "programmer", 4, body["model_version"])
    assert [(t, s) for t, s in scores] == list(zip(body["recommendations"][:3], (5.0, 3.5, 1.0), strict=True))
    assert version  # schema managed by Alembic


def test_a_restart_migrates_again_and_replays_what_a_crash_left_unshipped(make_app, database_url) -> None:
    first = make_app(database_url=database_url, feedback_ship_seconds=60)
    client = first.test_client()
    headers = login(client)
    body = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
    response = client.post(
        "/api/recommend/score",
        json={"id": body["id"], "movie": body["recommendations"][0], "score": 4},
        headers=headers,
    )
    assert response.status_code == 200 and first.extensions["movierec"].db.feedback_rows() == []
    # the process dies: its journal files stay, their locks go, nothing was shipped
    journal = first.extensions["movierec"].recommendations.feedback
    for segment in journal._segments.values():
        segment.release()
    second = make_app(database_url=database_url)  # a restart: migrations run again, the journal is replayed
    rows = second.extensions["movierec"].db.feedback_rows()
    assert [(r.request_id, r.score) for r in rows] == [(body["id"], 4.0)]
    assert second.extensions["movierec"].recommendations.feedback.replayed == 1


def test_database_down_refuses_feedback_with_503(make_app, tmp_path) -> None:
    app = make_app()
    client = app.test_client()
    headers = login(client)
    body = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
    db = app.extensions["movierec"].db
    from app.storage.db import make_engine

    db.engine.dispose()
    db.engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens on port 1
    db.sessions.configure(bind=db.engine)
    response = client.post(
        "/api/recommend/score",
        json={"id": body["id"], "movie": body["recommendations"][0], "score": 4},
        headers=headers,
    )
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    assert client.get("/health/ready").status_code == 503


def _upgrade(url: str) -> None:
    from app.storage.db import Database

    Database(url).upgrade()


def test_processes_starting_together_migrate_one_sqlite_file_safely(tmp_path) -> None:
    """uwsgi's lazy-apps workers each run create_app: their migrations must not collide."""
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    context = multiprocessing.get_context("spawn")
    for _round in range(2):  # first a fresh file, then an up-to-date one
        processes = [context.Process(target=_upgrade, args=(url,)) for _ in range(6)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        assert [p.exitcode for p in processes] == [0] * 6
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_migrations_log_what_they_run_and_nothing_when_up_to_date(tmp_path, caplog) -> None:
    """Every uwsgi worker migrates at start and at each recycle: an up-to-date schema writes no
    line, and a migration that runs still says so."""
    from app.storage.db import Database

    database = Database(f"sqlite:///{tmp_path / 'm.db'}")
    with caplog.at_level(logging.INFO, logger="alembic"):
        database.upgrade()
        first = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
        caplog.clear()
        database.upgrade()
        second = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
    database.dispose()
    assert first and all(message.startswith("Running upgrade") for message in first), first
    assert second == []


def test_migration_0008_indexes_the_users_lists_and_the_schema_is_the_models(database_url) -> None:
    """``scored_movies`` (a user's scores, each /api/users/<id>/recommendations) read every score
    since the user's snapshot, or the whole request table: ``recommendation_requests.user_id`` had
    no index. An upgrade from 0007 (with rows stored) adds one, partial (the lists served for a
    profile have no user); the migrated schema is then the models' (both databases)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from app.storage.db import Database
    from app.storage.models import Base
    from tests.helpers import migrate, sqlalchemy_url

    database = Database(sqlalchemy_url(database_url))
    try:
        migrate(database, "0007_feedback_bigint_id")
        rows = [
            {"id": f"r{n}", "created_at": 1_700_000_000.0 + n, "user_id": user, "max_recs": 1,
             "model_version": "v1", "strategy": "personal", "items": []}
            for n, user in enumerate((7, None, 8))
        ]  # fmt: skip
        database.save_requests(rows)
        database.upgrade()
        with database.engine.connect() as connection:
            indexes = {i["name"]: i for i in inspect(connection).get_indexes("recommendation_requests")}
            index = indexes["ix_recommendation_requests_user_id"]
            where = index["dialect_options"].get(f"{connection.dialect.name}_where")
            tables = {table.name for table in Base.metadata.sorted_tables}  # not circuit_breaker's Core table
            models = {"include_name": lambda name, kind, _parent: kind != "table" or name in tables}
            drift = compare_metadata(MigrationContext.configure(connection, opts=models), Base.metadata)
    finally:
        database.dispose()
    assert index["column_names"] == ["user_id"] and not index["unique"]
    assert "user_id IS NOT NULL" in str(where).replace("(", "").replace(")", ""), where
    assert drift == [], drift
