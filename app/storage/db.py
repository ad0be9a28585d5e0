"""Database access: engine, migrations, and the few queries the service makes.

One class owns the engine; blueprints never see SQL. SQLite (a file) by default, PostgreSQL
when ``MOVIEREC_DATABASE_URL`` points at one. Schema changes go through Alembic only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, Table, bindparam, case, create_engine, event, make_url, or_, select, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.durable import exclusive_lock
from app.exit_hooks import reset_after_fork
from app.monitoring.logs import LogEvery
from app.storage.models import Feedback, RecommendationRequest, as_utc, utcnow

log = logging.getLogger(__name__)


class _MigrationPreamble(logging.Filter):
    """Alembic opens every ``upgrade`` with two INFO lines about the database dialect ("Context
    impl PostgresqlImpl.", "Will assume transactional DDL."), even with nothing to migrate: every
    uwsgi worker runs it at each start and recycle. The lines of migrations that run are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Context impl ", "Will assume "))


logging.getLogger("alembic.runtime.migration").addFilter(_MigrationPreamble())

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 727_001  # advisory lock key: one migrator at a time across processes


_FEEDBACK_UPSERT_PG = (
    "INSERT INTO feedback"
    " (request_id, movie_id, title, score, predicted_score, model_version, created_at, updated_at)"
    " SELECT r, m, t, s, p, v, c, a FROM json_to_recordset(%(rows)s::json)"
    " AS u (r text, m int, t text, s float8, p float8, v text, c timestamptz, a timestamptz)"
    " ON CONFLICT (request_id, movie_id) DO UPDATE SET"
    " score = CASE WHEN feedback.updated_at <= excluded.updated_at"
    " THEN excluded.score ELSE feedback.score END,"
    " updated_at = GREATEST(feedback.updated_at, excluded.updated_at),"
    " predicted_score = CASE WHEN excluded.created_at < feedback.created_at"
    " THEN excluded.predicted_score ELSE feedback.predicted_score END,"
    " created_at = LEAST(feedback.created_at, excluded.created_at)"
    " WHERE feedback.updated_at <= excluded.updated_at OR excluded.created_at < feedback.created_at"
)
"""The score path's write on PostgreSQL: a whole batch as one statement with one JSON parameter.

One statement whatever the batch size (psycopg prepares it), run by :meth:`Database._autocommit`
as its own transaction: one round trip, no ``BEGIN``/``COMMIT``, no SQLAlchemy compilation. The
rows travel as one JSON text (orjson) rather than six typed arrays, which psycopg dumps element
by element. Same effect as ``Database._feedback_upsert`` (the SQLite path).
"""


def _feedback_rows(records: Sequence[tuple[FeedbackRecord, datetime]]) -> dict[str, Any]:
    """The parameters of :data:`_FEEDBACK_UPSERT_PG`: (record, its first score's time) pairs of
    :func:`_coalesced`."""
    rows = [
        {
            "r": record.request_id,
            "m": int(record.movie_id),
            "t": record.title,
            "s": float(record.score),
            "p": None if record.predicted_score is None else float(record.predicted_score),
            "v": record.model_version,
            "c": created,
            "a": record.at,
        }
        for record, created in records
    ]
    return {"rows": orjson.dumps(rows).decode()}


def _coalesced(records: Sequence[FeedbackRecord], now: datetime) -> list[tuple[FeedbackRecord, datetime]]:
    """One row per (request, movie) of ``records``: the score and time (``at``) of its last, the
    prediction of its first, with the first's time (its ``created_at``). A record's ``at`` is
    ``now`` when it has none, in UTC (a naive time is taken as UTC: SQLite compares the stored
    text)."""
    first: dict[tuple[str, int], FeedbackRecord] = {}
    last: dict[tuple[str, int], FeedbackRecord] = {}
    for record in records:
        record = dataclasses.replace(record, at=now if record.at is None else as_utc(record.at))
        key = (record.request_id, record.movie_id)
        at = cast(datetime, record.at)
        if key not in last or at >= cast(datetime, last[key].at):
            last[key] = record
        if key not in first or at < cast(datetime, first[key].at):
            first[key] = record
    return [
        (dataclasses.replace(first[key], score=record.score, at=record.at), cast(datetime, first[key].at))
        for key, record in last.items()
    ]


REQUEST_INPUTS = ("age", "gender", "occupation", "user_id")
"""The request fields a served recommendation keeps for scoring it (predicted rating, feedback)."""


class DatabaseUnavailableError(RuntimeError):
    """The database cannot be reached; callers answer 503 rather than pretend."""


def unreachable_message(url: str, exc: BaseException, problem: str = "cannot be reached") -> str:
    """``the service database cannot be reached (<url, password masked>): <the driver's reason>``:
    what a command or a scheduler tick says when the service database does not answer
    (``problem``: ``cannot be used`` when it answers and refuses, :func:`refusal`).

    One line: libpq's reason comes in several ("... Connection refused", then an indented "Is the
    server running on that host and accepting TCP/IP connections?"), which a command printed as a
    line of its own after its ``Error:`` line; the lines after the first go in brackets after it."""
    where = make_url(url).render_as_string(hide_password=True)
    first, *rest = [
        line.strip() for line in str(getattr(exc, "orig", None) or exc).splitlines() if line.strip()
    ] or [type(exc).__name__]
    detail = f"{first} ({' '.join(rest)})" if rest else first
    return f"the service database {problem} ({where}): {detail}"


def refusal(url: str, exc: DBAPIError) -> str:
    """What a command says when the service database answered and refused what it was asked (a
    role without CREATE on the schema, a SQLite "database" that is some other file): the driver's
    DatabaseError or ProgrammingError, where :func:`unreachable_message` covers OperationalError."""
    return unreachable_message(url, exc, "cannot be used")


class DatabaseSchemaError(RuntimeError):
    """The database's schema revision is none of this code's migrations: a newer release
    migrated it (this one was rolled back to), so its tables may not be what this code reads."""


def _unknown_revision(config: Config, connection: Any) -> str | None:
    """The database's schema revision when this code's migrations do not have it, else None."""
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        return None
    try:
        ScriptDirectory.from_config(config).get_revision(current)
    except CommandError:
        return current
    return None


T = TypeVar("T")


_SQLITE_ERROR = 1
"""SQLite's generic result code: bad SQL, a missing table or column — the caller's bug."""


def _unreachable(exc: SQLAlchemyError) -> bool:
    """Does this error mean "no database" (503) rather than a bug (500)?

    Both drivers raise ``OperationalError`` when the database cannot serve: PostgreSQL gone,
    refusing connections or cancelling; a SQLite file locked, unopenable or failing I/O. SQLite
    raises it for bad SQL too; its result code (``sqlite_errorcode``, Python 3.11) tells them apart.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    code = getattr(exc.orig, "sqlite_errorcode", None)
    return code is None or code & 0xFF != _SQLITE_ERROR


def _unavailable(exc: SQLAlchemyError) -> DatabaseUnavailableError:
    orig = getattr(exc, "orig", None)
    return DatabaseUnavailableError(str(orig) if orig else str(exc))


@dataclasses.dataclass(frozen=True)
class StoredRequest:
    items: list[dict[str, Any]]
    model_version: str
    inputs: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FeedbackRecord:
    request_id: str
    movie_id: int
    title: str
    score: float
    predicted_score: float | None
    model_version: str
    at: datetime | None = None
    """When the score was acknowledged (the feedback journal stamps it); None: when it is written."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


PG_CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": 3,
    # A database that stops answering without refusing (a network partition, a host gone, a
    # firewall dropping packets) left a statement waiting while TCP retransmitted for ~15
    # minutes, and a request thread with it (uwsgi's harakiri does not end it: its deadline is
    # shared by the worker's threads and moved by every request that starts or ends, so it fires
    # only once a whole worker is stuck). Unacknowledged data fails after 10 s, and a connection
    # waiting for an answer is probed after 5 s idle, every 2 s, 3 times; both end in an
    # OperationalError, a retry on a fresh connection (connect_timeout), then a 503. A server
    # busy with a slow statement still acknowledges and answers the probes, so that is not cut
    # short; one that stops reading what it is sent for 10 s (mid-COPY, a stalled disk) is: the
    # request log and the feedback journal keep such rows and send them again.
    # (tests/integration/test_storage_network.py drops its packets with iptables.)
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""libpq connection parameters for PostgreSQL; one given in the database URL takes precedence."""

PING_SECONDS = float(PG_CONNECT_ARGS["connect_timeout"])
"""The longest an idle connection's ping may wait for its answer (a healthy server answers in ms)."""


class StatementDeadlines:
    """Ends the wait of a PostgreSQL statement the database does not answer in time.

    A database that hangs with its host up (a stopped or stuck server, a relay that stops
    forwarding) accepts connections and acknowledges what it is sent: no TCP timeout or
    keepalive ever fires (those of :data:`PG_CONNECT_ARGS` only see a silent *network*), and
    libpq has no client-side statement timeout. A request thread then waited until harakiri
    killed its worker, with every request in it and its write-behind rows; and the worker
    respawned while the database still hung could not start, so ``need-app`` ended the whole
    instance. Here one thread per process shuts the socket of a statement past its deadline:
    libpq sees the connection closed, SQLAlchemy drops it as a disconnect, and the caller gets
    :class:`DatabaseUnavailableError` (503) while recommendations are still served.
    A server-side ``statement_timeout`` would not help: a hung server enforces nothing.
    """

    def __init__(self) -> None:
        self._own_state()
        reset_after_fork(self._own_state)

    def _own_state(self) -> None:
        """Each process its own watcher (a forked child inherits no thread)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # a statement's key -> (deadline, seconds, its socket's fd and inode, its block if bounded())
        self._armed: dict[int, tuple[float, float, int, int, Bound | None]] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0  # when the watcher wakes next (monotonic; inf: not before a notify)
        self._logged = LogEvery(30.0)  # one line per hang, not per statement

    def arm(self, key: int, connection: Any, seconds: float | None, bound: Bound | None = None) -> None:
        """The statement ``key`` about to run on psycopg ``connection`` must be answered in ``seconds``."""
        fd = _socket_of(connection)
        if not seconds or fd < 0:
            return
        try:
            inode = os.fstat(fd).st_ino
        except OSError:
            return
        deadline = time.monotonic() + seconds
        with self._lock:
            self._armed[key] = (deadline, seconds, fd, inode, bound)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="movierec-db-deadlines", daemon=True)
                self._thread.start()
            # Woken only when this deadline comes before the one it sleeps until: with one
            # ``seconds`` per engine that is the first statement after an idle spell, not every
            # statement (a thread switch each, on the score path's and the request log's writes).
            if deadline < self._wakes_at:
                self._changed.notify()

    def disarm(self, key: int) -> None:
        """The statement ``key`` ended (answered or failed)."""
        with self._lock:
            self._armed.pop(key, None)

    @contextmanager
    def bounded(self, connection: Any, seconds: float | None) -> Iterator[Bound]:
        """Run the block (statements on psycopg ``connection``) under one deadline; the
        :class:`Bound` yielded says afterwards whether the deadline cut it."""
        bound = Bound()  # alive until disarmed: its id is this block's key alone
        self.arm(id(bound), connection, seconds, bound)
        try:
            yield bound
        finally:
            self.disarm(id(bound))

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for key, (deadline, seconds, fd, inode, bound) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[key]
                        if bound is not None:  # before the cut: its caller may look at once
                            bound.cut = True
                        if not self._cut(fd, inode, seconds) and bound is not None:
                            bound.cut = False
                nearest = min((entry[0] for entry in self._armed.values()), default=None)
                self._wakes_at = float("inf") if nearest is None else nearest
                self._changed.wait(None if nearest is None else max(0.0, nearest - now))

    def _cut(self, fd: int, inode: int, seconds: float) -> bool:
        """Shut the socket down (not closed: the fd stays libpq's), if ``fd`` is still that socket
        (a connection closed meanwhile may have left its number to another file); True if it was."""
        try:
            copy = os.dup(fd)  # first: checked, then used, the same file (not a number reused meanwhile)
        except OSError:
            return False
        try:
            with socket.socket(fileno=copy) as sock:
                if os.fstat(copy).st_ino != inode:
                    return False
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            return False
        self._logged.log(
            log, logging.ERROR, "the database did not answer a statement in time; its connection was closed",
            seconds=seconds,
        )  # fmt: skip
        return True


DEADLINES = StatementDeadlines()


@dataclasses.dataclass
class Bound:
    """A block of statements under :meth:`StatementDeadlines.bounded`: ``cut`` once its deadline
    shut the connection (the database hung for all of it: trying again would wait as long)."""

    cut: bool = False


def _socket_of(connection: Any) -> int:
    """The socket of a psycopg connection, or -1 (closed, or not psycopg: SQLite)."""
    try:
        return int(connection.pgconn.socket)
    except Exception:  # noqa: BLE001 - no socket means nothing to bound
        return -1


def make_engine(url: str, *, statement_seconds: float | None = None) -> Engine:
    """An engine for ``url``. ``statement_seconds``: the longest a PostgreSQL statement may wait for
    its answer (:class:`StatementDeadlines`); None = unbounded (batch jobs with long statements)."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 10},
            json_serializer=_json_text, json_deserializer=orjson.loads,
        )  # fmt: skip
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    given = make_url(url).query  # what the URL sets itself wins
    connect_args = {key: value for key, value in PG_CONNECT_ARGS.items() if key not in given}
    engine = create_engine(
        url, pool_size=5, max_overflow=10, pool_timeout=5, connect_args=connect_args,
        json_serializer=_json_text, json_deserializer=orjson.loads,
    )  # fmt: skip
    event.listen(engine, "checkout", _ping_if_idle)
    event.listen(engine, "checkin", _note_checkin)
    if statement_seconds:
        _bound_statements(engine, statement_seconds)
    return engine


def _bound_statements(engine: Engine, seconds: float) -> None:
    """Every statement SQLAlchemy runs on ``engine`` answered in ``seconds`` or cut off."""

    def arm(_conn: Any, cursor: Any, *_args: Any) -> None:
        DEADLINES.arm(id(cursor), cursor.connection, seconds)

    def disarm(_conn: Any, cursor: Any, *_args: Any) -> None:
        DEADLINES.disarm(id(cursor))

    def disarm_on_error(context: Any) -> None:
        execution = context.execution_context  # None for a failed connect: nothing was armed
        if execution is not None and execution.cursor is not None:
            DEADLINES.disarm(id(execution.cursor))

    event.listen(engine, "before_cursor_execute", arm)
    event.listen(engine, "after_cursor_execute", disarm)
    event.listen(engine, "handle_error", disarm_on_error)


IDLE_PING_SECONDS = 2.0
"""A pooled connection unused for longer is pinged before use (see :func:`_ping_if_idle`)."""


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Ping a connection that sat idle, so a database restarted meanwhile costs no request.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: two round trips per statement on
    the score path for connections used a millisecond ago. Busy connections are not pinged;
    if the database goes away under load, the statement fails as a disconnect, SQLAlchemy
    drops the whole pool, and :meth:`Database.run` retries idempotent statements once on a
    fresh connection (else the caller answers 503).
    """
    last = record.info.get("checked_in_at")
    if last is None or time.monotonic() - last < IDLE_PING_SECONDS:
        return
    try:
        with DEADLINES.bounded(dbapi_connection, PING_SECONDS), dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        dbapi_connection.rollback()
    except Exception as exc:  # any failure means "use another connection"
        raise DisconnectionError(f"idle connection is dead: {exc}") from exc


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info["checked_in_at"] = time.monotonic()


def _json_text(value: Any) -> str:
    """JSON columns are written and read with orjson (the monitor reads every list served lately)."""
    return orjson.dumps(value).decode()


def _served_at(seconds: float | None, default: datetime) -> datetime:
    """A request row's ``created_at`` as stored: its served time (epoch seconds), else ``default``."""
    return default if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _copy_value(name: str, value: Any) -> Any:
    """A request row's value as ``COPY`` takes it (``items`` is JSON text, as the JSON column stores it)."""
    return _json_text(value) if name == "items" and value is not None else value


class Database:
    def __init__(self, url: str, *, statement_seconds: float | None = None) -> None:
        self.url = url
        self.statement_seconds = statement_seconds  # see make_engine
        self._limits = threading.local()  # a tighter limit for one thread's block: statement_limit()
        self.engine = make_engine(url, statement_seconds=statement_seconds)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # The score path's two statements, built once (SQLAlchemy then reuses their compiled form).
        requests = cast(Table, RecommendationRequest.__table__)
        self._served_query = select(
            requests.c["items"], requests.c.model_version, *(requests.c[key] for key in REQUEST_INPUTS)
        ).where(requests.c.id == bindparam("id"))
        self._copy_columns = [column.name for column in requests.columns]
        # the request log's write (names from the model, not from input)
        self._copy_sql = f"COPY {requests.name} ({', '.join(self._copy_columns)}) FROM STDIN"
        insert = self._insert(Feedback)
        stored, new = cast(Table, Feedback.__table__).c, insert.excluded
        later, earlier = stored.updated_at <= new.updated_at, new.created_at < stored.created_at
        self._feedback_upsert = insert.on_conflict_do_update(
            index_elements=["request_id", "movie_id"],
            set_={
                "score": case((later, new.score), else_=stored.score),
                "updated_at": case((later, new.updated_at), else_=stored.updated_at),
                "predicted_score": case((earlier, new.predicted_score), else_=stored.predicted_score),
                "created_at": case((earlier, new.created_at), else_=stored.created_at),
            },
            where=or_(later, earlier),
        )

    # ------------------------------------------------------------------ lifecycle

    @contextmanager
    def statement_limit(self, seconds: float) -> Iterator[None]:
        """This thread's writes in the block (``COPY`` and the score path's, :meth:`_autocommit`)
        wait at most ``seconds`` for the database, or ``statement_seconds`` if shorter. An exit
        budget: a write to a database that hangs took the whole statement deadline (15 s) of the
        10 s a stopping worker has for its request log and journal (app/exit_hooks.py).
        """
        outer = getattr(self._limits, "seconds", None)
        self._limits.seconds = seconds if outer is None else min(outer, seconds)
        try:
            yield
        finally:
            self._limits.seconds = outer

    def _statement_limit(self) -> float | None:
        limit: float | None = getattr(self._limits, "seconds", None)
        if limit is None:
            return self.statement_seconds
        # at least a moment: 0 would arm nothing (no deadline) rather than cut at once
        limit = max(limit, 0.05)
        return limit if self.statement_seconds is None else min(limit, self.statement_seconds)

    def upgrade(self) -> None:
        """Bring the schema to the newest Alembic revision, one process at a time.

        Several processes may start together (uwsgi workers with lazy-apps, two instances):
        PostgreSQL serialises them with an advisory lock; a SQLite file with an exclusive lock
        on a file beside it, because SQLite answers a second would-be writer "database is
        locked" at once instead of waiting. A database that cannot be reached →
        :class:`DatabaseUnavailableError`, as from every other method here.
        """
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        # Not under the statement deadline (statement_seconds): a migration may rightly take
        # longer (an index on a big table), and so may the wait for another worker's; cut, each
        # start of an instance would fail the same way and end it (need-app).
        bounded = self.statement_seconds and self.engine.dialect.name == "postgresql"
        engine = make_engine(self.url) if bounded else self.engine
        try:
            with self._sqlite_migration_lock(), engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                    )
                config.attributes["connection"] = connection
                try:
                    command.upgrade(config, "head")
                except CommandError as exc:  # alembic's "Can't locate revision", as a traceback
                    unknown = _unknown_revision(config, connection)
                    if unknown is None:
                        raise
                    raise DatabaseSchemaError(
                        f"the database is at schema revision {unknown!r}, which is none of this code's "
                        f"migrations (newest: {ScriptDirectory.from_config(config).get_current_head()!r}): "
                        "a newer release migrated it; run that release against it, or give this one a "
                        "database it migrated"
                    ) from exc
        except SQLAlchemyError as exc:
            if _unreachable(exc):
                raise _unavailable(exc) from exc
            raise
        finally:
            if engine is not self.engine:
                engine.dispose()

    @contextmanager
    def _sqlite_migration_lock(self) -> Iterator[None]:
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if not database or database == ":memory:":
            yield
            return
        with exclusive_lock(Path(f"{database}.migrate.lock")):
            yield

    def ping(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def dispose(self) -> None:
        self.engine.dispose()

    def run(self, statement: Callable[[Any], T], *, write: bool = False) -> T:
        """Run an idempotent ``statement(connection)`` (in a committed transaction when ``write``).

        A connection that turns out dead (the database restarted while it sat in the pool) is
        retried once on a fresh one; a database still unreachable → :class:`DatabaseUnavailableError`.
        """
        for attempt in (1, 2):
            try:
                with self.engine.begin() if write else self.engine.connect() as connection:
                    return statement(connection)
            except SQLAlchemyError as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated and attempt == 1:
                    continue
                if _unreachable(exc):
                    raise _unavailable(exc) from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _autocommit(self, statement: str, work: Callable[[Any, str], object]) -> None:
        """Run one PostgreSQL statement, safe to retry, as its own transaction on a pooled psycopg connection.

        ``work(connection, statement)`` runs it on the psycopg connection, in autocommit mode: no
        ``BEGIN`` and no ``COMMIT`` round trips. The score path's write and the request log's
        ``COPY``. Without SQLAlchemy's ``Connection`` and execution context a score costs about half
        the client CPU (~120 against ~210-300 µs per transaction in-process); under load that was a
        third more scores per second (docs/performance.md). The contract is
        :meth:`run`'s: errors are SQLAlchemy's (wrapped by ``DBAPIError.instance``); a connection
        found dead is dropped with the rest of its pool (SQLAlchemy's ``Connection`` marks them all
        stale on a disconnect; here the pool is replaced, once) and the statement retried once on a
        fresh connection; a database still unreachable →
        :class:`DatabaseUnavailableError`.
        """
        dialect = self.engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        for attempt in (1, 2):
            pool = self.engine.pool
            try:
                pooled = self.engine.raw_connection()  # the pool's checkout events run (idle ping)
            except dbapi_error as exc:  # cannot connect: raised unwrapped by raw_connection()
                wrapped = DBAPIError.instance(None, None, exc, dbapi_error, dialect=dialect)
                raise _unavailable(wrapped) from exc
            bound = Bound()  # not cut: replaced by the block's own below
            try:
                driver: Any = pooled.driver_connection  # a psycopg Connection
                driver.autocommit = True
                try:
                    with DEADLINES.bounded(driver, self._statement_limit()) as bound:
                        work(driver, statement)
                finally:
                    if not driver.closed:
                        driver.autocommit = False  # the pool's other users expect transactions
            except dbapi_error as exc:
                disconnected = bool(dialect.is_disconnect(exc, pooled.dbapi_connection, None))
                if disconnected:
                    pooled.invalidate(exc)
                    if self.engine.pool is pool:  # not replaced yet by another thread's dispose()
                        self.engine.dispose()  # its siblings in the pool died with it (a restart)
                wrapped = DBAPIError.instance(
                    statement, None, exc, dbapi_error, connection_invalidated=disconnected, dialect=dialect
                )
                # a connection dropped by a restart is worth one more try; one our deadline cut
                # had a database that did not answer for all of it: a retry would wait as long
                if disconnected and attempt == 1 and not bound.cut:
                    continue
                if _unreachable(wrapped):
                    raise _unavailable(wrapped) from exc
                raise wrapped from exc
            finally:
                pooled.close()
            return

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success; connectivity errors become DatabaseUnavailableError."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            if _unreachable(exc):
                raise _unavailable(exc) from exc
            raise
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # ------------------------------------------------------------------ requests and feedback

    def save_requests(self, rows: list[dict[str, Any]]) -> None:
        """Store request rows; rows whose id is already stored are skipped.

        Idempotent so the write-behind log (app/services/request_log.py) can retry a batch
        whose commit may or may not have landed before a connection dropped. On PostgreSQL the
        batch is streamed with ``COPY`` (a third of the CPU of a multi-row ``INSERT``); a batch
        that meets an id already stored (that retry) is inserted with ``ON CONFLICT DO NOTHING``.

        A row's ``created_at`` is the time it was served, in seconds since the epoch (``time.time()``
        on the request thread: :meth:`RecommendationService.log_row`), made a datetime here, off
        the request path; a row without one gets the time of this write.
        """
        if not rows:
            return
        now = utcnow()
        values = [{**row, "created_at": _served_at(row.get("created_at"), now)} for row in rows]
        if self.engine.dialect.name == "postgresql" and self._copy_requests(values):
            return
        statement = self._insert(RecommendationRequest).on_conflict_do_nothing(index_elements=["id"])
        with self.session() as session:
            session.execute(statement, values)

    def _copy_requests(self, values: list[dict[str, Any]]) -> bool:
        """``COPY`` the rows in one statement, its own transaction; False when one is already stored.

        A ``COPY`` is all or nothing even in autocommit mode. When :meth:`_autocommit` retries it
        after a dropped connection and the first attempt had in fact committed, the retry meets
        ``unique_violation``; :meth:`save_requests` then stores the batch with
        ``ON CONFLICT DO NOTHING``, so each row is stored once.
        """
        names = self._copy_columns

        def copy_rows(connection: Any, sql: str) -> None:
            with connection.cursor() as cursor, cursor.copy(sql) as copy:
                for row in values:
                    copy.write_row([_copy_value(name, row.get(name)) for name in names])

        try:
            self._autocommit(self._copy_sql, copy_rows)
        except IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) == "23505":  # unique_violation: a retried batch
                return False
            raise
        return True

    def _insert(self, model: Any) -> Any:
        """``INSERT`` for this dialect, with its ``ON CONFLICT`` clauses (SQLite and PostgreSQL)."""
        table = cast(Table, model.__table__)
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def get_request(self, request_id: str) -> RecommendationRequest | None:
        with self.session() as session:
            return session.get(RecommendationRequest, request_id)

    def served_request(self, request_id: str) -> StoredRequest | None:
        """What a score needs of a stored recommendation: one indexed read of five columns."""
        query, params = self._served_query, {"id": request_id}
        row = self.run(lambda connection: connection.execute(query, params).first())
        if row is None:
            return None
        return StoredRequest(row[0], row[1], dict(zip(REQUEST_INPUTS, row[2:], strict=True)))

    def save_feedback(self, record: FeedbackRecord) -> None:
        """Insert the score, or update it when this (request, movie) was already scored."""
        self.save_feedbacks([record])

    def save_feedbacks(self, records: Sequence[FeedbackRecord]) -> None:
        """Store scores in one transaction: ``INSERT … ON CONFLICT DO UPDATE``, committed on return.

        A (request, movie) is stored once: with the score acknowledged last (a record's ``at``,
        default now, is its ``updated_at``; a stored score is replaced only by one acknowledged
        at the same time or later), and the time and prediction of the one acknowledged first
        (``created_at``, the rating's timestamp). So writing the same records again, in any
        order and in any batches, changes nothing: the feedback journal's replays and retries
        rely on it. Until 2026-12-07 a row took the time and prediction of the last score of
        its first batch, and an earlier score replayed later changed neither.
        """
        rows = _coalesced(records, utcnow())
        if not rows:
            return
        if self.engine.dialect.name == "postgresql":
            params = _feedback_rows(rows)
            self._autocommit(
                _FEEDBACK_UPSERT_PG, lambda connection, sql: connection.execute(sql, params, prepare=True)
            )
            return
        values = []
        for record, created in rows:
            value = dataclasses.asdict(record)
            value["updated_at"] = value.pop("at")
            value["created_at"] = created
            values.append(value)
        statement = self._feedback_upsert
        self.run(lambda connection: connection.execute(statement, values), write=True)

    def feedback_rows(self, limit: int | None = None) -> list[Feedback]:
        with self.session() as session:
            query = select(Feedback).order_by(Feedback.id)
            if limit is not None:
                query = query.limit(limit)
            return list(session.scalars(query))
