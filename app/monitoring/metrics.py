"""Prometheus metrics: defined once here, at import, and exposed at ``/metrics``.

Two kinds of series:

* **Event series** (counters and histograms) are updated where the event happens: every
  HTTP request (app/monitoring/http.py), every recommendation list served and every score
  stored (app/monitoring/online.py), every breaker transition. Under uwsgi each worker is a
  process, so prometheus-client's *multiprocess mode* is used when
  ``PROMETHEUS_MULTIPROC_DIR`` is set (scripts/start-uwsgi.sh sets and empties it before
  any worker exists): each process writes its own mmap file and a scrape, answered by any
  worker, aggregates all of them with a fresh ``CollectorRegistry`` + ``MultiProcessCollector``.
  The variable must be set before ``prometheus_client`` is first imported, and the metrics
  must be created once per process (module level, not in ``create_app``: a second app in
  the tests would raise "Duplicated timeseries").
* **State series** (model version info, breaker state, drift, online quality) are read at
  scrape time from the answering worker's loaded bundle and the shared breaker record,
  which every worker sees alike. Multiprocess gauges would need a per-worker file cleaned
  up when uwsgi recycles a worker; reading shared state needs nothing of the kind.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "movierec_http_requests",
    "HTTP requests answered, by endpoint (URL rule), method and status code",
    ["endpoint", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "movierec_http_request_duration_seconds",
    "Time from the first request hook to the response, by endpoint, method and status code",
    ["endpoint", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
RECOMMENDATIONS = Counter(
    "movierec_recommendations",
    "Recommendation lists served by /api/recommend, by strategy (segment, personal, fallback)",
    ["strategy"],
)
RECOMMENDED_ITEMS = Counter(
    "movierec_recommended_items",
    "Movies recommended by /api/recommend, by strategy",
    ["strategy"],
)
FEEDBACK = Counter("movierec_feedback", "Scores stored through /api/recommend/score")
FEEDBACK_SCORE = Histogram(
    "movierec_feedback_score", "Distribution of the scores users gave (0.5 to 5)", buckets=SCORE_BUCKETS
)
MODEL_CALLS = Counter(
    "movierec_model_calls",
    "Calls of the champion model on /api/recommend, by outcome (ok, error)",
    ["outcome"],
)
MODEL_LATENCY = Histogram(
    "movierec_model_latency_seconds",
    "Time the champion model took to answer one /api/recommend (successful calls)",
    buckets=LATENCY_BUCKETS,
)
BREAKER_TRANSITIONS = Counter(
    "movierec_breaker_transitions",
    "Circuit breaker state changes decided by this service",
    ["from_state", "to_state"],
)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when multiprocess mode is on (the variable set and the dir present)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return path if path and os.path.isdir(path) else None


def endpoint_label(rule: str | None) -> str:
    """A bounded label: the URL rule (``/api/users/<int:user_id>/features``), never the raw path."""
    return rule if rule else "<unmatched>"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def observe_request(rule: str | None, method: str, status: int, seconds: float | None) -> None:
    endpoint, verb, code = endpoint_label(rule), method_label(method), str(status)
    HTTP_REQUESTS.labels(endpoint=endpoint, method=verb, status=code).inc()
    if seconds is not None:
        HTTP_LATENCY.labels(endpoint=endpoint, method=verb, status=code).observe(seconds)


class _ProcessRegistry:
    """Forwards this process's default registry (plain, single-process mode) into a scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def render(state_collectors: Iterable[Any] = ()) -> tuple[bytes, str]:
    """The exposition text for one scrape, and its content type.

    Multiprocess mode: a fresh registry aggregating every process's files (a scrape sees
    all workers, including ones recycled since the start). Otherwise: this process's
    registry. ``state_collectors`` add the state series.
    """
    registry = CollectorRegistry()
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(registry, path=path)
    else:
        registry.register(_ProcessRegistry())
    for collector in state_collectors:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def gauge(
    name: str, documentation: str, value: float | None, labels: dict[str, str] | None = None
) -> GaugeMetricFamily | None:
    """One gauge family with one sample, or None when the value is unknown (no sample beats a fake 0)."""
    if value is None:
        return None
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), float(value))
    return family
