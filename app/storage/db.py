"""Database access: engine, migrations, and the few queries the service makes.

One class owns the engine; blueprints never see SQL. SQLite (a file) by default, PostgreSQL
when ``MOVIEREC_DATABASE_URL`` points at one. Schema changes go through Alembic only.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Table, create_engine, event, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.storage.models import Feedback, RecommendationRequest, utcnow

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 727_001  # advisory lock key: one migrator at a time across processes


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be reached; callers answer 503 rather than pretend."""


@dataclass(frozen=True)
class FeedbackRecord:
    request_id: str
    movie_id: int
    title: str
    score: float
    predicted_score: float | None
    model_version: str


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_timeout=5,
        connect_args={"connect_timeout": 3},
    )  # fmt: skip


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------ lifecycle

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision, one process at a time.

        Several processes may start together (uwsgi workers with lazy-apps, two instances):
        PostgreSQL serialises them with an advisory lock; a SQLite file with an exclusive lock
        on a file beside it, because SQLite answers a second would-be writer "database is
        locked" at once instead of waiting.
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._sqlite_migration_lock(), self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    @contextmanager
    def _sqlite_migration_lock(self) -> Iterator[None]:
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            yield
            return
        with open(f"{database}.migrate.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success; connectivity errors become DatabaseUnavailableError."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            raise DatabaseUnavailableError(str(exc.orig) if exc.orig else str(exc)) from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # ------------------------------------------------------------------ requests and feedback

    def save_requests(self, rows: list[dict[str, Any]]) -> None:
        """Insert request rows in one statement; rows whose id is already stored are skipped.

        Idempotent so the write-behind log (app/services/request_log.py) can retry a batch
        whose commit may or may not have landed before a connection dropped.
        """
        if not rows:
            return
        now = utcnow()
        values = [{"created_at": now, **row} for row in rows]
        table = cast(Table, RecommendationRequest.__table__)
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            statement: Any = pg_insert(table).on_conflict_do_nothing(index_elements=["id"])
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            statement = sqlite_insert(table).on_conflict_do_nothing(index_elements=["id"])
        else:  # pragma: no cover - only SQLite and PostgreSQL are supported
            statement = table.insert()
        with self.session() as session:
            session.execute(statement, values)

    def get_request(self, request_id: str) -> RecommendationRequest | None:
        with self.session() as session:
            return session.get(RecommendationRequest, request_id)

    def save_feedback(self, record: FeedbackRecord) -> None:
        """Insert the score, or update it when this (request, movie) was already scored.

        Retries of the same post therefore land exactly once. Committed on return.
        """
        values = {
            "request_id": record.request_id,
            "movie_id": record.movie_id,
            "title": record.title,
            "score": record.score,
            "predicted_score": record.predicted_score,
            "model_version": record.model_version,
        }
        try:
            with self.session() as session:
                session.add(Feedback(**values))
        except IntegrityError:
            with self.session() as session:
                existing = session.scalars(
                    select(Feedback).where(
                        Feedback.request_id == record.request_id, Feedback.movie_id == record.movie_id
                    )
                ).one()
                existing.score = record.score
                existing.updated_at = utcnow()

    def feedback_rows(self, limit: int | None = None) -> list[Feedback]:
        with self.session() as session:
            query = select(Feedback).order_by(Feedback.id)
            if limit is not None:
                query = query.limit(limit)
            return list(session.scalars(query))
