"""The revocation list during an outage: one warning when it starts, not one per retry.

Each process retried every ``retry_seconds`` (5 s) and warned each time, for the database and
for Redis: an outage of a few minutes was dozens of lines per worker, each a candidate alert.
Real clients against ports where nothing listens (connection refused at once).
"""

from __future__ import annotations

import logging
import socket
import time

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
    deadline = time.monotonic() + 0.5
    checks = 0
    while time.monotonic() < deadline:
        assert store.is_revoked("some-jti") is False  # served from the last snapshot meanwhile
        checks += 1
        time.sleep(0.02)
    messages = [record.getMessage() for record in caplog.records]
    assert checks > 5
    assert messages.count("revocation list not refreshed: database unavailable") == 1, messages
    assert messages.count("Redis unavailable for the revocation list; using the database") == 1, messages
    database.engine.dispose()
