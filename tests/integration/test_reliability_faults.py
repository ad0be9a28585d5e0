"""Faults: PostgreSQL stopped under load, a corrupt or truncated bundle on reload, Redis down.

The PostgreSQL test stops the machine's own cluster for a few seconds (other tiers use it),
so it restarts it in a ``finally`` whatever happens and waits until it answers again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers import ADMIN_PASSWORD, PG_ADMIN_URL, PROFILE, SESSION_PASSWORD, login, record_calls
from tests.integration.reliability import (
    LoadFigures,
    pg_cluster,
    pg_is_up,
    private_redis,
    score_load,
    server_environment,
    start_server,
    stored_feedback,
    tcp_relay,
)
from tests.integration.reliability import login as http_login

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 6.0


@pytest.mark.slow
def test_postgres_down_under_load(
    tmp_path: Path, postgres_url: str, model_store: Path, synthetic_data_dir: Path
) -> None:
    env = server_environment(tmp_path, model_store, synthetic_data_dir, postgres_url, None)
    server = start_server(tmp_path / "server", env)
    figures, stop = LoadFigures(), threading.Event()
    loader = threading.Thread(
        target=score_load,
        args=(server.url,),
        kwargs={
            "scores": 10**6,
            "clients": 6,
            "figures": figures,
            "stop": stop,
            "retries": 0,
            "deadline": 120,
        },
    )
    probe = requests.Session()
    headers = http_login(server.url, probe)
    during: Counter[str] = Counter()
    outage_ids: list[tuple[str, str]] = []
    try:
        loader.start()
        time.sleep(3)
        before = figures.acknowledged
        try:
            pg_cluster("stop")
            stopped_at = time.monotonic()
            while time.monotonic() - stopped_at < OUTAGE_SECONDS:
                rec = probe.post(f"{server.url}/api/recommend", json=PROFILE, headers=headers, timeout=10)
                during[f"recommend {rec.status_code}"] += 1
                if rec.status_code == 200:
                    body = rec.json()
                    outage_ids.append((body["id"], body["recommendations"][0]))
                    score = probe.post(
                        f"{server.url}/api/recommend/score",
                        json={"id": body["id"], "movie": body["recommendations"][0], "score": 4},
                        headers=headers,
                        timeout=15,
                    )
                    during[f"score {score.status_code}"] += 1
                    if score.status_code == 503:
                        assert score.json()["error"]["code"] == "unavailable"
                        assert "Retry-After" in score.headers
                ready = probe.get(f"{server.url}/health/ready", timeout=10)
                during[f"ready {ready.status_code}"] += 1
                time.sleep(0.2)
        finally:
            pg_cluster("start")
        deadline = time.monotonic() + 60
        while not pg_is_up(PG_ADMIN_URL) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert pg_is_up(PG_ADMIN_URL), "PostgreSQL did not come back"
        # recovery without a restart: scores for ids served during the outage are accepted again
        recovered_at = None
        deadline = time.monotonic() + 30
        pending = list(outage_ids)
        probe_acked: dict[tuple[str, str], float] = {}
        while pending and time.monotonic() < deadline:
            request_id, title = pending[0]
            response = probe.post(
                f"{server.url}/api/recommend/score",
                json={"id": request_id, "movie": title, "score": 4},
                headers=headers,
                timeout=15,
            )
            if response.status_code == 200:
                probe_acked[pending.pop(0)] = 4.0
                recovered_at = recovered_at or time.monotonic()
            else:
                time.sleep(0.5)
        after_recovery = figures.acknowledged
        time.sleep(3)
        stop.set()
        loader.join(timeout=60)
        assert probe.get(f"{server.url}/health/ready", timeout=10).status_code == 200
    finally:
        stop.set()
        server.stop()
        if not pg_is_up(PG_ADMIN_URL):  # belt and braces: never leave the shared cluster down
            pg_cluster("start")

    rows, stored = stored_feedback(postgres_url)
    missing = set(figures.acked) - set(stored)
    print(
        f"\npostgres outage {OUTAGE_SECONDS:.0f}s: during={dict(during)} load: {figures.line()} "
        f"stored_rows={rows} acknowledged_before_outage={before} acknowledged_after_recovery="
        f"{figures.acknowledged - after_recovery} outage_ids={len(outage_ids)} "
        f"unscored_after_recovery={len(pending)}"
    )
    assert during["recommend 200"] > 0 and not any(k.startswith("recommend 5") for k in during), during
    assert during["score 503"] > 0 and during["score 200"] == 0, (
        "feedback must answer 503 while the DB is down"
    )
    assert during["ready 503"] > 0, "readiness must report the outage"
    assert not pending, f"{len(pending)} ids served during the outage could not be scored after recovery"
    assert figures.acknowledged > after_recovery, "no score acknowledged after recovery"
    assert not missing, f"{len(missing)} acknowledged scores lost"
    wrong = {k: (v, stored[k]) for k, v in figures.acked.items() if stored[k] != v}
    assert not wrong, f"stored score differs from the last acknowledged one: {list(wrong.items())[:5]}"
    # every answer the load got was a 200 or an honest 503: no transport error, no other status,
    # and no recommendation refused while the database was down (the lists are in memory)
    assert not [s for s in figures.statuses if s >= 500 and s != 503], figures.statuses
    assert figures.failed == 0 and figures.recommend_failed == 0, figures.line()
    # ... so each stored row is one a client saw acknowledged: a score answered 503 left nothing
    # behind (rows == len(stored) always held: one row per (request, movie) is the table's key)
    assert set(stored) == set(figures.acked) | set(probe_acked), (
        f"{len(set(stored) - set(figures.acked) - set(probe_acked))} rows nobody saw acknowledged"
    )


def _bad_bundles(store: Path) -> dict[str, Path]:
    """Copies of the good bundle, one corrupted, one truncated, one missing a file."""
    good = (store / "latest").resolve()
    bad = {}
    for name, damage in (("corrupt", "corrupt"), ("truncated", "truncate"), ("incomplete", "remove")):
        target = store / f"{good.name}-{name}"
        shutil.copytree(good, target)
        pickle = target / "model.pkl"
        if damage == "corrupt":
            data = bytearray(pickle.read_bytes())
            data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
            pickle.write_bytes(bytes(data))
        elif damage == "truncate":
            pickle.write_bytes(pickle.read_bytes()[: len(pickle.read_bytes()) // 3])
        else:
            (target / "catalogue.csv").unlink()
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["version"] = target.name
        (target / "manifest.json").write_text(json.dumps(manifest))
        bad[name] = target
    return bad


def test_corrupt_or_truncated_bundle_is_refused_on_reload(
    tmp_path: Path, model_store: Path, make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    shutil.copytree(model_store, store, symlinks=True)
    app = make_app(model_path=store, model_dir=store)
    client = app.test_client()
    client_headers, admin = login(client), login(client, ADMIN_PASSWORD)
    version = client.post("/api/recommend", json=PROFILE, headers=client_headers).get_json()["model_version"]
    outcomes = {}
    for name, bundle in _bad_bundles(store).items():
        caplog.clear()
        response = client.post(
            "/api/admin/reload", json={"version": bundle.name, "wait": True}, headers=admin
        )
        outcomes[name] = response.status_code
        assert response.status_code == 422, (name, response.get_json())
        assert response.get_json()["error"]["code"] == "invalid_bundle"
        # the alert path: the refusal's own ERROR record (JSON line on stdout → journald →
        # monitor-docker → email), written before the 422 is answered, naming why. Any ERROR
        # record passed here before, so a refusal that logged nothing went unnoticed whenever
        # something else logged an error meanwhile.
        refusals = [
            r for r in caplog.records
            if r.name == "app.services.reload" and r.levelno == logging.ERROR
            and r.getMessage() == "reload refused; the previous bundle keeps serving"
        ]  # fmt: skip
        assert len(refusals) == 1, (name, [(r.name, r.getMessage()) for r in caplog.records])
        reason = getattr(refusals[0], "reason", None)
        assert reason and reason in response.get_json()["error"]["message"], (name, reason)
        assert getattr(refusals[0], "target", None) == bundle.name, name
        # and it is the only ERROR of that event: each is mailed (monitor-docker), and the loader
        # logged its own "model bundle refused" before it, so the operator read one refusal twice
        errors = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [("app.services.reload", refusals[0].getMessage())], (name, errors)
        # and the version served before keeps serving
        served = client.post("/api/recommend", json=PROFILE, headers=client_headers)
        assert served.status_code == 200 and served.get_json()["model_version"] == version, name
        model = client.get("/api/model", headers=client_headers).get_json()
        assert model["model_version"] == version, (name, model)
    print(f"\nbad bundles on reload: {outcomes}; still serving {version}")


def test_a_bundle_refused_at_start_is_one_error_naming_it_and_why(
    tmp_path: Path, model_store: Path, make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A service started on a bundle it cannot load answers 503 until a reload; the start logs one
    ERROR (mailed by monitor-docker) naming the bundle and why. The loader logged "model bundle
    refused" and the start "no model could be loaded" after it: two mails' lines for one event."""
    store = tmp_path / "store"
    shutil.copytree(model_store, store, symlinks=True)
    bad = _bad_bundles(store)["corrupt"]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        make_app(model_path=bad, model_dir=store)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [
        ("app", "no model could be loaded; the service is not ready")
    ], [(r.name, r.getMessage()) for r in errors]
    assert getattr(errors[0], "path", None) == str(bad)
    assert "corrupt" in getattr(errors[0], "reason", ""), getattr(errors[0], "reason", None)


def test_redis_down_falls_back_without_5xx(tmp_path: Path, make_app: Any) -> None:
    """Redis killed: no 5xx, logged-out tokens still refused (from the database), and the login
    limit still holds: the limiter counts in memory (docs/reliability.md) rather than letting
    every guess through or failing every login; and both use Redis again once it is back."""
    budget = 5
    with private_redis(tmp_path) as (redis_url, redis_process):
        app = make_app(redis_url=redis_url, login_rate_limit=f"{budget} per minute")
        client = app.test_client()
        revoked = login(client)
        assert client.post("/api/logout", headers=revoked).status_code == 200
        assert client.post("/api/login", json={"session_password": "wrong"}).status_code == 401
        import redis

        store = redis.Redis.from_url(redis_url)
        keys = store.keys("*")
        assert any(k.startswith(b"movierec:revoked:") for k in keys), keys
        # the wrong password was counted in Redis (shared by every worker and instance), not in memory
        counters = {k: store.get(k) for k in keys if b"/movierec/" in k and b"/login/" in k}
        assert list(counters.values()) == [b"1"], keys
        redis_process.kill()
        redis_process.wait(timeout=10)
        statuses: Counter[int] = Counter()
        started = time.monotonic()
        for _ in range(20):
            headers = login(client)
            for response in (
                client.post("/api/recommend", json=PROFILE, headers=headers),
                client.get("/protected", headers=headers),
                client.post("/api/logout", headers=headers),
                client.get("/protected", headers=headers),
                client.get("/protected", headers=revoked),
            ):
                statuses[response.status_code] += 1
        elapsed = time.monotonic() - started
        # the worker that logged them out refuses them from its own memory; another worker (here
        # one started while Redis is down) knows them only from the table: the one logged out
        # before the outage, and the one logged out during it, written to the table alone
        other = make_app(
            redis_url=redis_url,
            login_rate_limit=f"{budget} per minute",
            feedback_journal_dir=tmp_path / "other-worker",
        ).test_client()
        fresh = login(other)
        elsewhere = [other.get("/protected", headers=t).status_code for t in (revoked, headers, fresh)]
        # counted in memory now, from zero: the whole budget of wrong passwords, then 429, the right
        # password included, until the window passes
        guesses = [
            client.post("/api/login", json={"session_password": "wrong"}).status_code
            for _ in range(budget + 1)
        ]
        right = client.post("/api/login", json={"session_password": SESSION_PASSWORD})
        with private_redis(tmp_path, port=urlsplit(redis_url).port) as (_url, _back):
            recovered = _redis_used_again(client, store)
    print(
        f"\nredis down: statuses={dict(statuses)} another worker={elsewhere} "
        f"guesses={guesses} in {elapsed:.1f}s; Redis back: {recovered}"
    )
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses[200] == 60 and statuses[401] == 40  # logged-out tokens still refused
    assert elsewhere == [401, 401, 200], f"another worker, from the database: {elsewhere}"
    assert guesses == [401] * budget + [429], guesses
    assert right.status_code == 429 and right.get_json()["error"]["code"] == "rate_limited", right.get_json()
    # Redis back (empty): the limiter counts there again, from zero, and logouts reach it again
    assert recovered["login"] == 200 and recovered["counter"] == b"1", recovered
    assert recovered["revoked_in_redis"], recovered


def _redis_used_again(client: Any, store: Any, deadline: float = 60.0) -> dict[str, Any]:
    """What ``client``'s app does once Redis answers again, waited for: the limiter tries its
    storage again after a back-off that doubles up to 32 s (Flask-Limiter), the revocation
    list after 5 s. Its address spent its in-memory budget, so a right password is 429 until
    the limiter counts in the (empty) Redis again; then a wrong one is counted there."""
    import redis

    end = time.monotonic() + deadline
    login_status = 0
    while time.monotonic() < end:
        login_status = client.post("/api/login", json={"session_password": SESSION_PASSWORD}).status_code
        if login_status == 200:
            break
        time.sleep(0.2)
    assert client.post("/api/login", json={"session_password": "wrong"}).status_code == 401
    counters = [store.get(k) for k in store.keys("*") if b"/movierec/" in k and b"/login/" in k]
    revoked_in_redis = False
    while not revoked_in_redis and time.monotonic() < end:
        token = login(client)
        assert client.post("/api/logout", headers=token).status_code == 200
        try:
            revoked_in_redis = bool(store.keys("movierec:revoked:*"))
        except redis.RedisError:
            break
        time.sleep(0.2)
    return {"login": login_status, "counter": counters[0] if len(counters) == 1 else counters,
            "revoked_in_redis": revoked_in_redis}  # fmt: skip


def test_a_worker_restarted_while_the_database_is_down_keeps_the_instance_serving(
    tmp_path: Path, postgres_url: str, model_store: Path, synthetic_data_dir: Path
) -> None:
    """A worker respawned during an outage (harakiri, a crash, an OOM kill, max-requests,
    reload-on-rss) used to fail its start on the migrations and ``need-app`` then ended the whole
    instance, the sibling that was serving recommendations included (and its unwritten rows)."""
    address = urlsplit(postgres_url)
    with tcp_relay((address.hostname or "127.0.0.1", address.port or 5432)) as relay:
        relayed = address._replace(netloc=f"{address.username}@127.0.0.1:{relay.port}").geturl()
        env = server_environment(tmp_path, model_store, synthetic_data_dir, relayed, None)
        server = start_server(tmp_path / "server", env)
        try:
            session = requests.Session()
            headers = http_login(server.url, session)
            assert (
                session.post(f"{server.url}/api/recommend", json=PROFILE, headers=headers).status_code == 200
            )
            relay.cut()  # the database gone: refused, its connections reset
            started = server.output().count("WSGI app 0 (mountpoint='') ready")
            os.kill(server.worker_pids()[0], signal.SIGKILL)
            deadline = time.monotonic() + 30  # the respawned worker's start, or the instance's end
            while time.monotonic() < deadline and server.process.poll() is None:
                if server.output().count("WSGI app 0 (mountpoint='') ready") > started:
                    break
                time.sleep(0.2)
            assert server.process.poll() is None, server.output()[-2000:]
            # the respawned worker started: the sibling alone would answer the 200s below too
            respawned = server.output().count("WSGI app 0 (mountpoint='') ready") > started
            assert respawned, f"no worker started without the database: {server.output()[-2000:]}"
            statuses = Counter(
                session.post(
                    f"{server.url}/api/recommend", json=PROFILE, headers=headers, timeout=10
                ).status_code
                for _ in range(20)
            )
            assert statuses == {200: 20}, statuses  # served from the bundles
            assert session.get(f"{server.url}/health/ready", timeout=10).status_code == 503
            with tcp_relay((address.hostname or "127.0.0.1", address.port or 5432), port=relay.port):
                deadline = time.monotonic() + 20
                ready = [0]
                while time.monotonic() < deadline and ready.count(200) < 4:  # every worker, by chance
                    ready.append(session.get(f"{server.url}/health/ready", timeout=10).status_code)
                    time.sleep(0.1)
                assert ready.count(200) >= 4, ready
        finally:
            server.stop()


def test_the_database_down_is_logged_once_not_once_per_request(
    tmp_path: Path, postgres_url: str, make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request answered 503 for the database logged its own ERROR (with its reason): under
    load an outage flooded the log and every line became an alert mail (monitor-docker.py)."""
    address = urlsplit(postgres_url)
    with tcp_relay((address.hostname or "127.0.0.1", address.port or 5432)) as relay:
        relayed = address._replace(netloc=f"{address.username}@127.0.0.1:{relay.port}").geturl()
        issuer = make_app(database_url=relayed)  # another worker: its lists are new to the scorer
        scorer = make_app(database_url=relayed, feedback_journal_dir=tmp_path / "scorer-journal")
        headers = login(issuer.test_client())
        lists = [
            issuer.test_client().post("/api/recommend", json=PROFILE, headers=headers).get_json()
            for _ in range(10)
        ]
        issuer.extensions["movierec"].recommendations.request_log.flush()
        relay.cut()
        caplog.clear()
        statuses: Counter[int] = Counter()
        for body in lists:
            score = {"id": body["id"], "movie": body["recommendations"][0], "score": 4}
            statuses[
                scorer.test_client().post("/api/recommend/score", json=score, headers=headers).status_code
            ] += 1
    assert statuses == {503: 10}, statuses
    errors = [r for r in caplog.records if r.name == "app.api.errors" and r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in errors]


def test_the_online_monitor_logs_the_database_down_once_without_a_traceback(
    tmp_path: Path,
    postgres_url: str,
    make_app: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each evaluation of each worker logged a full traceback (ERROR, ~40 lines) while the database
    was down: an expected outage read like a crash, every monitor interval. (The breaker's record
    lives in Redis here, as in production, so the evaluation turn is still claimed.)"""
    address = urlsplit(postgres_url)
    with (
        private_redis(tmp_path) as (redis_url, _redis),
        tcp_relay((address.hostname or "127.0.0.1", address.port or 5432)) as relay,
    ):
        relayed = address._replace(netloc=f"{address.username}@127.0.0.1:{relay.port}").geturl()
        app = make_app(
            database_url=relayed, redis_url=redis_url, monitor_interval_seconds=0.1, monitor_sync_seconds=0.1
        )
        client = app.test_client()
        assert client.post("/api/recommend", json=PROFILE, headers=login(client)).status_code == 200
        monitor = app.extensions["movierec"].monitor
        relay.cut()
        caplog.clear()
        rounds = record_calls(monkeypatch, monitor, "tick")  # each evaluation round from now on
        deadline = time.monotonic() + 60  # many rounds (every 0.1 s), however slow the machine
        while len(rounds) < 10:
            assert time.monotonic() < deadline, f"only {len(rounds)} evaluation rounds in 60 s"
            time.sleep(0.05)
        assert monitor.last_error, "the monitor did not meet the outage"
    lines = [r for r in caplog.records if r.name == "app.monitoring.online" and r.levelno >= logging.ERROR]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].exc_info is None, "an unreachable database is not a crash: no traceback"


def test_redis_down_the_breaker_keeps_its_last_state_and_a_reset_is_a_503(
    tmp_path: Path, make_app: Any
) -> None:
    """The breaker's record lives in Redis when it is configured (as in production). With Redis
    killed while the breaker is open, each worker keeps routing by the state it last read
    (docs/operations.md): the fallback, not the tripped model; /api/model says the store cannot
    be read; and an admin reset, which cannot be recorded, is a 503 "retry", not a 500 nor a 200
    that closes nothing."""
    import redis

    with private_redis(tmp_path) as (redis_url, redis_process):
        app = make_app(
            redis_url=redis_url,
            monitor_interval_seconds=0,  # no timer: the test decides when an evaluation runs
            breaker_min_events=8,
            breaker_min_lists=2,
            breaker_min_requests=1000,  # feedback, not latency, trips it here
            login_rate_limit="1000 per minute",
        )
        client = app.test_client()
        headers, admin = login(client), login(client, ADMIN_PASSWORD)
        for _ in range(8):  # eight lists scored 0.5: the next evaluation opens the breaker
            body = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
            score = {"id": body["id"], "movie": body["recommendations"][0], "score": 0.5}
            assert client.post("/api/recommend/score", json=score, headers=headers).status_code == 200
        monitor = app.extensions["movierec"].monitor
        monitor.tick(force=True)
        assert client.get("/api/model", headers=admin).get_json()["breaker"]["state"] == "open"
        assert redis.Redis.from_url(redis_url).keys("movierec:breaker:*"), "the record is not in Redis"
        redis_process.kill()
        redis_process.wait(timeout=10)

        monitor.tick(force=True)  # the monitor's next round meets the outage
        served = [client.post("/api/recommend", json=PROFILE, headers=headers) for _ in range(3)]
        breaker = client.get("/api/model", headers=admin).get_json()["breaker"]
        reset = client.post("/api/admin/breaker/reset", json={}, headers=admin)
        after_reset = client.post("/api/recommend", json=PROFILE, headers=headers)
    assert [(r.status_code, r.get_json()["strategy"]) for r in served] == [(200, "fallback")] * 3
    assert breaker["state"] == "open" and breaker["store_error"], breaker
    assert reset.status_code == 503 and reset.get_json()["error"]["code"] == "unavailable", reset.get_json()
    assert "Retry-After" in reset.headers
    assert after_reset.get_json()["strategy"] == "fallback"  # the reset closed nothing


def test_a_hung_redis_costs_one_try_per_back_off_not_one_per_check_or_logout(tmp_path: Path) -> None:
    """A Redis that accepts connections and never answers (stopped, stuck, its host up) costs each
    try its 0.5-s timeout. The revocation list tries it once and then, for ``retry_seconds``, uses
    the table alone for checks and logouts (docs/reliability.md: each logout in the back-off once
    waited the timeout again). Counted as the connections the hung Redis was asked for."""
    from datetime import UTC, datetime, timedelta

    from app.services.revocation import RevocationStore
    from app.storage.db import Database

    database = Database(f"sqlite:///{tmp_path / 'service.db'}")
    database.upgrade()
    hung = threading.Event()
    hung.set()
    try:
        with tcp_relay(("127.0.0.1", 9), silent=hung) as redis_server:  # accepted, never answered
            worker = RevocationStore(database, f"redis://127.0.0.1:{redis_server.port}/0", retry_seconds=3600)
            expires = datetime.now(UTC) + timedelta(minutes=5)
            for n in range(10):
                worker.revoke(f"logged-out-{n}", expires)
                assert worker.is_revoked(f"logged-out-{n}") and not worker.is_revoked(f"live-{n}")
            tries = len(redis_server.sockets)
        elsewhere = RevocationStore(database)  # another worker: every logout reached the table
        assert all(elsewhere.is_revoked(f"logged-out-{n}") for n in range(10))
    finally:
        database.dispose()
    assert tries == 1, f"the hung Redis was asked {tries} times in one back-off"
