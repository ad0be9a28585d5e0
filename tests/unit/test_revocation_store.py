"""The logout blocklist (RevocationStore): outages logged once, revocations kept as long as tokens live.

During an outage each process retried every ``retry_seconds`` (5 s) and warned each time, for the database and
for Redis: an outage of a few minutes was dozens of lines per worker, each a candidate alert.
Real clients against ports where nothing listens (connection refused at once).
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from app.services.revocation import RevocationStore
from app.storage.db import Database

pytestmark = pytest.mark.unit


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, then released: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_outage_of_the_database_and_redis_is_one_warning_each(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    database = Database(f"postgresql+psycopg://movierec@127.0.0.1:{port}/movierec")
    store = RevocationStore(database, f"redis://127.0.0.1:{port}/0", refresh_seconds=0.01, retry_seconds=0.01)
    caplog.set_level(logging.WARNING, logger="app.services.revocation")
    for _ in range(25):  # each check past the back-off (0.01 s): both stores are tried again
        assert store.is_revoked("some-jti") is False  # served from the last snapshot meanwhile
        time.sleep(0.02)
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("revocation list not refreshed: database unavailable") == 1, messages
    assert messages.count("Redis unavailable for the revocation list; using the database") == 1, messages
    database.engine.dispose()


def test_a_logout_holds_in_other_workers_until_the_token_is_refused_anyway(tmp_path: Path) -> None:
    """Tokens are accepted until JWT_LEEWAY_SECONDS past their exp, but the revocation was kept only
    until exp: another worker (which has no copy of the logout of its own) accepted the logged-out
    token again in between."""
    from datetime import UTC, datetime, timedelta

    database = Database(f"sqlite:///{tmp_path / 'service.db'}")
    database.upgrade()
    worker_a = RevocationStore(database, refresh_seconds=0.0)
    worker_b = RevocationStore(database, refresh_seconds=0.0)
    exp = datetime.now(UTC) + timedelta(seconds=0.3)
    worker_a.revoke("logged-out", exp)
    while datetime.now(UTC) <= exp + timedelta(seconds=0.1):  # past exp: the old bug's window ...
        time.sleep(0.01)
    assert worker_b.is_revoked("logged-out")  # ... and at once, well inside the leeway
    database.dispose()


def test_a_worker_refuses_a_logged_out_token_while_its_first_copy_of_the_list_loads(tmp_path: Path) -> None:
    """A worker reads the table once, in one thread, while its others used the last copy: at
    start there is no copy, and a request checked while the first read was under way (a fresh
    worker's first concurrent requests, without Redis) accepted a logged-out token."""
    import threading
    from collections.abc import Iterator
    from contextlib import contextmanager
    from datetime import UTC, datetime, timedelta
    from typing import Any

    database = Database(f"sqlite:///{tmp_path / 'service.db'}")
    database.upgrade()
    RevocationStore(database).revoke("logged-out", datetime.now(UTC) + timedelta(minutes=5))
    reading, release = threading.Event(), threading.Event()

    class SlowDatabase:
        @contextmanager
        def session(self) -> Iterator[Any]:
            reading.set()
            release.wait(5)
            with database.session() as session:
                yield session

    fresh_worker = RevocationStore(SlowDatabase())  # type: ignore[arg-type]
    answers: dict[str, bool] = {}

    def check(jti: str) -> None:
        answers[jti] = fresh_worker.is_revoked(jti)

    first = threading.Thread(target=check, args=("another-token",))
    first.start()
    assert reading.wait(5)
    second = threading.Thread(target=check, args=("logged-out",))
    second.start()
    second.join(0.3)
    release.set()
    first.join(5)
    second.join(5)
    assert answers == {"another-token": False, "logged-out": True}
    database.dispose()


def test_a_logout_made_while_the_database_was_down_reaches_it_when_it_answers(tmp_path: Path) -> None:
    """Without Redis (or with it down too) a logout during a database outage was kept in this
    worker's memory only: 503, and the client's retry reached the same worker, which answered 401
    "revoked", so the client took it as done, while every other worker and replica accepted the
    token until it expired. The revocation is written to the table once the database answers."""
    from collections.abc import Iterator
    from contextlib import contextmanager
    from datetime import UTC, datetime, timedelta
    from typing import Any

    from app.errors import Unavailable
    from app.storage.db import DatabaseUnavailableError

    database = Database(f"sqlite:///{tmp_path / 'service.db'}")
    database.upgrade()
    outage = {"down": True}

    class FlakyDatabase:
        @contextmanager
        def session(self) -> Iterator[Any]:
            if outage["down"]:
                raise DatabaseUnavailableError("connection refused")
            with database.session() as session:
                yield session

    worker_a = RevocationStore(FlakyDatabase(), refresh_seconds=0.0, retry_seconds=0.0)  # type: ignore[arg-type]
    with pytest.raises(Unavailable):
        worker_a.revoke("logged-out", datetime.now(UTC) + timedelta(minutes=5))
    assert worker_a.is_revoked("logged-out")  # this worker refuses it meanwhile
    outage["down"] = False
    assert not worker_a.is_revoked("another-token")  # a check once the database answers again
    worker_b = RevocationStore(database)
    assert worker_b.is_revoked("logged-out")
    database.dispose()


def test_logouts_during_a_database_outage_are_one_warning(
    caplog: pytest.LogCaptureFixture, local_redis_url: str
) -> None:
    """With Redis up, each logout during an outage is answered (the revocation is kept for the
    table and written when it answers), and each wrote its own WARNING: every client logging
    out, or one logging in and out in a loop, was a line of its own, each a candidate alert."""
    import uuid
    from datetime import UTC, datetime, timedelta

    database = Database(f"postgresql+psycopg://movierec@127.0.0.1:{_closed_port()}/movierec")
    store = RevocationStore(database, local_redis_url)
    caplog.set_level(logging.WARNING, logger="app.services.revocation")
    for _ in range(5):
        store.revoke(f"h19-{uuid.uuid4().hex}", datetime.now(UTC) + timedelta(seconds=5))
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("token revocation not written to the database") == 1, messages
    assert len(store._unwritten) == 5  # every one is still written when the table answers
    database.engine.dispose()


def test_a_refresh_reads_only_the_logouts_new_since_the_last_one(postgres_url: str) -> None:
    """Every refresh (each second, in every worker) read the whole table: any client holding the
    session password could log in and out in a loop, ~80 a second, and after an hour every
    worker spent ~2 s of CPU per refresh reading 300,000 rows (measured on PostgreSQL), for as
    long as the loop ran. After its first read a worker reads only the rows revoked since the
    newest it has seen, less an overlap for a row that commits late or whose writer's clock is
    a little behind; and it still refuses what it read before."""
    import uuid
    from datetime import UTC, datetime, timedelta
    from typing import Any

    from sqlalchemy import event, insert

    from app.storage.models import RevokedToken

    database = Database(postgres_url)
    database.upgrade()
    now = datetime.now(UTC)
    an_hour = now + timedelta(hours=1)
    earlier = [  # one a second, the last ten minutes ago
        {"jti": uuid.uuid4().hex, "expires_at": an_hour, "revoked_at": now - timedelta(minutes=10, seconds=n)}
        for n in range(500)
    ]
    with database.session() as session:
        session.execute(insert(RevokedToken), earlier)
    fetched: list[int] = []

    def count_rows(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM revoked_tokens" in statement and statement.lstrip().upper().startswith("SELECT"):
            fetched.append(cursor.rowcount)

    event.listen(database.engine, "after_cursor_execute", count_rows)
    writer, reader = RevocationStore(database), RevocationStore(database, refresh_seconds=0.0)
    assert reader.is_revoked(earlier[0]["jti"])
    assert fetched == [500]  # the first read is the whole table
    fetched.clear()
    writer.revoke("logged-out-now", an_hour)
    with database.session() as session:  # a replica whose clock is 5 s behind, or a late commit
        session.execute(
            insert(RevokedToken),
            [{"jti": "slow-clock", "expires_at": an_hour, "revoked_at": now - timedelta(seconds=5)}],
        )
    assert reader.is_revoked("logged-out-now") and reader.is_revoked("slow-clock")
    assert reader.is_revoked(earlier[-1]["jti"]) and not reader.is_revoked("never-revoked")
    assert fetched and max(fetched) < 50, f"rows read per refresh after the first: {fetched}"
    event.remove(database.engine, "after_cursor_execute", count_rows)
    database.dispose()
