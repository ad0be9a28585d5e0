"""/metrics: parses with the Prometheus text parser, has the series operations rely on, can be restricted."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.recommender.bundle import RecommendQuery
from tests.helpers import PROFILE, login, stored_feedback

pytestmark = pytest.mark.api


def scrape(client: Any, **kwargs: Any) -> dict[str, list[Any]]:
    """Metric samples by sample name."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    matching = [
        s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


def test_metrics_have_the_series_of_the_issue(make_app: Callable[..., Any]) -> None:
    app = make_app(monitor_interval_seconds=0, drift_min_requests=3)
    client = app.test_client()
    headers = login(client)
    before = scrape(client)
    base = {
        "recs": sum(
            s.value
            for s in before.get("movierec_recommendations_total", [])
            if s.labels["strategy"] == "segment"
        ),
        "feedback": before.get("movierec_feedback_total", [type("S", (), {"value": 0.0})()])[0].value,
    }
    bodies = [client.post("/api/recommend", json=PROFILE, headers=headers).get_json() for _ in range(3)]
    for body, score in zip(bodies, (1.0, 4.0, 4.5), strict=True):
        response = client.post(
            "/api/recommend/score",
            json={"id": body["id"], "movie": body["recommendations"][0], "score": score},
            headers=headers,
        )
        assert response.status_code == 200
    assert client.post("/api/recommend", json={"age": 0}, headers=headers).status_code == 400
    assert client.get("/no/such/page").status_code == 404
    app.extensions["movierec"].monitor.tick(force=True)
    version = app.extensions["movierec"].models.bundle.version

    samples = scrape(client)
    # request counts and latency per endpoint (URL rule) and status
    assert (
        value(samples, "movierec_http_requests_total", endpoint="/api/recommend", method="POST", status="400")
        >= 1
    )
    assert (
        value(samples, "movierec_http_requests_total", endpoint="<unmatched>", method="GET", status="404")
        >= 1
    )
    assert value(samples, "movierec_http_request_duration_seconds_count",
                 endpoint="/api/recommend/score", method="POST", status="200") >= 3  # fmt: skip
    buckets = [s for s in samples["movierec_http_request_duration_seconds_bucket"]
               if s.labels["endpoint"] == "/api/recommend" and s.labels["status"] == "200"]  # fmt: skip
    assert buckets and buckets[-1].labels["le"] == "+Inf"
    # recommendations per strategy, feedback count and score distribution
    assert value(samples, "movierec_recommendations_total", strategy="segment") - base["recs"] == 3
    assert value(samples, "movierec_feedback_total") - base["feedback"] == 3
    assert value(samples, "movierec_feedback_score_bucket", le="0.5") <= value(
        samples, "movierec_feedback_score_bucket", le="1.0"
    )
    assert value(samples, "movierec_feedback_score_count") >= 3
    # model version info, breaker state, online quality and drift
    assert value(samples, "movierec_model_info", version=version) == 1.0
    served = app.extensions["movierec"].models.bundle.version
    assert value(samples, "movierec_breaker_state", state="closed", model_version=served) == 1.0
    assert value(samples, "movierec_breaker_state", state="open") == 0.0
    assert value(samples, "movierec_online_feedback_events") == 3
    assert value(samples, "movierec_online_mean_score") == pytest.approx((1.0 + 4.0 + 4.5) / 3, abs=1e-6)
    assert value(samples, "movierec_online_like_share") == pytest.approx(2 / 3, abs=1e-6)
    assert value(samples, "movierec_online_rmse") > 0  # the bundle's rating model filled predicted_score
    assert 0 < value(samples, "movierec_online_catalogue_coverage") <= 1
    assert value(samples, "movierec_drift_status", status="drift") == 1.0  # 3 identical profiles
    assert value(samples, "movierec_drift_psi", feature="gender") > 0.25
    assert value(samples, "movierec_drift_psi", feature="max") >= value(
        samples, "movierec_drift_psi", feature="gender"
    )


def test_predicted_score_is_stored_with_the_feedback(make_app: Callable[..., Any]) -> None:
    app = make_app(monitor_interval_seconds=0)
    client = app.test_client()
    headers = login(client)
    body = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
    for title in body["recommendations"][:3]:  # the first score predicts the list, the others reuse it
        scored = {"id": body["id"], "movie": title, "score": 3}
        assert client.post("/api/recommend/score", json=scored, headers=headers).status_code == 200
    services = app.extensions["movierec"]
    rows = stored_feedback(app)
    assert len(rows) == 3
    for row in rows:
        record = {**PROFILE, "movie_id": row.movie_id}
        expected = float(services.models.bundle.rating_model.predict_records([record])[0])
        assert row.predicted_score == pytest.approx(expected)


def test_a_re_score_is_counted_as_a_score_but_not_as_new_evidence(make_app: Callable[..., Any]) -> None:
    """docs/serving.md: one row per (id, movie); the breaker's events count rows, the counter scores."""
    app = make_app(monitor_interval_seconds=0)
    client = app.test_client()
    headers = login(client)
    before = scrape(client).get("movierec_feedback_total", [type("S", (), {"value": 0.0})()])[0].value
    body = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
    for score in (1.0, 2.0, 5.0):  # the same movie of the same list, three times
        scored = {"id": body["id"], "movie": body["recommendations"][0], "score": score}
        assert client.post("/api/recommend/score", json=scored, headers=headers).status_code == 200
    app.extensions["movierec"].monitor.tick(force=True)
    samples = scrape(client)
    assert value(samples, "movierec_feedback_total") - before == 3
    assert [row.score for row in stored_feedback(app)] == [5.0]  # the newest kept
    assert value(samples, "movierec_online_feedback_events") == 1
    assert value(samples, "movierec_online_mean_score") == pytest.approx(5.0)


def test_metrics_can_be_restricted_by_network_and_token(make_app: Callable[..., Any]) -> None:
    client = make_app(metrics_allow_cidrs="10.0.0.0/8").test_client()
    assert client.get("/metrics").status_code == 403  # the test client comes from 127.0.0.1
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    # an IPv4 client of a dual-stack port (MOVIEREC_HOST=::) arrives as an IPv4-mapped address
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::ffff:10.1.2.3"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"}).status_code == 403

    client = make_app(metrics_allow_cidrs="127.0.0.0/8, ::1", metrics_token="scrape-secret-123").test_client()
    response = client.get("/metrics")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"}).status_code == 200


def test_coverage_is_recounted_at_most_once_per_monitor_interval(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.monitoring import online

    # no HTTP request here: the first one would start the monitor's own thread (interval > 0)
    app = make_app(monitor_interval_seconds=60)
    services = app.extensions["movierec"]
    monitor = services.monitor
    counted: list[str | None] = []
    real = online.served_coverage

    def counting(*args: Any, **kwargs: Any) -> tuple[int, int]:
        counted.append(kwargs.get("model_version"))
        return real(*args, **kwargs)

    monkeypatch.setattr(online, "served_coverage", counting)

    def serve(n: int) -> None:
        for _ in range(n):
            services.recommendations.recommend(RecommendQuery(5, **PROFILE))
        services.recommendations.request_log.flush()

    serve(2)
    first = monitor.tick(force=True)["quality"]
    serve(1)
    second = monitor.tick(force=True)["quality"]
    version = services.models.bundle.version
    assert counted == [version]  # the second evaluation reused the count
    assert first["requests"] == second["requests"] == 2
    assert second["distinct_served"] == first["distinct_served"] > 0

    monitor.interval = 0  # the interval is over
    third = monitor.tick(force=True)["quality"]
    assert counted == [version, version] and third["requests"] == 3

    # within the interval, a window that starts elsewhere (the breaker's state changed) is recounted
    monitor.interval = 60
    since = time.time() - monitor.window_seconds  # where the last evaluation's window started, about
    assert monitor._served_counts(version, since) == (3, third["distinct_served"])  # slid: reused
    assert len(counted) == 2
    assert monitor._served_counts(version, time.time() + 1) == (0, 0)  # a fresh window: nothing in it yet
    assert len(counted) == 3


def test_metrics_count_recommendations_and_model_calls_with_the_breaker_disabled(
    make_app: Callable[..., Any],
) -> None:
    """MOVIEREC_BREAKER_ENABLED=false only stops the routing (docs/operations.md, settings table:
    "metrics and evaluation run either way"): lists and champion calls are still counted."""
    app = make_app(monitor_interval_seconds=0, breaker_enabled=False)
    client = app.test_client()
    headers = login(client)

    def counts() -> tuple[float, float]:
        samples = scrape(client)
        recs = sum(s.value for s in samples.get("movierec_recommendations_total", [])
                   if s.labels["strategy"] == "segment")  # fmt: skip
        calls = sum(s.value for s in samples.get("movierec_model_calls_total", [])
                    if s.labels["outcome"] == "ok")  # fmt: skip
        return recs, calls

    recs_before, calls_before = counts()
    for _ in range(2):
        body = client.post("/api/recommend", json=PROFILE, headers=headers).get_json()
        assert body["strategy"] == "segment"
    recs_after, calls_after = counts()
    assert recs_after - recs_before == 2
    assert calls_after - calls_before == 2


def test_latency_histograms_resolve_what_a_request_and_a_model_call_take(
    make_app: Callable[..., Any],
) -> None:
    """A histogram whose first bucket holds most observations says nothing about them: the
    champion's lookup takes a few to tens of microseconds and a request about a millisecond, and
    with a first bucket of 1 ms histogram_quantile put every percentile of the model inside it (with
    10 µs, 28 of 40 model calls on a machine fast for Python)."""
    app = make_app(monitor_interval_seconds=0)
    client = app.test_client()
    headers = login(client)
    series = {
        "movierec_model_latency_seconds": {},
        "movierec_http_request_duration_seconds": {
            "endpoint": "/api/recommend", "method": "POST", "status": "200"
        },
    }  # fmt: skip

    def histograms() -> dict[str, tuple[list[tuple[float, float]], float]]:
        samples = scrape(client)  # the process's histograms: earlier tests' observations included
        return {
            name: (
                sorted(
                    (float(s.labels["le"]), s.value)
                    for s in samples.get(f"{name}_bucket", [])
                    if all(s.labels.get(k) == v for k, v in labels.items())
                ),
                sum(  # none before this test's first request of the kind
                    s.value
                    for s in samples.get(f"{name}_count", [])
                    if all(s.labels.get(k) == v for k, v in labels.items())
                ),
            )
            for name, labels in series.items()
        }

    before = histograms()
    for _ in range(40):
        assert client.post("/api/recommend", json=PROFILE, headers=headers).status_code == 200
    after = histograms()
    for name in series:
        earlier = dict(before[name][0])
        buckets = [(bound, n - earlier.get(bound, 0.0)) for bound, n in after[name][0]]  # these 40 only
        count = after[name][1] - before[name][1]
        first_bound, in_first = buckets[0]
        assert count >= 40
        assert in_first < count / 2, (name, first_bound, in_first, count)
        # and the bounds still reach the breaker's latency bound (250 ms) and beyond
        assert any(bound == 0.25 for bound, _ in buckets) and buckets[-2][0] >= 1.0


def test_breaker_state_series_say_when_the_shared_state_could_not_be_read(
    make_app: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the breaker's store unreachable a worker keeps routing by the last state it read (a
    freshly started one: closed), and movierec_breaker_state showed that state as if current: an
    instance whose breaker another had opened reported "closed" with nothing to tell it apart."""
    from app.storage.breaker import BreakerStoreError

    app = make_app(monitor_interval_seconds=0)
    client = app.test_client()
    breaker = app.extensions["movierec"].monitor.breaker
    version = app.extensions["movierec"].models.bundle.version
    assert value(scrape(client), "movierec_breaker_store_up", model_version=version) == 1.0

    def unreachable(_version: str | None) -> Any:
        raise BreakerStoreError("connection refused")

    real = breaker.store.read
    monkeypatch.setattr(breaker.store, "read", unreachable)
    breaker.sync(version)
    samples = scrape(client)
    assert value(samples, "movierec_breaker_store_up", model_version=version) == 0.0
    # the state series still says what the worker last read, and routes by
    assert value(samples, "movierec_breaker_state", state="closed", model_version=version) == 1.0

    monkeypatch.setattr(breaker.store, "read", real)
    breaker.sync(version)
    assert value(scrape(client), "movierec_breaker_store_up", model_version=version) == 1.0


# The bounds both latency histograms had until 2026-12-06. Dashboards and alert rules select
# buckets by ``le`` (the share answered within 5 s, say): finer buckets were added below them,
# and none of them may go, or such a query silently finds no series after an upgrade.
PREVIOUS_LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def test_the_latency_histograms_keep_every_bound_they_had(make_app: Callable[..., Any]) -> None:
    """The model-call histogram got buckets of its own from 10 µs, and lost its 5 s and 10 s
    bounds with it (the request histogram kept all of its own)."""
    app = make_app(monitor_interval_seconds=0)
    client = app.test_client()
    assert client.post("/api/recommend", json=PROFILE, headers=login(client)).status_code == 200
    samples = scrape(client)
    for name in ("movierec_model_latency_seconds", "movierec_http_request_duration_seconds"):
        bounds = {float(sample.labels["le"]) for sample in samples[f"{name}_bucket"]}
        assert set(PREVIOUS_LATENCY_BOUNDS) <= bounds, (name, sorted(set(PREVIOUS_LATENCY_BOUNDS) - bounds))


def test_no_coverage_series_when_no_list_was_served_in_the_window(make_app: Callable[..., Any]) -> None:
    """An evaluation of a window in which nothing was served (an idle hour, a breaker state just
    begun) reported catalogue coverage 0: an alert on low coverage fired whenever traffic paused.
    There is no coverage to report then, as there is no mean score without scores."""
    app = make_app(monitor_interval_seconds=0)
    client = app.test_client()
    app.extensions["movierec"].monitor.tick(force=True)
    samples = scrape(client)
    assert value(samples, "movierec_online_feedback_events") == 0  # the evaluation ran
    assert "movierec_online_catalogue_coverage" not in samples
    assert client.post("/api/recommend", json=PROFILE, headers=login(client)).status_code == 200
    app.extensions["movierec"].recommendations.request_log.flush()
    app.extensions["movierec"].monitor.tick(force=True)
    assert 0 < value(scrape(client), "movierec_online_catalogue_coverage") <= 1


def test_a_method_not_allowed_is_counted_under_its_endpoint(make_app: Callable[..., Any]) -> None:
    """A 405 (a GET of /api/recommend, a PATCH of a user's features) was counted under
    ``<unmatched>`` with the scanners' 404s: which endpoint clients called wrongly could not be
    told. Its URL rule exists; only a path no rule matches is ``<unmatched>``."""
    app = make_app(monitor_interval_seconds=0)
    client = app.test_client()
    rule = "/api/users/<user_id>/features"
    series = {  # this process's counters add up over the tests: compared before and after
        "get": {"endpoint": "/api/recommend", "method": "GET", "status": "405"},
        "patch": {"endpoint": rule, "method": "PATCH", "status": "405"},
        "unmatched_405": {"endpoint": "<unmatched>", "method": "GET", "status": "405"},
        "unmatched_404": {"endpoint": "<unmatched>", "method": "GET", "status": "404"},
    }

    def counts() -> dict[str, float]:
        samples = scrape(client).get("movierec_http_requests_total", [])
        return {name: sum(s.value for s in samples if s.labels == labels) for name, labels in series.items()}

    before = counts()
    assert client.get("/api/recommend").status_code == 405
    assert client.open("/api/users/7/features", method="PATCH").status_code == 405
    assert client.get("/no/such/page").status_code == 404
    after = counts()
    moved = {name: after[name] - before[name] for name in series}
    assert moved == {"get": 1, "patch": 1, "unmatched_405": 0, "unmatched_404": 1}
