"""PostgreSQL behind a network that stops answering: statements fail in seconds, never hang.

A database that is down refuses connections at once (test_storage_backends.py,
test_reliability_faults.py). One that stops answering without refusing (a network partition,
a host gone, a firewall dropping packets) gives no error at all: without TCP timeouts a
statement waited while TCP retransmitted for ~15 minutes, and a request thread stayed there
until harakiri killed its worker. Here the database is reached through a local TCP relay whose
packets iptables drops, so only this test's connections lose their peer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import make_url

from app.storage.db import IDLE_PING_SECONDS, PG_CONNECT_ARGS, Database, DatabaseUnavailableError, make_engine
from tests.helpers import PROFILE, login, sqlalchemy_url
from tests.integration.reliability import tcp_relay

pytestmark = pytest.mark.integration

HARAKIRI = 30  # uwsgi.ini: a request thread must be free again well before this


def _connection_parameters(url: str) -> dict[str, str]:
    """The libpq parameters a connection of the engine was opened with."""
    engine = make_engine(sqlalchemy_url(url))
    try:
        connection = engine.raw_connection()
        try:
            options = connection.driver_connection.pgconn.info  # type: ignore[union-attr]
            return {o.keyword.decode(): (o.val or b"").decode() for o in options}
        finally:
            connection.close()
    finally:
        engine.dispose()


def test_postgres_connections_time_out_on_a_silent_peer(postgres_url: str) -> None:
    parameters = _connection_parameters(postgres_url)
    for key, value in PG_CONNECT_ARGS.items():
        assert parameters[key] == str(value), (key, parameters[key])
    # what the database URL says itself wins
    assert _connection_parameters(f"{postgres_url}?keepalives_idle=30")["keepalives_idle"] == "30"


@contextmanager
def _packets_dropped(port: int) -> Iterator[None]:
    """Every packet to and from the local ``port`` dropped: the peer goes silent, nothing refuses."""
    rules = [
        ["OUTPUT", "-o", "lo", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
        ["OUTPUT", "-o", "lo", "-p", "tcp", "--sport", str(port), "-j", "DROP"],
    ]
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-I", *rule], check=True, capture_output=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "-D", *rule], check=True, capture_output=True)


def test_a_statement_fails_in_seconds_when_the_database_goes_silent(postgres_url: str) -> None:
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        pytest.skip("dropping packets needs root and iptables")
    direct = make_url(sqlalchemy_url(postgres_url))
    with tcp_relay((direct.host or "127.0.0.1", direct.port or 5432)) as relay:
        relay_port = relay.port
        relayed = direct.set(host="127.0.0.1", port=relay_port)
        database = Database(relayed.render_as_string(hide_password=False))
        try:
            database.upgrade()
            assert database.served_request("not-stored") is None  # a pooled connection, in use just now
            outcome: dict[str, object] = {}

            def read() -> None:
                try:
                    outcome["answer"] = database.served_request("not-stored-either")
                except Exception as exc:  # what it raised is the assertion
                    outcome["error"] = exc

            with _packets_dropped(relay_port):
                started = time.monotonic()
                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                reader.join(HARAKIRI - 5)
                elapsed = time.monotonic() - started
                assert not reader.is_alive(), "the statement still waits on a silent database"
            assert isinstance(outcome.get("error"), DatabaseUnavailableError), outcome
            assert elapsed > 5, elapsed  # it did wait on the network: not a refusal
            # and the database answers again once the network does
            assert database.served_request("not-stored") is None
        finally:
            database.dispose()


def test_a_request_is_answered_in_bounded_time_when_the_database_hangs(
    postgres_url: str, make_app: Any
) -> None:
    """The database accepts and acknowledges but never answers (a stopped server, a stuck host):
    TCP sees nothing wrong, so only a deadline of the service's own ends the wait. Without one,
    the revocation check's idle ping on /api/recommend waited until harakiri killed the worker
    (and a worker respawned while the database hung could not start: the instance died)."""
    direct = make_url(sqlalchemy_url(postgres_url))
    silent = threading.Event()
    with tcp_relay((direct.host or "127.0.0.1", direct.port or 5432), silent) as relay:
        relay_port = relay.port
        relayed = direct.set(host="127.0.0.1", port=relay_port).render_as_string(hide_password=False)
        app = make_app(database_url=relayed, database_statement_seconds=2)
        client = app.test_client()
        headers = login(client)
        assert client.post("/api/recommend", json=PROFILE, headers=headers).status_code == 200
        time.sleep(IDLE_PING_SECONDS + 0.5)  # the pooled connections now get pinged before use
        silent.set()
        answers: dict[str, tuple[int, float]] = {}

        def ask(name: str, method: str, path: str, **kwargs: Any) -> None:
            started = time.monotonic()
            response = client.open(path, method=method, headers=headers, **kwargs)
            answers[name] = (response.status_code, time.monotonic() - started)

        calls = [
            threading.Thread(
                target=ask, args=("recommend", "POST", "/api/recommend"), kwargs={"json": PROFILE}
            ),
            threading.Thread(target=ask, args=("ready", "GET", "/health/ready")),
        ]
        for call in calls:
            call.start()
        for call in calls:
            call.join(HARAKIRI - 5)
        hung = [call.name for call in calls if call.is_alive()]
        silent.clear()
        assert not hung and len(answers) == 2, ("still waiting on a hung database", answers)
        assert answers["recommend"][0] == 200, answers  # served from the bundle, as with the database down
        assert answers["ready"][0] == 503, answers
        assert max(seconds for _, seconds in answers.values()) < HARAKIRI - 10, answers
        # and it answers again once the database does
        assert client.get("/health/ready").status_code == 200


def test_the_migration_waits_past_the_statement_deadline_for_another_migration(postgres_url: str) -> None:
    """The service's engine cuts a statement after MOVIEREC_DATABASE_STATEMENT_SECONDS, and the
    migration ran on it: a worker waiting longer than that for another worker's migration (or a
    migration taking longer) was cut, and at an instance's first start that ended the instance."""
    import psycopg

    from app.storage.db import _PG_MIGRATION_LOCK, Database
    from tests.helpers import sqlalchemy_url

    url = sqlalchemy_url(postgres_url)
    with psycopg.connect(postgres_url) as holder:  # another worker, migrating
        holder.execute("SELECT pg_advisory_lock(%s)", (_PG_MIGRATION_LOCK,))
        released = threading.Timer(
            2.0, lambda: holder.execute("SELECT pg_advisory_unlock(%s)", (_PG_MIGRATION_LOCK,))
        )
        released.start()
        database = Database(url, statement_seconds=0.5)
        try:
            started = time.monotonic()
            database.upgrade()  # waits for the lock, past the 0.5-s deadline
            assert time.monotonic() - started >= 1.5
            with database.engine.connect() as connection:  # the schema is there
                assert (
                    connection.exec_driver_sql("SELECT count(*) FROM recommendation_requests").scalar() == 0
                )
        finally:
            released.join()
            database.dispose()
