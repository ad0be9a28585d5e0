"""Token revocation (``POST /api/logout``): a blocklist shared by every instance.

Where a revoked token's ``jti`` lives, and why:

* the database (``revoked_tokens``) always: it is the durable record every instance shares,
  with or without Redis;
* Redis, when ``MOVIEREC_REDIS_URL`` is set: a key with the token's remaining lifetime as TTL,
  so every check on every instance is one fast lookup and revocation is seen at once;
* this process's memory: a token revoked here is refused here even if both stores are down;
  one the database did not take is written to it once it answers again (at the next refresh of
  the snapshot below), or the logout held in this worker only while the others accepted the
  token until it expired (the client's retry of the 503 reached this worker and was told 401
  "revoked").

Checks run on every authenticated request, so they must neither add a database round trip nor
fail when a store is down (recommendations are served while PostgreSQL is down). A check asks
Redis first (a hit refuses the token at once); without Redis, while it is unreachable, and on a
miss it reads an in-process snapshot of the table, refreshed at most every ``refresh_seconds``:
Redis holds only what was revoked while it answered, and nothing after a restart without
persistence, so the table decides. A refresh reads only the rows revoked since the newest one
it has seen (less :data:`REFRESH_OVERLAP`), the whole table every :data:`FULL_READ_SECONDS`.
A token revoked on another instance while its Redis write failed is therefore refused
everywhere within that interval. A store that fails is skipped
for ``retry_seconds`` so a dead Redis or database costs one failed attempt, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.config import JWT_LEEWAY_SECONDS
from app.errors import Unavailable
from app.monitoring.logs import LogEvery, describe_error
from app.storage.db import Database, DatabaseUnavailableError
from app.storage.models import RevokedToken

log = logging.getLogger(__name__)

REDIS_KEY_PREFIX = "movierec:revoked:"

REFRESH_OVERLAP = timedelta(seconds=30)
"""How far before the newest revocation a worker has seen its next refresh reads again: a row
that commits a little late, or whose writer's clock is a little behind, is still picked up."""
FULL_READ_SECONDS = 300.0
"""How often a worker reads the whole table again (dropping what expired), not only what is new.

Every refresh read the whole table: anyone holding the session password could log in and out in
a loop (~80 a second) and, an hour on, each worker spent ~2 s of CPU on every refresh, one a
second, reading 300,000 rows."""


def redis_client(url: str) -> redis.Redis:
    """A Redis client that fails fast: a dead Redis must cost milliseconds, not a hung request."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=0.5, socket_timeout=0.5, retry_on_timeout=False, health_check_interval=30
    )


class RevocationStore:
    """The logout blocklist: ``revoke`` at logout, ``is_revoked`` on every authenticated request."""

    def __init__(
        self,
        db: Database,
        redis_url: str | None = None,
        *,
        refresh_seconds: float = 1.0,
        retry_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.redis = redis_client(redis_url) if redis_url else None
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self._local: dict[str, float] = {}  # jti -> expiry (epoch seconds), revoked by this process
        self._unwritten: dict[str, datetime] = {}  # jti -> expires_at, revoked while the table did not answer
        self._snapshot: set[str] = set()
        self._snapshot_at = float("-inf")
        self._full_read_at = float("-inf")
        self._newest: datetime | None = None  # the latest ``revoked_at`` the snapshot holds
        self._refreshing = threading.Lock()
        self._redis_down_until = 0.0
        # an outage is one warning when it starts, then every 30 s: not one per retry (every
        # ``retry_seconds``) in every process
        self._database_down = LogEvery(30.0)
        self._redis_down = LogEvery(30.0)
        self._revocations_unwritten = LogEvery(30.0)  # logouts during an outage: not one line each

    # ------------------------------------------------------------------ revoke

    def revoke(self, jti: str, expires_at: datetime) -> None:
        """Record the revocation in every store that answers; 503 only when none does.

        Kept until the token is refused anyway: ``JWT_LEEWAY_SECONDS`` past its ``exp``, not at
        it, or a logged-out token was accepted again by every other worker in between.
        """
        expires_at += timedelta(seconds=JWT_LEEWAY_SECONDS)
        now = time.time()
        expiry = expires_at.timestamp()
        self._local = {j: e for j, e in self._local.items() if e > now}
        self._local[jti] = expiry
        stored = []
        # a Redis in its back-off is not waited for again (a host gone costs its connect timeout
        # per try): the table is the record; Redis is tried then only if the table does not answer
        redis_due = time.monotonic() >= self._redis_down_until
        if redis_due and self._store_in_redis(jti, expiry - now):
            stored.append("redis")
        try:
            self._store_in_database(jti, expires_at)
            stored.append("database")
        except (DatabaseUnavailableError, SQLAlchemyError) as exc:
            if isinstance(exc, DatabaseUnavailableError):  # an outage: written when it answers
                self._unwritten[jti] = expires_at
                self._revocations_unwritten.log(
                    log, logging.WARNING, "token revocation not written to the database",
                    reason=describe_error(exc), waiting=len(self._unwritten),
                )  # fmt: skip
            else:
                log.warning(
                    "token revocation not written to the database", extra={"reason": describe_error(exc)}
                )
        if not stored and not redis_due and self._store_in_redis(jti, expiry - now):
            stored.append("redis")
        if not stored:
            raise Unavailable("the logout could not be recorded; retry later", headers={"Retry-After": "5"})
        log.info("token revoked", extra={"stores": ",".join(stored)})

    def _store_in_redis(self, jti: str, seconds_left: float) -> bool:
        """Whether Redis (when configured) took the revocation, kept as long as the token lives."""
        if self.redis is None:
            return False
        try:
            self.redis.set(REDIS_KEY_PREFIX + jti, "1", ex=max(1, int(seconds_left) + 1))
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return False
        return True

    def _store_in_database(self, jti: str, expires_at: datetime) -> None:
        try:
            with self.db.session() as session:
                session.add(RevokedToken(jti=jti, expires_at=expires_at))
        except IntegrityError:
            return  # already revoked (a retried logout)
        with self.db.session() as session:  # keep the table as small as the set of live tokens
            session.execute(delete(RevokedToken).where(RevokedToken.expires_at < datetime.now(UTC)))

    # ------------------------------------------------------------------ check

    def is_revoked(self, jti: str) -> bool:
        if jti in self._local:
            return True
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                if self.redis.exists(REDIS_KEY_PREFIX + jti):
                    return True
            except redis.RedisError as exc:
                self._redis_failed(exc)
        # Redis holds only what was revoked while it answered (and nothing after a restart
        # without persistence): the table, read through the cached snapshot, is the record.
        return jti in self._database_snapshot()

    def _database_snapshot(self) -> set[str]:
        """Revoked, unexpired jtis from the table; one thread refreshes, the others use the last copy.

        Before the first read there is no last copy (an empty one would accept every logged-out
        token): until it has been tried once, the others wait for it.
        """
        if time.monotonic() - self._snapshot_at < self.refresh_seconds:
            return self._snapshot
        never_read = self._snapshot_at == float("-inf")
        if not self._refreshing.acquire(blocking=never_read):
            return self._snapshot
        if never_read and self._snapshot_at != float("-inf"):  # read (or tried) while this one waited
            self._refreshing.release()
            return self._snapshot
        try:
            self._write_unwritten()
            self._read_table()
            self._snapshot_at = time.monotonic()
        except (DatabaseUnavailableError, SQLAlchemyError) as exc:
            # keep serving with the last snapshot; try again after the back-off
            self._snapshot_at = time.monotonic() - self.refresh_seconds + self.retry_seconds
            self._database_down.log(
                log, logging.WARNING, "revocation list not refreshed: database unavailable",
                reason=describe_error(exc),
            )  # fmt: skip
        finally:
            self._refreshing.release()
        return self._snapshot

    def _read_table(self) -> None:
        """Add the rows revoked since the newest one seen (less the overlap) to the snapshot; the
        whole table, replacing it, at first and every :data:`FULL_READ_SECONDS`."""
        seen = self._newest
        full = seen is None or time.monotonic() - self._full_read_at >= FULL_READ_SECONDS
        query = select(RevokedToken.jti, RevokedToken.revoked_at).where(
            RevokedToken.expires_at > datetime.now(UTC)
        )
        if seen is not None and not full:
            query = query.where(RevokedToken.revoked_at > seen - REFRESH_OVERLAP)
        read_at = time.monotonic()
        with self.db.session() as session:
            rows = session.execute(query).all()
        jtis = [jti for jti, _ in rows]
        newest = max((revoked_at for _, revoked_at in rows), default=seen)
        if full:
            self._snapshot, self._full_read_at = set(jtis), read_at
        else:
            self._snapshot.update(jtis)  # in place: other threads test membership meanwhile
        self._newest = newest

    def _write_unwritten(self) -> None:
        """Write the revocations made while the table was unreachable (raises while it still is)."""
        now = datetime.now(UTC)
        for jti, expires_at in list(self._unwritten.items()):
            if expires_at > now:
                try:
                    self._store_in_database(jti, expires_at)
                except DatabaseUnavailableError:
                    raise
                except SQLAlchemyError as exc:  # refused, not unreachable: retrying would not help
                    log.warning(
                        "token revocation not written to the database", extra={"reason": describe_error(exc)}
                    )
            self._unwritten.pop(jti, None)

    def _redis_failed(self, exc: Exception) -> None:
        self._redis_down_until = time.monotonic() + self.retry_seconds
        self._redis_down.log(
            log, logging.WARNING, "Redis unavailable for the revocation list; using the database",
            reason=describe_error(exc),
        )  # fmt: skip
