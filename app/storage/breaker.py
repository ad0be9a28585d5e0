"""Where the circuit breaker's state lives, so every uwsgi worker and instance sees the same one.

Two stores with one contract (:class:`BreakerStore`): a row in the ``circuit_breaker`` table
(migrations 0004, 0006) by default, or a Redis key when ``MOVIEREC_REDIS_URL`` is set. There is
one record per model version (named ``<breaker name>@<version>``): workers and instances that
serve different versions for a while (a reload reaching the workers one by one, a rolling
deploy) each judge and route their own version, instead of rewriting one shared record for
whichever version evaluated last (which had let a tripped model serve again). Writes are
compare-and-set on a ``generation`` counter: a worker that decided a transition from a
stale view loses the race instead of overwriting a newer decision (an admin reset, another
worker's trip). Reads are one primary-key lookup or one ``GET``; workers cache the record and
re-read it every few seconds, never per request.

Records do not outlive their use: every retraining serves a new version, and one record per
version ever served grew without bound. A record is kept while its version is served (the
served version's record is evaluated every monitor interval, and re-read every few seconds)
and for :data:`RETENTION_SECONDS` after that, so a rollback within that time finds the state
it left; after it, the version starts closed again like a new one. In the database the
closed records idle that long are deleted after a write (at most once an hour per process; an
open one is kept, since reads do not refresh a row); in Redis each key expires that long after
it was last written or read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import redis
from sqlalchemy import JSON, Float, Integer, String, delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from app.storage.db import Database, DatabaseUnavailableError
from app.storage.models import Base

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
LAST_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the latest epoch second a date is made of

RETENTION_SECONDS = 30 * 86_400
"""How long a version's record outlives its last evaluation, transition or reset (Redis: its
last read or write): a rollback within it finds the state the version left."""
PRUNE_EVERY_SECONDS = 3_600.0  # a database store's deletions of idle records, per process


def record_name(name: str, version: str | None) -> str:
    """The record of ``version`` in breaker ``name`` (``name`` alone while no model is loaded)."""
    return name if version is None else f"{name}@{version}"


class BreakerRow(Base):
    """One record per breaker name and model version (``champion@<version>``; :func:`record_name`)."""

    __tablename__ = "circuit_breaker"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    since: Mapped[float] = mapped_column(Float)  # epoch seconds the state was entered
    reason: Mapped[str] = mapped_column(String(500))
    model_version: Mapped[str | None] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer)
    evaluated_at: Mapped[float] = mapped_column(Float)
    evaluation: Mapped[dict[str, Any]] = mapped_column(JSON)


@dataclass(frozen=True)
class BreakerRecord:
    """The shared state: what the breaker decided, when, why, for which model, and the last evaluation."""

    state: str = CLOSED
    since: float = 0.0
    reason: str = "initial state"
    model_version: str | None = None
    generation: int = 0
    evaluated_at: float = 0.0
    evaluation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """A record read from a store is checked here (a hand-edited one, or a state another version
        of the code wrote): a time that is no epoch second a date can be made of (a text; NaN or
        Infinity, which JSON and a Float column take), or a reason or version that is no text, made
        GET /api/model, the dashboard and every evaluation 500s or tracebacks once adopted."""
        if self.state not in STATES:
            raise ValueError(f"unknown breaker state {self.state!r}")
        for name in ("since", "evaluated_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= LAST_TIME:
                raise ValueError(f"{name} is not a time in epoch seconds: {str(value)[:40]!r}")
        if not isinstance(self.reason, str):
            raise TypeError("reason is not text")
        if self.model_version is not None and not isinstance(self.model_version, str):
            raise TypeError("model_version is not text")

    def evolve(self, **changes: Any) -> BreakerRecord:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> BreakerRecord:
        """Parse a stored record; anything unreadable (not JSON, not an object, an unknown state,
        wrong types) is a :class:`BreakerStoreError`, like a store that cannot be reached."""
        try:
            data = json.loads(text)
            record = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
            if not isinstance(record.generation, int) or not isinstance(record.evaluation, dict):
                raise TypeError("generation or evaluation has the wrong type")
            return record
        except (TypeError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UnreadableRecordError(f"unreadable breaker record: {exc}") from exc


class BreakerStoreError(RuntimeError):
    """The shared state could not be read or written; workers keep their last known state."""


class UnreadableRecordError(BreakerStoreError):
    """The store answered, but the record it holds cannot be read (truncated, hand-edited, or a
    state another version of the code wrote): only an admin reset, which replaces it, repairs it."""


def _loose_generation(raw: Any) -> int:
    """The generation of a stored record that may not be readable otherwise; 0 when it has none."""
    try:
        generation = json.loads(raw).get("generation")
    except (TypeError, ValueError, AttributeError):
        return 0
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


class BreakerStore(Protocol):
    where: str

    def read(self, version: str | None) -> BreakerRecord:
        """The record of ``version`` (a fresh closed one if it has none yet)."""
        ...

    def write(
        self, version: str | None, record: BreakerRecord, expected_generation: int
    ) -> BreakerRecord | None:
        """Store ``record`` as ``version``'s if its stored generation is still ``expected_generation``.

        Returns the stored record (generation incremented) or None when another writer won.
        """
        ...

    def replace(self, version: str | None, record: BreakerRecord) -> BreakerRecord | None:
        """Store ``record`` over whatever ``version`` holds, readable or not (an admin reset of an
        :class:`UnreadableRecordError`); compare-and-set like :meth:`write`, on the stored bytes."""
        ...


class DatabaseBreakerStore:
    """The ``circuit_breaker`` rows of breaker ``name`` in the service database, one per model version."""

    def __init__(
        self, db: Database, name: str = "champion", retention_seconds: float = RETENTION_SECONDS
    ) -> None:
        self.db = db
        self.name = name
        self.where = "database"
        self.retention_seconds = retention_seconds
        self._pruned_at: float | None = None  # when this process last pruned, by the writers' clock

    def read(self, version: str | None) -> BreakerRecord:
        key = record_name(self.name, version)
        try:
            with self.db.session() as session:
                row = session.get(BreakerRow, key)
                if row is None:
                    return BreakerRecord()
                values = (row.state, row.since, row.reason, row.model_version, row.generation,
                          row.evaluated_at, row.evaluation)  # fmt: skip
        except Exception as exc:
            raise BreakerStoreError(f"cannot read breaker state from the database: {exc}") from exc
        state, since, reason, model_version, generation, evaluated_at, evaluation = values
        try:
            return BreakerRecord(
                state=state,
                since=since,
                reason=reason,
                model_version=model_version,
                generation=generation,
                evaluated_at=evaluated_at,
                evaluation=dict(evaluation or {}),
            )
        except (TypeError, ValueError) as exc:  # a state another version of the code wrote
            raise UnreadableRecordError(f"unreadable breaker record: {exc}") from exc

    def replace(self, version: str | None, record: BreakerRecord) -> BreakerRecord | None:
        key = record_name(self.name, version)
        try:
            with self.db.session() as session:
                generation = session.scalar(select(BreakerRow.generation).where(BreakerRow.name == key))
        except Exception as exc:
            raise BreakerStoreError(f"cannot read breaker state from the database: {exc}") from exc
        return self.write(version, record, generation if isinstance(generation, int) else 0)

    def write(
        self, version: str | None, record: BreakerRecord, expected_generation: int
    ) -> BreakerRecord | None:
        stored = self._write(version, record, expected_generation)
        # the record just written carries the writer's clock (the breaker's times are its own)
        now = max(stored.since, stored.evaluated_at) if stored is not None else None
        if now is not None and (self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_SECONDS):
            self._pruned_at = now
            try:
                self.prune(now)
            except (
                SQLAlchemyError,
                DatabaseUnavailableError,
            ) as exc:  # the write stands; the next prune will do
                log.warning("cannot delete idle breaker records", extra={"error": str(exc)})
        return stored

    def prune(self, now: float) -> int:
        """Delete this breaker's closed version records idle (not evaluated, tripped or reset)
        for ``retention_seconds`` before ``now``; the count deleted. A deleted closed record
        reads as the closed record a new version starts with. Open and half-open records, and
        the record of no version (``<name>``, also the one kept for the previous code), are
        left alone."""
        cutoff = now - self.retention_seconds
        with self.db.session() as session:
            result = session.execute(
                delete(BreakerRow).where(
                    BreakerRow.name.startswith(f"{self.name}@", autoescape=True),
                    BreakerRow.evaluated_at < cutoff,
                    BreakerRow.since < cutoff,
                    # an open (or probing) breaker is kept however long nothing evaluated it:
                    # reads do not refresh a row, and with online evaluation switched off the
                    # served version's tripped state would otherwise go, and it would serve again
                    BreakerRow.state == CLOSED,
                )
            )
        deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
        if deleted:
            log.info("idle breaker records deleted", extra={"records": deleted, "breaker": self.name})
        return deleted

    def _write(
        self, version: str | None, record: BreakerRecord, expected_generation: int
    ) -> BreakerRecord | None:
        key = record_name(self.name, version)
        stored = record.evolve(generation=expected_generation + 1)
        values = {
            "state": stored.state,
            "since": stored.since,
            "reason": stored.reason[:500],
            "model_version": stored.model_version,
            "generation": stored.generation,
            "evaluated_at": stored.evaluated_at,
            "evaluation": stored.evaluation,
        }
        try:
            with self.db.session() as session:
                if expected_generation == 0:
                    exists = session.scalar(select(BreakerRow.generation).where(BreakerRow.name == key))
                    if exists is None:
                        session.add(BreakerRow(name=key, **values))
                        session.flush()
                        return stored
                result = session.execute(
                    update(BreakerRow)
                    .where(BreakerRow.name == key, BreakerRow.generation == expected_generation)
                    .values(**values)
                )
                return stored if result.rowcount == 1 else None  # type: ignore[attr-defined]
        except IntegrityError:
            return None  # another worker inserted the first row at the same moment
        except Exception as exc:
            raise BreakerStoreError(f"cannot write breaker state to the database: {exc}") from exc


REDIS_PREFIX = "movierec:breaker:"


class RedisBreakerStore:
    """One Redis key per model version holding the record as JSON; compare-and-set with WATCH/MULTI."""

    def __init__(
        self, client: redis.Redis, name: str = "champion", retention_seconds: float = RETENTION_SECONDS
    ) -> None:
        self.client = client
        self.name = name
        self.where = "redis"
        self.retention = int(retention_seconds)  # each version's key expires this long after its last use
        self._getex = True  # False once the server said it has no GETEX (Redis < 6.2)

    def key(self, version: str | None) -> str:
        return REDIS_PREFIX + record_name(self.name, version)

    def read(self, version: str | None) -> BreakerRecord:
        key = self.key(version)
        try:
            # reading it (every few seconds, by each worker serving it) keeps it alive
            raw = self._get_and_touch(key) if version is not None else self.client.get(key)
            if raw is None and version is not None and self._legacy_for(version):
                raw = self.client.get(key)
        except redis.RedisError as exc:
            raise BreakerStoreError(f"cannot read breaker state from Redis: {exc}") from exc
        return BreakerRecord.from_json(raw) if raw else BreakerRecord()  # type: ignore[arg-type]

    def _get_and_touch(self, key: str) -> Any:
        """The key's value, its expiry renewed: GETEX (Redis 6.2), or GET and EXPIRE on an older
        server, which answers GETEX "unknown command" (every read then failed)."""
        if self._getex:
            try:
                return self.client.getex(key, ex=self.retention)
            except redis.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._getex = False
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.expire(key, self.retention)
            raw, _ = pipe.execute()
        return raw

    def _legacy_for(self, version: str) -> bool:
        """Copy the one record written before records were per version (key ``<name>``, what
        migration 0006 does in the database) to ``version``'s key when it was that version's;
        True when copied (or another worker copied it first). The legacy key stays for the
        instances still running the previous code."""
        raw = self.client.get(REDIS_PREFIX + self.name)
        if not raw:
            return False
        try:
            legacy = BreakerRecord.from_json(raw)  # type: ignore[arg-type]
        except BreakerStoreError:
            return False  # unreadable: it is not this version's state
        if legacy.model_version != version:
            return False
        self.client.set(self.key(version), raw, nx=True, ex=self.retention)
        return True

    def write(
        self, version: str | None, record: BreakerRecord, expected_generation: int
    ) -> BreakerRecord | None:
        def expected(raw: Any) -> BreakerRecord | None:
            current = BreakerRecord.from_json(raw).generation if raw else 0
            return (
                record.evolve(generation=expected_generation + 1) if current == expected_generation else None
            )

        return self._set_watched(version, expected)

    def replace(self, version: str | None, record: BreakerRecord) -> BreakerRecord | None:
        # a write in between (another reset, a repair by hand) wins
        return self._set_watched(version, lambda raw: record.evolve(generation=_loose_generation(raw) + 1))

    def _set_watched(
        self, version: str | None, decide: Callable[[Any], BreakerRecord | None]
    ) -> BreakerRecord | None:
        """Store what ``decide`` makes of the stored value, unless it declines (None) or the key
        changes in between (WATCH): a compare-and-set; None when nothing was stored."""
        key = self.key(version)
        try:
            with self.client.pipeline() as pipe:
                pipe.watch(key)
                stored = decide(pipe.get(key))
                if stored is None:
                    pipe.unwatch()
                    return None
                pipe.multi()
                pipe.set(key, stored.to_json(), ex=self.retention if version is not None else None)
                pipe.execute()
                return stored
        except redis.WatchError:
            return None
        except redis.RedisError as exc:
            raise BreakerStoreError(f"cannot write breaker state to Redis: {exc}") from exc
