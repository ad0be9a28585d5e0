"""The circuit breaker end to end: real requests, scripted feedback, what /api/recommend serves.

closed (the champion serves) → bad feedback opens it (the previous champion serves, strategy
"fallback") → after the cool-down, half-open (a share of requests probes the champion) →
good feedback on the probes closes it (the champion serves everything again) → opened
again, an admin resets it. Run with the breaker state in SQLite, PostgreSQL and Redis.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.recommender.bundle import load_bundle
from app.recommender.segments import Segment
from tests.helpers import ADMIN_PASSWORD, PROFILE, login

pytestmark = pytest.mark.api

COOLDOWN = 1.5  # step 3 must finish within it: room for a loaded CI machine (0.4 s was not always enough)


@pytest.fixture(scope="module")
def two_champions(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Any) -> tuple[Path, str, str]:
    """A model store holding a previous champion (most rated) and the current one (segment most liked)."""
    from app.recommender.training import train

    store = tmp_path_factory.mktemp("two-champions")
    previous = train(synthetic_data, store, ["most_rated"], seeds=(0,)).path.name
    time.sleep(1.1)  # created_at has one-second resolution: the champion must be strictly newer
    current = train(synthetic_data, store, ["segment_most_liked"], seeds=(0,)).path.name
    return store, previous, current


def _settings(store: Path, backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    values: dict[str, Any] = {
        "model_path": store,
        "model_dir": store,
        "monitor_interval_seconds": 0,  # no timer: the test decides when an evaluation runs
        "breaker_name": f"flow-{uuid.uuid4().hex[:8]}",
        "breaker_min_events": 8,
        "breaker_probe_min_events": 4,
        "breaker_min_lists": 2,  # the probe's 4 events score 2 lists
        "breaker_probe_share": 0.5,
        "breaker_cooldown_seconds": COOLDOWN,
        "breaker_min_requests": 1000,  # latency/errors are not what this test is about
        "login_rate_limit": "1000 per minute",  # with Redis, every test's logins count against one limit
    }
    if backend == "postgres":
        values["database_url"] = request.getfixturevalue("postgres_url")
    if backend == "redis":
        values["redis_url"] = request.getfixturevalue("local_redis_url")
    return values


def _background_monitor(
    store: Path, make_app: Callable[..., Any], request: pytest.FixtureRequest, every_events: int
) -> tuple[Any, dict[str, str], Any]:
    """A logged-in client of an app whose monitor thread evaluates every ``every_events`` scores
    (no timer); the caller stops the monitor."""
    settings = _settings(store, "sqlite", request)
    settings.update(
        monitor_interval_seconds=3600, monitor_every_events=every_events, monitor_sync_seconds=0.05
    )
    app = make_app(**settings)
    client = app.test_client()
    return client, login(client), app.extensions["movierec"].monitor


def _recommend(client: Any, headers: dict[str, str], n: int = 1) -> list[dict[str, Any]]:
    bodies = []
    for _ in range(n):
        response = client.post("/api/recommend", json=PROFILE, headers=headers)
        assert response.status_code == 200, response.get_json()
        bodies.append(response.get_json())
    return bodies


def _score(client: Any, headers: dict[str, str], body: dict[str, Any], score: float, movies: int = 1) -> None:
    for title in body["recommendations"][:movies]:
        response = client.post(
            "/api/recommend/score", json={"id": body["id"], "movie": title, "score": score}, headers=headers
        )
        assert response.status_code == 200, response.get_json()


def _trip(app: Any, client: Any, headers: dict[str, str]) -> None:
    """Eight lists scored 0.5 and an evaluation: the served version's breaker opens."""
    for served in _recommend(client, headers, 8):
        _score(client, headers, served, 0.5)
    app.extensions["movierec"].monitor.tick(force=True)


def _breaker(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get("/api/model", headers=headers)
    assert response.status_code == 200
    return response.get_json()["breaker"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
def test_breaker_closed_open_half_open_closed(
    backend: str,
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, previous, current = two_champions
    app = make_app(**_settings(store, backend, request))
    client = app.test_client()
    headers = login(client)
    monitor = app.extensions["movierec"].monitor
    segment = Segment.of(PROFILE["age"], PROFILE["gender"], PROFILE["occupation"])
    champion_titles = [r.title for r in load_bundle(store / current).recommend_segment(segment, 10)]
    previous_titles = [r.title for r in load_bundle(store / previous).recommend_segment(segment, 10)]
    assert champion_titles != previous_titles  # two different models, so the test can tell them apart

    # 1. closed: the champion serves
    body = _recommend(client, headers)[0]
    assert (body["strategy"], body["model_version"]) == ("segment", current)
    assert body["recommendations"] == champion_titles
    assert _breaker(client, headers)["state"] == "closed"

    # 2. users hate it: 8 lists scored 1 → the next evaluation opens the breaker
    for served in _recommend(client, headers, 8):
        _score(client, headers, served, 1.0)
    assert _breaker(client, headers)["state"] == "closed"  # nothing is evaluated per request
    with caplog.at_level(logging.WARNING, logger="movierec.breaker"):
        monitor.tick(force=True)
    state = _breaker(client, headers)
    assert state["state"] == "open" and "mean score 1.00 < 2.5" in state["reason"]
    assert state["fallback"] == f"previous champion {previous}"
    assert state["last_evaluation"]["quality"]["events"] == 8
    assert any(
        r.levelno == logging.ERROR and getattr(r, "alert_kind", "") == "breaker.opened"
        for r in caplog.records
    )

    # 3. open: the previous champion serves as "fallback"; feedback on it does not count for the champion
    for served in _recommend(client, headers, 3):
        assert (served["strategy"], served["model_version"]) == ("fallback", previous)
        assert served["recommendations"] == previous_titles
        _score(client, headers, served, 5.0)
    monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "open"  # the cool-down is not over

    # 4. cool-down over: half-open, every second request probes the champion
    time.sleep(COOLDOWN + 0.05)
    monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "half_open"
    served = _recommend(client, headers, 4)
    assert [s["strategy"] for s in served] == ["fallback", "segment", "fallback", "segment"]
    probes = [s for s in served if s["strategy"] == "segment"]
    assert all(s["model_version"] == current and s["recommendations"] == champion_titles for s in probes)

    # 5. the probes are liked: 2 lists x 2 movies = 4 probe events → closed
    _score(client, headers, probes[0], 4.0, movies=2)
    monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "half_open"  # 2 events < 4
    _score(client, headers, probes[1], 4.5, movies=2)
    monitor.tick(force=True)
    state = _breaker(client, headers)
    assert state["state"] == "closed" and state["reason"] == "probe healthy over 4 feedback events"

    # 6. closed: the champion serves every request again
    assert [s["strategy"] for s in _recommend(client, headers, 4)] == ["segment"] * 4


@pytest.mark.parametrize("backend", ["sqlite"])
def test_admin_reset_closes_an_open_breaker(
    backend: str,
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
) -> None:
    store, _previous, current = two_champions
    app = make_app(**_settings(store, backend, request))
    client = app.test_client()
    headers, admin = login(client), login(client, ADMIN_PASSWORD)
    _trip(app, client, headers)
    assert _recommend(client, headers)[0]["strategy"] == "fallback"

    assert client.post("/api/admin/breaker/reset", json={}, headers=headers).status_code == 403
    assert client.post("/api/admin/breaker/reset", json={}).status_code == 401
    response = client.post("/api/admin/breaker/reset", json={"reason": "false alarm"}, headers=admin)
    assert response.status_code == 200
    assert (
        response.get_json()["state"] == "closed"
        and response.get_json()["reason"] == "reset by admin: false alarm"
    )
    assert (body := _recommend(client, headers)[0])["strategy"] == "segment" and body[
        "model_version"
    ] == current
    # the feedback that opened it is older than the reset: the next evaluation keeps it closed
    app.extensions["movierec"].monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "closed"


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_instances_serving_different_versions_keep_their_own_breakers(
    backend: str,
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """A rolling deploy: one instance still serves the previous version while another serves the
    new champion, both on one breaker store. They shared one record, and the new version's first
    evaluation closed the breaker the old version had tripped ("model replaced"): the instance
    still serving the bad model served it again."""
    store, previous, current = two_champions
    settings = _settings(store, backend, request)
    old = make_app(**{**settings, "model_path": store / previous, "feedback_journal_dir": tmp_path / "old"})
    new = make_app(**settings)
    old_client, new_client = old.test_client(), new.test_client()
    old_headers, new_headers = login(old_client), login(new_client)
    admin = login(new_client, ADMIN_PASSWORD)
    assert _recommend(old_client, old_headers)[0]["model_version"] == previous
    assert _recommend(new_client, new_headers)[0]["model_version"] == current

    for served in _recommend(old_client, old_headers, 8):  # the old version is hated: it trips
        _score(old_client, old_headers, served, 1.0)
    old.extensions["movierec"].monitor.tick(force=True)
    assert _recommend(old_client, old_headers)[0]["strategy"] == "fallback"

    for served in _recommend(new_client, new_headers, 8):  # the new one is liked, and evaluated
        _score(new_client, new_headers, served, 4.5)
    for _ in range(2):
        new.extensions["movierec"].monitor.tick(force=True)
        old.extensions["movierec"].monitor.tick(force=True)
    assert _recommend(old_client, old_headers)[0]["strategy"] == "fallback"  # still tripped
    assert _breaker(old_client, old_headers)["model_version"] == previous
    state = _breaker(new_client, new_headers)
    assert (state["state"], state["model_version"]) == ("closed", current)
    assert state["last_evaluation"]["quality"]["events"] == 8
    assert _recommend(new_client, new_headers)[0]["strategy"] == "segment"

    # an admin closes the old version's breaker through an instance serving the new one
    for bad in ({"model_version": ""}, {"model_version": "v" * 65}, {"model_version": 7}):
        response = new_client.post("/api/admin/breaker/reset", json=bad, headers=admin)
        assert response.status_code == 400 and "model_version" in response.get_json()["error"]["fields"]
    response = new_client.post("/api/admin/breaker/reset", json={"model_version": previous}, headers=admin)
    assert response.status_code == 200
    assert (response.get_json()["state"], response.get_json()["model_version"]) == ("closed", previous)
    # the fallback this instance's served version has (the previous champion: the very version
    # reset) is not the reset version's: one this instance does not serve names none
    assert (response.get_json()["fallback"], response.get_json()["fallback_loaded"]) == (None, None)
    assert _breaker(new_client, new_headers)["model_version"] == current  # its own view is unchanged
    old.extensions["movierec"].monitor.tick(force=True)
    assert _recommend(old_client, old_headers)[0]["strategy"] != "fallback"


def test_a_version_reloaded_into_a_worker_is_served_by_its_breaker_from_the_first_request(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """A rollback to a version another instance had tripped: the worker reads that version's
    record before swapping the bundle in, not at its monitor's next sync."""
    shared, previous, current = two_champions
    store = tmp_path / "store"  # a reload leaves a marker in the store: not in the module's
    shutil.copytree(shared, store, symlinks=True)
    settings = _settings(store, "sqlite", request)
    tripping = make_app(
        **{**settings, "model_path": store / previous, "feedback_journal_dir": tmp_path / "t"}
    )
    client = tripping.test_client()
    headers = login(client)
    for served in _recommend(client, headers, 8):
        _score(client, headers, served, 1.0)
    tripping.extensions["movierec"].monitor.tick(force=True)
    assert _recommend(client, headers)[0]["strategy"] == "fallback"

    serving = make_app(**settings)  # no timer: nothing re-reads the store but the reload
    http = serving.test_client()
    user, admin = login(http), login(http, ADMIN_PASSWORD)
    assert _recommend(http, user)[0]["model_version"] == current
    response = http.post("/api/admin/reload", json={"version": previous, "wait": True}, headers=admin)
    assert response.status_code == 200 and response.get_json()["model_version"] == previous
    assert _recommend(http, user)[0]["strategy"] == "fallback"
    state = _breaker(http, user)
    assert (state["state"], state["model_version"]) == ("open", previous)


@pytest.mark.parametrize("before", ["drift", "insufficient"])
def test_drift_alerted_under_the_previous_champion_is_not_alerted_again_for_the_next(
    before: str,
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drift is judged per model version, and the alert fired on a version's first ``drift``: every
    promotion mailed the drift the previous champion had been alerted of all along (the runbook's
    retrain does not clear it: the reference is the MovieLens users). The new champion's own status
    still says ``drift``; the alert comes when drift starts, not because the version changed."""
    import app.monitoring.online as online

    alerts: list[Any] = []
    monkeypatch.setattr(online, "raise_alert", alerts.append)
    store, previous, current = two_champions
    settings = {**_settings(store, "sqlite", request), "drift_min_requests": 3}
    old = make_app(
        **{**settings, "model_path": store / previous, "feedback_journal_dir": tmp_path / "old",
           "drift_min_requests": 3 if before == "drift" else 1000}
    )  # fmt: skip
    old_client = old.test_client()
    old_headers = login(old_client)
    _recommend(old_client, old_headers, 3)  # three identical profiles: the requests drift
    old.extensions["movierec"].recommendations.request_log.flush()  # in the database: drift reads it
    old.extensions["movierec"].monitor.tick(force=True)
    assert _breaker(old_client, old_headers)["last_evaluation"]["drift"]["status"] == before
    assert [a.kind for a in alerts] == (["drift"] if before == "drift" else [])

    new = make_app(**settings)  # the next champion, on the same requests
    client = new.test_client()
    headers = login(client)
    for _ in range(2):
        new.extensions["movierec"].monitor.tick(force=True)
    state = _breaker(client, headers)
    assert (state["model_version"], state["last_evaluation"]["drift"]["status"]) == (current, "drift")
    # one alert in all: the previous champion's, or the new one's when its predecessor had none
    drift = [a for a in alerts if a.kind == "drift"]
    assert len(drift) == 1, [a.summary for a in drift]
    assert drift[0].details["model_version"] == (previous if before == "drift" else current)


def test_background_monitor_opens_it_after_n_scores(
    two_champions: tuple[Path, str, str], make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """No explicit tick: every N scores wake the worker's monitor thread, which opens the breaker."""
    client, headers, monitor = _background_monitor(two_champions[0], make_app, request, every_events=8)
    try:
        for served in _recommend(client, headers, 8):
            _score(client, headers, served, 1.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _breaker(client, headers)["state"] != "open":
            time.sleep(0.05)
        assert _breaker(client, headers)["state"] == "open"
        assert _recommend(client, headers)[0]["strategy"] == "fallback"
    finally:
        monitor.stop()


def _error_prone(
    store: Path, make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> tuple[Any, dict[str, str], Any]:
    """A logged-in client of an app whose breaker opens at a 50 % model error rate over 3 calls."""
    settings = _settings(store, "sqlite", request)
    settings.update(breaker_min_requests=3, breaker_max_error_rate=0.5)
    app = make_app(**settings)
    client = app.test_client()
    return client, login(client), app.extensions["movierec"]


def _break(bundle: Any) -> None:
    """The loaded champion starts failing."""

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("corrupt table")

    bundle.recommend_segment = broken


def test_a_failing_champion_is_answered_from_the_fallback_and_opens_the_breaker(
    two_champions: tuple[Path, str, str], make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    store, previous, current = two_champions
    client, headers, services = _error_prone(store, make_app, request)
    _break(services.models.bundle)
    # answered, not 500: popularity from the champion's tables while the previous champion is not
    # loaded (a request does not load it), then the previous champion, loaded by the monitor thread
    for served in _recommend(client, headers, 3):
        assert (served["strategy"], served["model_version"]) == ("fallback", current)
    services.monitor.tick()
    state = _breaker(client, headers)
    assert state["state"] == "open" and "model error rate 100.0%" in state["reason"]
    assert (state["fallback"], state["fallback_loaded"]) == (f"previous champion {previous}", True)
    assert [(s["strategy"], s["model_version"]) for s in _recommend(client, headers, 2)] == [
        ("fallback", previous)
    ] * 2


def test_a_breaker_opened_on_errors_closes_on_healthy_probe_calls_when_nobody_scores(
    two_champions: tuple[Path, str, str], make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """The champion failed, the breaker opened; after the cool-down the probe's calls succeed, but
    no client scores a list: closing waited for probe feedback that never came, so half the
    traffic here (90 % by default) got the fallback until an admin reset it."""
    store, _previous, current = two_champions
    client, headers, services = _error_prone(store, make_app, request)
    _break(services.models.bundle)
    _recommend(client, headers, 3)
    services.monitor.tick()
    assert _breaker(client, headers)["state"] == "open"
    del services.models.bundle.recommend_segment  # the champion recovers
    time.sleep(COOLDOWN + 0.05)
    services.monitor.tick()
    assert _breaker(client, headers)["state"] == "half_open"
    served = _recommend(client, headers, 6)
    assert [s["strategy"] for s in served].count("segment") == 3  # three probe calls, all ok
    services.monitor.tick()
    state = _breaker(client, headers)
    assert state["state"] == "closed" and state["reason"] == "probe healthy over 3 model calls"
    assert [(s["strategy"], s["model_version"]) for s in _recommend(client, headers, 3)] == [
        ("segment", current)
    ] * 3


def test_one_long_list_scored_by_one_user_neither_opens_nor_closes_the_breaker(
    two_champions: tuple[Path, str, str], make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """Feedback rows were the only measure of evidence: one user who asked for 20 movies and
    scored them all low (one list: one person's taste) opened the breaker for every client, and
    one list scored high during the probe closed it again. The rows must come from enough lists."""
    store, _previous, _current = two_champions
    app = make_app(**{**_settings(store, "sqlite", request), "breaker_min_lists": 3})
    client = app.test_client()
    headers = login(client)
    monitor = app.extensions["movierec"].monitor
    long_list = {**PROFILE, "max_recs": 20}

    body = client.post("/api/recommend", json=long_list, headers=headers).get_json()
    _score(client, headers, body, 0.5, movies=20)  # 20 rows >= 8 events, from one list
    monitor.tick(force=True)
    state = _breaker(client, headers)
    assert state["state"] == "closed"
    assert state["last_evaluation"]["quality"]["events"] == 20
    assert state["last_evaluation"]["quality"]["lists"] == 1
    assert (
        "20 feedback events from 1 scored lists; 3 needed"
        in state["last_evaluation"]["quality_verdict"]["reasons"][0]
    )

    for served in _recommend(client, headers, 2):  # two more lists: three people disliked it
        _score(client, headers, served, 0.5)
    monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "open"

    time.sleep(COOLDOWN + 0.05)
    monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "half_open"
    probe = next(
        served
        for served in (
            client.post("/api/recommend", json=long_list, headers=headers).get_json() for _ in range(4)
        )
        if served["strategy"] != "fallback"
    )
    _score(client, headers, probe, 5.0, movies=20)  # 20 rows >= 4 probe events, from one list
    monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "half_open"


def _batch(client: Any, headers: dict[str, str], requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = client.post("/api/recommend/batch", json={"requests": requests}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"]


def test_the_batch_endpoint_goes_through_the_breaker_item_by_item(
    two_champions: tuple[Path, str, str], make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """An open breaker takes the champion out of /api/recommend/batch too, and each item is a call
    the breaker counts (the batch had looked the champion up directly: an open breaker, or a
    champion failing, did not change what a batch served)."""
    store, previous, current = two_champions
    client, headers, services = _error_prone(store, make_app, request)
    requests = [PROFILE, {**PROFILE, "gender": "F", "max_recs": 3}, {"user_id": 10**6}]
    results = _batch(client, headers, requests)
    assert [(r["strategy"], r["model_version"]) for r in results[:2]] == [("segment", current)] * 2
    assert results[2]["error"]["code"] == "not_found"  # the client's error, not the model's

    for served in _recommend(client, headers, 8):
        _score(client, headers, served, 0.5)
    services.monitor.tick(force=True)
    assert _breaker(client, headers)["state"] == "open"
    results = _batch(client, headers, requests[:2])
    assert [(r["strategy"], r["model_version"]) for r in results] == [("fallback", previous)] * 2

    client.post("/api/admin/breaker/reset", json={}, headers=login(client, ADMIN_PASSWORD))
    assert [r["model_version"] for r in _batch(client, headers, requests[:1])] == [current]

    _break(services.models.bundle)
    results = _batch(client, headers, [PROFILE] * 3)  # answered from the fallback, not a 500
    assert [(r["strategy"], r["model_version"]) for r in results] == [("fallback", previous)] * 3
    services.monitor.tick()
    state = _breaker(client, headers)
    assert state["state"] == "open" and "model error rate" in state["reason"]


def test_score_triggered_evaluations_are_spaced_not_dropped(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import app.monitoring.online as online

    monkeypatch.setattr(online, "EVENT_SPACING_SECONDS", 0.6)
    client, headers, monitor = _background_monitor(two_champions[0], make_app, request, every_events=2)
    times: list[float] = []
    tick = monitor.tick
    monkeypatch.setattr(
        monitor,
        "tick",
        lambda **kw: (times.append(time.monotonic()) if kw.get("force") else None, tick(**kw))[1],
    )
    try:
        served = _recommend(client, headers, 4)
        for body in served[:2]:  # the first wake-up
            _score(client, headers, body, 4.0)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not times:
            time.sleep(0.01)
        # The second comes once the first evaluation has begun. Sent sooner, it could reach the
        # monitor before that evaluation started and join it (its scores are committed, so that
        # evaluation counts them): two wake-ups back to back made this test flaky in CI.
        for body in served[2:]:
            _score(client, headers, body, 4.0)
        while time.monotonic() < deadline and len(times) < 2:
            time.sleep(0.05)
        assert len(times) == 2, "the second wake-up must be evaluated, later"
        assert times[1] - times[0] >= 0.5
    finally:
        monitor.stop()


def test_an_unreadable_shared_record_neither_stops_the_start_nor_makes_a_reset_a_500(
    make_app: Callable[..., Any], model_store: Path, local_redis_url: str
) -> None:
    """A hand-edited or truncated Redis record: the app did not start (its first sync raised), and
    a reset was a 500, then a 503 "retry" for ever. Now the record counts as a store that cannot
    be read, and an admin reset replaces it."""
    import redis

    url = local_redis_url
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    name = f"unreadable-{uuid.uuid4().hex[:8]}"
    key = f"movierec:breaker:{name}@{load_bundle(model_store).version}"  # the served version's record
    client.set(key, b"not json")
    try:
        app = make_app(
            redis_url=url, breaker_name=name, monitor_interval_seconds=0, login_rate_limit="1000 per minute"
        )
        http = app.test_client()
        assert http.post("/api/recommend", json=PROFILE, headers=login(http)).status_code == 200
        response = http.post("/api/admin/breaker/reset", json={}, headers=login(http, ADMIN_PASSWORD))
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["state"] == "closed"
        assert b'"closed"' in client.get(key)
        # the record it replaced is no store problem any more: its answer said "unreadable breaker
        # record", and so did /api/model until the worker's next sync
        assert response.get_json()["store_error"] is None, response.get_json()
    finally:
        client.delete(key)


@contextmanager
def app_with_stored_record(
    make_app: Callable[..., Any], model_store: Path, redis_url: str, **fields: Any
) -> Iterator[Any]:
    """An app on a breaker of its own whose record for the served version, in Redis, is a valid
    record with ``fields`` over it (what a hand edit of the shared record leaves); deleted after."""
    import json

    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    name = f"edited-{uuid.uuid4().hex[:8]}"
    version = load_bundle(model_store).version
    key = f"movierec:breaker:{name}@{version}"  # the served version's record
    record = {"state": "closed", "since": 1.0e9, "reason": "edited", "model_version": version,
              "generation": 3, "evaluated_at": 0.0, "evaluation": {}}  # fmt: skip
    client.set(key, json.dumps({**record, **fields}))
    try:
        yield make_app(
            redis_url=redis_url, breaker_name=name, monitor_interval_seconds=0,
            login_rate_limit="1000 per minute",
        )  # fmt: skip
    finally:
        client.delete(key)


@pytest.mark.parametrize(
    "fields",
    [{"since": "yesterday"}, {"since": float("nan")}, {"since": 1e300}, {"evaluated_at": float("inf")},
     {"reason": 5}, {"model_version": ["v"]}],
    ids=["since-text", "since-nan", "since-huge", "evaluated-inf", "reason-number", "version-list"],
)  # fmt: skip
def test_a_record_with_a_wrongly_typed_field_is_unreadable_not_a_500(
    make_app: Callable[..., Any], model_store: Path, local_redis_url: str, fields: dict[str, Any]
) -> None:
    """A hand-edited record whose state and generation parse but whose times or texts do not (a
    text or a NaN for ``since``: json.loads takes NaN and Infinity) was adopted as the breaker's
    state: GET /api/model and the dashboard turned it into a date and were 500s, and so was every
    evaluation of the monitor. It is an unreadable record, like one that is not JSON: the workers
    keep their last state, ``store_error`` says so, and an admin reset replaces it."""
    with app_with_stored_record(make_app, model_store, local_redis_url, state="open", **fields) as app:
        http = app.test_client()
        headers, admin = login(http), login(http, ADMIN_PASSWORD)
        model = http.get("/api/model", headers=admin)
        assert model.status_code == 200, model.get_data(as_text=True)[:300]
        assert "unreadable breaker record" in model.get_json()["breaker"]["store_error"]
        ui = app.test_client()
        assert ui.post("/ui/login", data={"session_password": ADMIN_PASSWORD}).status_code == 303
        assert ui.get("/ui/dashboard").status_code == 200
        response = http.post("/api/admin/breaker/reset", json={}, headers=admin)
        assert (response.status_code, response.get_json()["state"]) == (200, "closed"), response.get_json()
        assert http.post("/api/recommend", json=PROFILE, headers=headers).get_json()["strategy"] == "segment"


@pytest.mark.parametrize(
    "verdict", ["unhealthy", {"verdict": "unhealthy", "reasons": 5}], ids=["text", "reasons-number"]
)
def test_an_odd_stored_verdict_leaves_the_dashboard_shown(
    make_app: Callable[..., Any], model_store: Path, local_redis_url: str, verdict: Any
) -> None:
    """The record's evaluation is free-form JSON (what the monitor stored; by hand, anything): the
    dashboard read its quality verdict as a mapping with a list of reasons, and a text there (or
    a number for the reasons) made the whole page the 500 page. It is left out instead."""
    stored = {"evaluated_at": 1.0e9, "evaluation": {"quality_verdict": verdict}}
    with app_with_stored_record(make_app, model_store, local_redis_url, **stored) as app:
        ui = app.test_client()
        assert ui.post("/ui/login", data={"session_password": ADMIN_PASSWORD}).status_code == 303
        page = ui.get("/ui/dashboard")
        assert page.status_code == 200 and 'id="breaker-state">closed<' in page.text


@pytest.mark.parametrize(
    "evaluation",
    [{"drift": "ok"}, {"drift": {"status": "ok", "psi": ["gender"], "max_psi": "low"}},
     {"drift": {"status": "ok", "psi": {"gender": None, "age_bucket": 0.5}}}, {"quality": "good"},
     {"quality": {"mean_score": "high", "events": [3], "like_share": 0.5}}],
    ids=["drift-text", "psi-list", "psi-null", "quality-text", "quality-values-text"],
)  # fmt: skip
def test_an_odd_stored_evaluation_leaves_metrics_dashboard_and_monitor_working(
    make_app: Callable[..., Any], model_store: Path, local_redis_url: str, evaluation: dict[str, Any]
) -> None:
    """The drift and quality parts of the record's evaluation are free-form JSON too: a text where
    the monitor stores a mapping, or a text or null where it stores a number, made /metrics a 500
    (every series lost to the scrape, the HTTP counters too), the dashboard the 500 page, and
    every evaluation of the monitor fail, so the odd value was never replaced. What is no mapping
    or no number is left out; the rest is still shown, and the next evaluation replaces it."""
    from prometheus_client.parser import text_string_to_metric_families

    version = load_bundle(model_store).version
    if isinstance(evaluation.get("quality"), dict):
        evaluation["quality"]["model_version"] = version
    stored = {"evaluated_at": 1.0e9, "evaluation": evaluation}
    with app_with_stored_record(make_app, model_store, local_redis_url, **stored) as app:
        http = app.test_client()
        response = http.get("/metrics")
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples
        }
        names = {name for name, _ in samples}
        assert "movierec_http_requests_total" in names or "movierec_breaker_state" in names
        assert "movierec_online_mean_score" not in names and "movierec_online_feedback_events" not in names
        if "quality" in evaluation and isinstance(evaluation["quality"], dict):
            assert samples[("movierec_online_like_share", ())] == 0.5  # the number beside them stays
        if "age_bucket" in str(evaluation):
            assert samples[("movierec_drift_psi", (("feature", "age_bucket"),))] == 0.5
            assert samples[("movierec_drift_psi", (("feature", "max"),))] == 0.5
            assert ("movierec_drift_psi", (("feature", "gender"),)) not in samples
        ui = app.test_client()
        assert ui.post("/ui/login", data={"session_password": ADMIN_PASSWORD}).status_code == 303
        page = ui.get("/ui/dashboard")
        assert page.status_code == 200 and 'id="breaker-state">closed<' in page.text
        monitor = app.extensions["movierec"].monitor
        monitor.tick(force=True)  # raised, and so did every evaluation after it
        drift = monitor.breaker.record_of(version).evaluation["drift"]
        assert isinstance(drift, dict) and drift["status"] in ("unknown", "insufficient")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@pytest.mark.parametrize("version", ["v1\u0000", "bad\nversion", " "])
def test_a_malformed_model_version_is_a_400_not_a_store_failure(
    backend: str, version: str, make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """model_version only has a length check: on PostgreSQL a NUL makes the row lookup raise, so a
    client's typo is answered 503 "retry" (with Retry-After); on SQLite/Redis it "closes" a record
    no bundle can have (200)."""
    overrides: dict[str, Any] = {"monitor_interval_seconds": 0, "login_rate_limit": "1000 per minute"}
    if backend == "postgres":
        overrides["database_url"] = request.getfixturevalue("postgres_url")
    app = make_app(**overrides)
    http = app.test_client()
    response = http.post(
        "/api/admin/breaker/reset", json={"model_version": version}, headers=login(http, ADMIN_PASSWORD)
    )
    assert response.status_code == 400, (response.status_code, response.get_json())
    assert "model_version" in response.get_json()["error"]["fields"]


def test_a_named_version_without_a_record_is_a_404_not_a_silent_200(make_app: Callable[..., Any]) -> None:
    """An admin's typo in model_version answered 200 {"state": "closed", "model_version": null}:
    the breaker meant stays open while the answer says it was closed."""
    app = make_app(monitor_interval_seconds=0, login_rate_limit="1000 per minute")
    http = app.test_client()
    admin = login(http, ADMIN_PASSWORD)
    response = http.post("/api/admin/breaker/reset", json={"model_version": "no-such-version"}, headers=admin)
    assert response.status_code == 404, (response.status_code, response.get_json())
    body = response.get_json()["error"]
    assert body["code"] == "not_found" and "model_version" in body["fields"]
    # the served version, even never evaluated (no record yet), is closed and named
    served = app.extensions["movierec"].models.bundle.version
    response = http.post("/api/admin/breaker/reset", json={"model_version": served}, headers=admin)
    assert response.status_code == 200 and response.get_json()["model_version"] == served
    response = http.post("/api/admin/breaker/reset", json={}, headers=admin)
    assert response.status_code == 200 and response.get_json()["model_version"] == served


@pytest.fixture(scope="module")
def segment_then_personal(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Any) -> tuple[Path, str]:
    """A previous champion that knows no users (segment most liked), then one that does (most liked)."""
    from app.recommender.training import train

    store = tmp_path_factory.mktemp("segment-then-personal")
    previous = train(synthetic_data, store, ["segment_most_liked"], seeds=(0,)).path.name
    time.sleep(1.1)  # created_at has one-second resolution: the champion must be strictly newer
    train(synthetic_data, store, ["most_liked"], seeds=(0,))
    return store, previous


def _opened(
    store: Path, make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> tuple[Any, Any, dict]:
    """An app serving ``store`` whose breaker is open, a client and its headers."""
    app = make_app(**_settings(store, "sqlite", request))
    client = app.test_client()
    headers = login(client)
    _trip(app, client, headers)
    assert _breaker(client, headers)["state"] == "open"
    return app, client, headers


def test_the_fallback_never_shows_a_known_user_a_movie_they_rated(
    segment_then_personal: tuple[Path, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    synthetic_data: Any,
) -> None:
    """API.md: "for a known user, never include a movie that user already rated" — also while the
    breaker is open and the previous champion does not know the user (it served them its segment
    list, rated movies and all, when the request carried demographics too)."""
    app, client, headers = _opened(segment_then_personal[0], make_app, request)
    ratings = synthetic_data.ratings
    for user_id in app.extensions["movierec"].models.require().tables.user_ids[:5]:
        body = {"user_id": int(user_id), **PROFILE, "max_recs": 100}
        served = client.post("/api/recommend", json=body, headers=headers).get_json()
        assert served["strategy"] == "fallback" and served["items"]
        rated = set(ratings.loc[ratings["user_id"] == int(user_id), "movie_id"])
        assert not rated & {item["movie_id"] for item in served["items"]}


def test_the_fallback_leaves_out_what_a_named_user_scored_since_the_model(
    segment_then_personal: tuple[Path, str], make_app: Callable[..., Any], request: pytest.FixtureRequest
) -> None:
    """While the breaker is open, the fallback's list for a request naming a user left out what the
    champion knew they rated, not the movie they had just scored on a fallback list served under
    their id: it came back first. It leaves that out too now, as /api/users/<id>/recommendations does."""
    app, client, headers = _opened(segment_then_personal[0], make_app, request)
    user_id = int(app.extensions["movierec"].models.require().tables.user_ids[0])
    for body in ({"user_id": user_id, "max_recs": 8}, {"user_id": user_id, **PROFILE, "max_recs": 8}):
        first = client.post("/api/recommend", json=body, headers=headers).get_json()
        assert first["strategy"] == "fallback", first
        _score(client, headers, first, 4.5)
        app.extensions["movierec"].recommendations.feedback.drain()
        again = client.post("/api/recommend", json=body, headers=headers).get_json()
        assert again["strategy"] == "fallback" and first["recommendations"][0] not in again["recommendations"]
        assert again["recommendations"][:7] == first["recommendations"][1:]


def test_a_disabled_breaker_judges_and_says_so_but_routes_nothing(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MOVIEREC_BREAKER_ENABLED=false: evaluation still runs and may open it, but the champion
    keeps serving, and the alert must not claim "serving the fallback". Nor may GET /api/model
    and the dashboard: they said "open" with a previous champion as the fallback, and nothing
    that the champion serves every request all the same."""
    store, _previous, current = two_champions
    app = make_app(**_settings(store, "sqlite", request), breaker_enabled=False)
    client = app.test_client()
    headers = login(client)
    for served in _recommend(client, headers, 8):
        _score(client, headers, served, 1.0)
    with caplog.at_level(logging.WARNING, logger="movierec.breaker"):
        app.extensions["movierec"].monitor.tick(force=True)
    state = _breaker(client, headers)
    assert (state["state"], state["routes"], state["fallback"], state["fallback_loaded"]) == (
        "open", False, "none", False
    ), state  # fmt: skip
    admin = app.test_client()
    assert admin.post("/ui/login", data={"session_password": ADMIN_PASSWORD}).status_code == 303
    assert "</span> (not routing: MOVIEREC_BREAKER_ENABLED=false" in admin.get("/ui/dashboard").text
    [opened] = [r for r in caplog.records if r.name == "movierec.breaker" and r.levelno == logging.ERROR]
    assert "not routing" in opened.getMessage() and "serving the fallback" not in opened.getMessage()
    for served in _recommend(client, headers, 3):
        assert (served["strategy"], served["model_version"]) == ("segment", current)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_reset_reason_with_a_control_character_is_a_400_not_a_store_failure(
    backend: str,
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
) -> None:
    """``reason`` had only a length check and is written into the breaker record ("reset by
    admin: <reason>"): on PostgreSQL a NUL in it failed the write, so an open breaker's reset was
    answered 503 "retry" (Retry-After) for a client's bad input; a refused reason names its rule."""
    store, _previous, _current = two_champions
    app = make_app(**_settings(store, backend, request))
    client = app.test_client()
    headers, admin = login(client), login(client, ADMIN_PASSWORD)
    _trip(app, client, headers)
    assert _breaker(client, headers)["state"] == "open"
    for reason in ("false\u0000alarm", "x" * 201):
        response = client.post("/api/admin/breaker/reset", json={"reason": reason}, headers=admin)
        assert response.status_code == 400, (response.status_code, response.get_json())
        assert response.get_json()["error"]["fields"] == {
            "reason": "must be text of at most 200 characters without control characters"
        }
    assert _breaker(client, headers)["state"] == "open"
    ok = client.post("/api/admin/breaker/reset", json={"reason": "false alarm, é"}, headers=admin)
    assert ok.status_code == 200 and ok.get_json()["reason"] == "reset by admin: false alarm, é"


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether ``check()`` holds within ``timeout`` (polled): generous, since it costs nothing once
    the check holds, and CI shares 2 cores with other test processes (5 s was the default)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_with_evaluation_off_workers_still_follow_the_shared_state(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """MOVIEREC_MONITOR_INTERVAL_SECONDS=0 switches the evaluation timer off, but it also left every
    worker without its monitor thread, so none re-read the shared record after the start: a
    breaker another worker or instance opened never reached them (they served the tripped model),
    and after an admin reset the workers that did not answer it served the fallback until the
    next reload. Two apps on one store stand for two workers."""
    store, _previous, current = two_champions
    settings = {**_settings(store, "sqlite", request), "monitor_sync_seconds": 0.05}
    deciding = make_app(**settings)
    follower = make_app(**{**settings, "feedback_journal_dir": tmp_path / "follower"})
    client, other = deciding.test_client(), follower.test_client()
    headers, other_headers = login(client), login(other)
    admin = login(client, ADMIN_PASSWORD)
    assert _recommend(other, other_headers)[0]["strategy"] == "segment"  # its thread starts lazily

    _trip(deciding, client, headers)
    assert _recommend(client, headers)[0]["strategy"] == "fallback"
    assert _eventually(lambda: _recommend(other, other_headers)[0]["strategy"] == "fallback")

    assert client.post("/api/admin/breaker/reset", json={}, headers=admin).status_code == 200
    # waited for by its strategy: popularity from the champion's tables (the fallback while the
    # previous champion loads) answers with the champion's version too
    assert _eventually(lambda: _recommend(other, other_headers)[0]["strategy"] == "segment")
    assert _recommend(other, other_headers)[0]["model_version"] == current


def test_a_worker_idle_since_its_start_reads_the_shared_state_before_its_first_answer(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """A worker reads the breaker when its app is created; its monitor thread starts with its first
    request and re-reads the record a sync interval later. A breaker another worker opened while
    this one had served nothing (a worker just started or recycled, a quiet night) was closed for
    its first requests: they got the tripped model."""
    store, _previous, _current = two_champions
    settings = {**_settings(store, "sqlite", request), "monitor_sync_seconds": 1.0}
    idle = make_app(**{**settings, "feedback_journal_dir": tmp_path / "idle"})
    deciding = make_app(**settings)
    client = deciding.test_client()
    _trip(deciding, client, login(client))
    time.sleep(1.1)  # longer than a sync interval since the idle worker's last read

    other = idle.test_client()
    assert _recommend(other, login(other))[0]["strategy"] == "fallback"


def test_a_head_of_a_failing_champions_list_is_answered_like_its_get(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    synthetic_data: Any,
) -> None:
    """A champion call that raises is answered from the fallback: the GET of a user's
    recommendations was, but its HEAD (the same answer's headers, nothing counted) called the
    champion outside that guard and was a 500."""
    store, previous, current = two_champions
    client, headers, services = _error_prone(store, make_app, request)
    _break(services.models.bundle)
    user_id = int(synthetic_data.users["user_id"].iloc[0])
    url = f"/api/users/{user_id}/recommendations"
    got = client.get(url, headers=headers)
    assert got.status_code == 200 and got.get_json()["strategy"] == "fallback", got.get_json()
    assert got.get_json()["model_version"] == current  # popularity: the previous one is not loaded yet
    # the breaker is still closed (1 error of 3 calls needed), but a request needed the fallback:
    # the monitor thread's next round loads the previous champion
    services.monitor.prepare_fallback()
    assert _breaker(client, headers)["state"] == "closed"
    got = client.get(url, headers=headers)
    assert got.status_code == 200 and got.get_json()["model_version"] == previous, got.get_json()
    head = client.head(url, headers=headers)
    assert head.status_code == 200, head.status_code
    assert head.headers["Content-Length"] == got.headers["Content-Length"]


def test_with_evaluation_off_a_stopped_monitor_reads_the_store_no_more(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() wakes the thread to end it; with evaluation off the woken thread re-read the breaker
    store once more first: with the database down that read took most of stop()'s 5-s join, out
    of the worker's shutdown budget."""
    store, _previous, _current = two_champions
    app = make_app(**{**_settings(store, "sqlite", request), "monitor_sync_seconds": 60.0})
    client = app.test_client()
    _recommend(client, login(client))  # the monitor's thread starts with the first request
    monitor = app.extensions["movierec"].monitor
    reads: list[float] = []
    monkeypatch.setattr(monitor.breaker, "sync", lambda version: reads.append(time.monotonic()))
    monitor.stop()
    assert reads == []


def _fallback_loads(monkeypatch: pytest.MonkeyPatch, gate: threading.Event | None = None) -> list[str]:
    """The bundles the breaker's fallback loads from now on (their directory names), each load
    held until ``gate`` is set when one is given."""
    import app.monitoring.fallback as fallback_module

    loads: list[str] = []
    real = fallback_module.load_bundle

    def spy(path: Path, *args: Any, **kwargs: Any) -> Any:
        loads.append(Path(path).name)
        if gate is not None:
            assert gate.wait(10), "the test never let the fallback load finish"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fallback_module, "load_bundle", spy)
    return loads


def test_reporting_the_fallback_loads_no_bundle(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GET /api/model and the dashboard named the previous champion by loading it: with the
    breaker closed, every monitoring poll put a second bundle in each worker's memory. They name
    it from the model store and say whether this worker has it loaded."""
    store, previous, _current = two_champions
    loads = _fallback_loads(monkeypatch)
    app = make_app(**_settings(store, "sqlite", request))
    client = app.test_client()
    headers = login(client)
    _recommend(client, headers)
    state = _breaker(client, headers)
    assert loads == [], "GET /api/model loaded the fallback bundle"
    assert (state["state"], state["fallback"], state["fallback_loaded"]) == (
        "closed", f"previous champion {previous}", False
    )  # fmt: skip
    admin = app.test_client()
    assert admin.post("/ui/login", data={"session_password": ADMIN_PASSWORD}).status_code == 303
    page = admin.get("/ui/dashboard").text
    assert loads == [], "the dashboard loaded the fallback bundle"
    assert f"previous champion {previous} (not loaded in this worker)" in page

    _trip(app, client, headers)  # open: the monitor loads it, once
    assert loads == [previous]
    state = _breaker(client, headers)
    assert (state["state"], state["fallback"], state["fallback_loaded"]) == (
        "open", f"previous champion {previous}", True
    )  # fmt: skip
    assert (_recommend(client, headers)[0]["model_version"], loads) == (previous, [previous])


def test_a_worker_started_while_its_breaker_is_open_loads_the_fallback_at_once(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A worker started (or recycled by uwsgi) while the breaker is open knows it from its first
    request, but its monitor thread waited a whole sync interval before its first round, the one
    that loads the previous champion: every fallback list of the worker was popularity until
    then. The thread loads it as it starts."""
    store, previous, _current = two_champions
    settings = _settings(store, "sqlite", request)
    deciding = make_app(**settings)
    client = deciding.test_client()
    _trip(deciding, client, login(client))
    loads = _fallback_loads(monkeypatch)
    started = make_app(
        **{**settings, "monitor_sync_seconds": 600.0, "feedback_journal_dir": tmp_path / "new"}
    )
    other = started.test_client()
    headers = login(other)  # its first request starts the monitor thread

    def from_previous() -> bool:
        return _recommend(other, headers)[0]["model_version"] == previous

    assert _eventually(from_previous), "loaded only after a sync interval"
    assert loads == [previous]


def test_a_request_never_waits_for_the_fallback_to_load(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first fallback request of each worker loaded the previous champion inside the request,
    under a lock the worker's other fallback requests waited on. The monitor thread loads it when
    the breaker opens; until it is ready, requests get the popularity fallback at once."""
    store, previous, current = two_champions
    gate = threading.Event()
    loads = _fallback_loads(monkeypatch, gate)
    app = make_app(**_settings(store, "sqlite", request))
    client = app.test_client()
    headers = login(client)
    for served in _recommend(client, headers, 8):
        _score(client, headers, served, 0.5)
    monitor = app.extensions["movierec"].monitor
    opening = threading.Thread(target=monitor.tick, kwargs={"force": True})  # the monitor thread's round
    opening.start()
    try:
        assert _eventually(lambda: monitor.breaker.effective_state(current) == "open")
        answers: list[dict[str, Any]] = []
        asking = threading.Thread(target=lambda: answers.extend(_recommend(client, headers, 2)))
        asking.start()
        asking.join(5)
        assert not asking.is_alive(), "a request waited for the fallback bundle to load"
        assert [(a["strategy"], a["model_version"]) for a in answers] == [("fallback", current)] * 2
        assert _eventually(lambda: loads == [previous]), "the monitor did not load the fallback"
        assert _breaker(client, headers)["fallback_loaded"] is False
    finally:
        gate.set()
        opening.join(10)
    assert (_recommend(client, headers)[0]["model_version"], loads) == (previous, [previous])


@pytest.mark.parametrize("mode", [0o700, 0o744], ids=["closed", "listable-not-searchable"])
def test_a_model_store_the_service_may_not_read_reports_the_fallback_not_a_500(
    two_champions: tuple[Path, str, str],
    make_app: Callable[..., Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mode: int,
) -> None:
    """Naming the fallback lists the model store: a store the service's user may not list (a
    volume root of another account's, mode 700) raised PermissionError, and so did looking at
    its entries when it may list but not enter it; GET /api/model and the dashboard were 500s.
    The fallback is reported as what serves (popularity) with the reason, the reason's text for
    admins only, and the page is shown. Run in a forked child as uid 65534: root reads anything."""
    import os
    import tempfile

    from tests.helpers import in_forked_child

    source, _previous, current = two_champions
    root = Path(tempfile.mkdtemp(prefix="movierec-store-"))  # not under tmp_path: root's, mode 700
    try:
        root.chmod(0o755)
        store = root / "store"
        shutil.copytree(source, store, symlinks=True)
        shared = root / "shared"  # the database and the journal: writable by the child's uid
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)
        settings = _settings(store, "sqlite", request)
        settings.update(
            database_url=f"sqlite:///{shared / 'movierec.db'}", feedback_journal_dir=shared / "journal"
        )
        app = make_app(**settings)
        client = app.test_client()
        headers, admin = login(client), login(client, ADMIN_PASSWORD)
        _recommend(client, headers)
        ui = app.test_client()
        assert ui.post("/ui/login", data={"session_password": ADMIN_PASSWORD}).status_code == 303
        # what the child's requests load lazily (the dashboard's templates, modules imported on first
        # use) is loaded now, as root: the checkout may be in a directory uid 65534 cannot enter
        # (a clone under mktemp -d, mode 700), where the child raised TemplateNotFound
        for warm_up in (client.get("/api/model", headers=admin), ui.get("/ui/dashboard")):
            assert warm_up.status_code == 200
        for path in shared.rglob("*"):
            path.chmod(0o777 if path.is_dir() else 0o666)
        store.chmod(mode)

        def reported() -> bool:
            if os.geteuid() == 0:  # root enters every directory: the service's own user does not
                os.setgid(65534)
                os.setuid(65534)
            as_admin = client.get("/api/model", headers=admin)
            as_client = client.get("/api/model", headers=headers)
            page = ui.get("/ui/dashboard")
            if (as_admin.status_code, as_client.status_code, page.status_code) != (200, 200, 200):
                return False
            told, hidden = as_admin.get_json()["breaker"], as_client.get_json()["breaker"]
            return (
                told["fallback"] == f"popularity from {current}"
                and "cannot be read" in told["fallback_error"]
                and str(store) in told["fallback_error"]
                and hidden["fallback"] == told["fallback"]
                and hidden["fallback_error"]
                and str(store) not in hidden["fallback_error"]
                and "Fallback problem" in page.text
            )

        assert in_forked_child(reported) == 0
    finally:
        store.chmod(0o755)
        shutil.rmtree(root)
