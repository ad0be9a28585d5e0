"""The online monitor: ties metrics, quality, drift, the circuit breaker and in-app alerts to the app.

Per request (no I/O beyond what the request does anyway, but for one read of the shared breaker
record by the first request of a worker whose last read is older than a sync interval:
:meth:`OnlineMonitor.ensure_started`):

* :meth:`GuardedRecommendations.recommend` asks the breaker where ``/api/recommend`` goes
  (champion, half-open probe, or fallback), times the champion's answer, records errors
  (a failing champion call is answered from the fallback, not with a 500) and counts
  the list in ``movierec_recommendations_total{strategy}``;
* :meth:`OnlineMonitor.note_feedback` counts a stored score.

Off the request path, one daemon thread per worker process (started lazily, because uwsgi
forks workers from a master that created the app):

* every ``monitor_sync_seconds`` it re-reads the shared breaker record and lets the breaker
  act on this worker's own call statistics and the cool-down (no database query beyond one
  primary-key read): this is where a half-open breaker that opened on model errors or latency
  closes on this worker's healthy probe calls, with no feedback needed; as it starts and after
  each round it loads the served version's previous champion (the breaker's fallback) once the
  breaker is not closed or a request needed the fallback (:meth:`OnlineMonitor.prepare_fallback`);
* every ``monitor_interval_seconds`` one worker in the whole deployment wins the evaluation
  turn (a compare-and-set on the shared record) and runs the window queries: online quality of
  the champion (app/monitoring/quality.py) and drift of the request demographics
  (app/monitoring/drift.py); after ``monitor_every_events`` scores in this worker, this worker
  runs them at once without the turn (at least ``EVENT_SPACING_SECONDS`` apart). Their results
  are stored with the breaker record, so ``/metrics`` and ``/api/model`` show the same numbers
  whichever worker answers.

With ``monitor_interval_seconds`` 0 (evaluation off) the thread still re-reads the shared
record every ``monitor_sync_seconds`` (and loads the fallback as above), nothing else: a reset or
a trip made through another worker or instance reaches this one all the same.

In-app alerts go through one :class:`~app.monitoring.alerts.Alerter` per process with a
:class:`~app.monitoring.alerts.LoggingSink`: the service holds no SMTP credentials; the
host's monitor-docker.py reads the alert lines from the journal and emails them.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from app.errors import ApiError, NotFound
from app.monitoring import metrics
from app.monitoring.alerts import Alert, Alerter, LoggingSink, Notification, Severity
from app.monitoring.breaker import FALLBACK, MODEL, BreakerPolicy, CircuitBreaker
from app.monitoring.drift import MANIFEST_KEY, DriftReport, count_profiles, evaluate_drift
from app.monitoring.fallback import Fallback
from app.monitoring.logs import LogEvery, describe_error
from app.monitoring.quality import Quality, measure, request_profiles, served_coverage
from app.recommender.bundle import BundleError, LoadedBundle, RecommendQuery
from app.storage.breaker import (
    CLOSED,
    BreakerRecord,
    BreakerStore,
    BreakerStoreError,
    DatabaseBreakerStore,
    RedisBreakerStore,
)
from app.storage.db import DatabaseUnavailableError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- in-app alerts


class RecentAlerts:
    """A sink that remembers this worker's last notifications (the dashboard's alerts panel)."""

    name = "recent"

    def __init__(self, maxlen: int = 20) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def send(self, notification: Notification) -> None:
        self._items.appendleft(
            {
                "kind": notification.kind,
                "severity": notification.severity.name,
                "count": notification.count,
                "at": notification.last_at.isoformat(timespec="seconds"),
                "summary": notification.entries[0].summary if notification.entries else notification.kind,
            }
        )

    def status(self) -> dict[str, Any]:
        return {"scope": "this worker process", "recent": list(self._items)}


_ALERTER: Alerter | None = None
_RECENT = RecentAlerts()
_ALERTER_PID: int | None = None
_ALERTER_LOCK = threading.Lock()


def process_alerter() -> Alerter:
    """The one in-app alerter of this process, its flush ticker running in this process.

    ``group_wait`` is 0 so the first alert of a kind is logged at once; later ones of the
    same kind within 5 minutes are sent as one digest (the ticker flushes them).
    """
    global _ALERTER, _ALERTER_PID
    with _ALERTER_LOCK:
        if _ALERTER is None or os.getpid() != _ALERTER_PID:
            # one per process: an alerter inherited through fork has no running ticker here
            _ALERTER = Alerter([LoggingSink(), _RECENT], group_wait=0.0, window=300.0)
            _ALERTER.start(interval=5.0)
            _ALERTER_PID = os.getpid()
            atexit.register(_ALERTER.close)  # send pending digests when the worker stops
        return _ALERTER


def raise_alert(alert: Alert) -> None:
    process_alerter().raise_alert(alert)


# --------------------------------------------------------------------------- the monitor


EVENT_SPACING_SECONDS = 5.0
"""Least time between two score-triggered evaluations of one worker. An evaluation reads every
list served in the window: at hundreds of scores a second, one per 200 scores per worker was a
tenth of the score path's CPU. Later scores wait for the next turn instead of being dropped."""


class OnlineMonitor:
    """Schedules evaluations and holds the components the API and dashboard read."""

    def __init__(
        self,
        models: Any,
        db: Any,
        breaker: CircuitBreaker,
        fallback: Fallback,
        *,
        interval: float = 30.0,
        every_events: int = 200,
        sync_seconds: float = 2.0,
        window_seconds: float = 3600.0,
        drift_threshold: float = 0.25,
        drift_min_requests: int = 200,
        coverage_max_requests: int = 5000,
        background: bool = True,
        evaluates: bool = True,
    ) -> None:
        self.models = models
        self.db = db
        self.breaker = breaker
        self.fallback = fallback
        self.interval = interval
        self.every_events = every_events
        self.sync_seconds = sync_seconds
        self.window_seconds = window_seconds
        self.drift_threshold = drift_threshold
        self.drift_min_requests = drift_min_requests
        self.coverage_max_requests = coverage_max_requests
        self.background = background
        # False (MOVIEREC_MONITOR_INTERVAL_SECONDS=0): the thread only re-reads the shared record
        # every ``sync_seconds``, so resets and trips made elsewhere still reach this worker
        self.evaluates = evaluates
        self._events = 0
        self._events_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread_pid: int | None = None
        self._thread: threading.Thread | None = None
        self.evaluations = 0
        self.last_error: str | None = None
        # an outage is one line (then every 30 s), not a traceback per evaluation of each worker
        self._database_down = LogEvery(30.0)
        self._fallback_failures = LogEvery(30.0)
        # set by install_monitoring: commits this worker's acknowledged scores before they are judged
        self.drain_feedback: Callable[[], object] | None = None
        # version, when (monotonic), window start and counts of the last coverage count
        self._served: tuple[str, float, float, tuple[int, int]] | None = None

    # ------------------------------------------------------------------ thread

    def ensure_started(self) -> None:
        """Start this process's evaluation thread (a pid comparison when it runs already).

        Called before each request: the first one in this process also re-reads the served
        version's shared record when the last read (at the app's creation) is older than a sync
        interval. A worker that had served nothing since it started otherwise routed its first
        requests by that old read until its new thread's first sync, a tripped model as closed.
        """
        if not self.background or self._thread_pid == os.getpid():
            return
        with self._events_lock:
            if self._thread_pid == os.getpid():
                return
            if time.monotonic() - self.breaker.read_at >= self.sync_seconds:
                self._follow()
            self._thread_pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="online-monitor", daemon=True)
            self._thread.start()
            process_alerter()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread_pid == os.getpid():
            self._thread.join(timeout=5)
        self._thread_pid = None

    def _run(self) -> None:
        last_woken_tick = -math.inf
        # a worker started while its breaker is open (its first request read so: ensure_started)
        # loads the fallback now, not after its first wait, a sync interval of popularity lists
        self.prepare_fallback()
        while not self._stop.is_set():
            woken = self._wake.wait(self.sync_seconds)
            if self._stop.is_set():  # stop() woke it: no store read out of the shutdown budget
                return
            if not self.evaluates:
                self._wake.clear()
                self._follow()
                self.prepare_fallback()
                continue
            if woken:
                # scores asked for an evaluation: at once, or EVENT_SPACING_SECONDS after this
                # thread's previous score-triggered one (scores arriving meanwhile join it)
                delay = last_woken_tick + EVENT_SPACING_SECONDS - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                last_woken_tick = time.monotonic()
            self._wake.clear()
            try:
                self.tick(force=woken)
            except DatabaseUnavailableError as exc:  # expected during an outage: no traceback
                self.last_error = describe_error(exc, 300)
                self._database_down.log(
                    log, logging.ERROR, "online monitor evaluation skipped: the database is unreachable",
                    reason=self.last_error,
                )  # fmt: skip
            except Exception as exc:
                self.last_error = describe_error(exc, 300)
                log.exception("online monitor evaluation failed")

    def prepare_fallback(self) -> None:
        """Load the served version's previous champion (the breaker's fallback) when its breaker is
        not closed, or a request needed the fallback: here, in the monitor's thread, as it starts
        and after each round, so no request loads it or waits for it (those before it is ready get
        popularity)."""
        bundle = self.models.bundle
        if bundle is None or not self.breaker.policy.routes:
            return  # a breaker that routes nothing serves no fallback
        if self.breaker.effective_state(bundle.version) == CLOSED and not self.fallback.wanted(bundle):
            return
        try:
            self.fallback.previous(bundle)
        except Exception as exc:  # noqa: BLE001 - tried again next round; popularity serves meanwhile
            self.last_error = describe_error(exc, 300)
            self._fallback_failures.log(
                log, logging.ERROR, "online monitor: loading the breaker's fallback bundle failed",
                reason=self.last_error,
            )  # fmt: skip

    def _follow(self) -> None:
        """Re-read the served version's shared record, nothing more (each round with evaluation
        switched off; a worker's first request, its last read older than a sync interval)."""
        bundle = self.models.bundle
        try:
            self.breaker.sync(bundle.version if bundle is not None else None)
        except Exception as exc:
            self.last_error = describe_error(exc, 300)
            log.exception("online monitor: re-reading the breaker state failed")

    # ------------------------------------------------------------------ events

    def note_feedback(self, score: float) -> None:
        """A score was stored: count it, and wake the evaluation every ``every_events`` scores."""
        metrics.TALLY.count(metrics.FEEDBACK)
        metrics.TALLY.observe(metrics.FEEDBACK_SCORE, score)
        if not self.every_events or not self.evaluates:
            return
        with self._events_lock:
            self._events += 1
            due = self._events >= self.every_events
            if due:
                self._events = 0
        if due:
            self.ensure_started()
            self._wake.set()

    # ------------------------------------------------------------------ evaluation

    def tick(self, *, force: bool = False) -> dict[str, Any]:
        """One round: the full evaluation when this worker wins the turn (or ``force``), else a light
        one; then the fallback's bundle is loaded if the breaker now needs it (:meth:`prepare_fallback`)."""
        try:
            return self._evaluate(force)
        finally:
            self.prepare_fallback()

    def _evaluate(self, force: bool) -> dict[str, Any]:
        bundle = self.models.bundle
        version = bundle.version if bundle is not None else None
        if bundle is None:
            return {}
        if force:
            self.breaker.sync(version)
        if force or self.breaker.claim_evaluation(version, self.interval):
            if self.drain_feedback is not None:
                try:
                    self.drain_feedback()
                except Exception as exc:  # noqa: BLE001 - judged on what the database holds
                    log.warning(
                        "online monitor: scores not yet in the database",
                        extra={"reason": describe_error(exc)},
                    )
            previous = self.breaker.record_of(version).evaluation
            previous_drift = evaluation_part(previous, "drift").get("status")
            drift = self.measure_drift(bundle)
            evaluation = {**previous, "drift": drift.as_dict()}
            record = self.breaker.evaluate(version, self._quality_of(bundle), evaluation=evaluation)
            self.evaluations += 1
            if drift.status == "drift" and previous_drift != "drift":
                self._drift_started(bundle, drift, first=previous_drift is None)
            return record.evaluation
        return self.breaker.evaluate(version, None).evaluation

    def _drift_started(self, bundle: LoadedBundle, drift: DriftReport, *, first: bool) -> None:
        """Alert ``drift``, which this version's last evaluation did not find: drift began, or came
        back after ``ok`` (or too few requests). Not when this is the version's first evaluation
        and its previous champion's last one found drift too: the version changed, not the
        requests (the reference is the MovieLens users whichever version trained on them), and
        every promotion alerted that drift again until 2026-12-07."""
        version = bundle.version
        before = self._drifting_before(bundle) if first else None
        if before is not None:
            log.info(
                "request demographics still drift under a new champion; alerted under the previous one",
                extra={"model_version": version, "previous_version": before, "reason": drift.reason},
            )
            return
        raise_alert(
            Alert(
                "drift",
                Severity.WARNING,
                f"request demographics drifted from model {version}'s training data: {drift.reason}",
                {"psi": drift.as_dict()["psi"], "n_requests": drift.n_requests, "model_version": version},
            )
        )

    def _drifting_before(self, bundle: LoadedBundle) -> str | None:
        """The previous champion's version (the newest bundle in the model store created before
        ``bundle``, the one it replaced) when that version's last drift evaluation, made within the
        window, said ``drift``; else None. Asked at a version's first evaluation only. A store or
        record that cannot be read says None: the alert is raised rather than lost."""
        try:
            before = self.fallback.previous_version(bundle)
            if before is None:
                return None
            record = self.breaker.store.read(before)
        except (OSError, BreakerStoreError):
            return None
        drifted = evaluation_part(record.evaluation, "drift").get("status") == "drift"
        recent = self.breaker.clock() - record.evaluated_at <= self.window_seconds
        return before if drifted and recent else None

    def _quality_of(self, bundle: LoadedBundle) -> Callable[[float], Quality]:
        def quality(since: float) -> Quality:
            return measure(
                self.db,
                since,
                time.time() + 1.0,
                model_version=bundle.version,
                catalogue_size=len(bundle.movie_ids),
                served=self._served_counts(bundle.version, since),
            )

        return quality

    def _served_counts(self, version: str, since: float) -> tuple[int, int]:
        """Coverage counts of ``version`` (lists, distinct movies), recounted at most once per ``interval``.

        Coverage is reported, not judged (the breaker decides on scores, RMSE and errors), and
        it moves slowly; a score-triggered evaluation comes every 5 s per worker under load, and
        a count of 5,000 lists of 10-100 items takes the database ~120-150 ms
        (docs/performance.md). A window that did not just slide (the breaker's state changed,
        so it starts elsewhere) is counted anew, as is every window when ``interval`` is 0.
        """
        now = time.monotonic()
        cached = self._served
        if cached is not None:
            cached_version, counted_at, counted_since, counts = cached
            slid = 0 <= since - counted_since <= now - counted_at + 1.0
            if cached_version == version and now - counted_at < self.interval and slid:
                return counts
        limit = self.coverage_max_requests
        counts = served_coverage(self.db, since, model_version=version, max_requests=limit)
        self._served = (version, now, since, counts)
        return counts

    def measure_drift(self, bundle: LoadedBundle) -> DriftReport:
        since = time.time() - self.window_seconds
        counts = count_profiles(request_profiles(self.db, since))
        return evaluate_drift(
            bundle.manifest.get(MANIFEST_KEY),
            counts,
            threshold=self.drift_threshold,
            min_requests=self.drift_min_requests,
        )

    # ------------------------------------------------------------------ reporting

    def drift_status(self) -> dict[str, Any]:
        bundle = self.models.bundle
        evaluation = self.breaker.record_of(bundle.version if bundle is not None else None).evaluation
        return evaluation_part(evaluation, "drift") or {"status": "not evaluated yet"}


class DriftView:
    """``services.drift``: the last drift evaluation (the dashboard calls ``status()``)."""

    def __init__(self, monitor: OnlineMonitor) -> None:
        self.monitor = monitor

    def status(self) -> dict[str, Any]:
        return self.monitor.drift_status()


class BreakerView:
    """``services.breaker``: the breaker's state for the version being served (``status()``)."""

    def __init__(self, breaker: CircuitBreaker, monitor: OnlineMonitor, fallback: Fallback) -> None:
        self.breaker = breaker
        self.monitor = monitor
        self.fallback = fallback

    def status(self, version: str | None = None, record: BreakerRecord | None = None) -> dict[str, Any]:
        """``version``'s breaker (default: the served version's), as last read or as ``record`` says."""
        bundle = self.monitor.models.bundle
        served = bundle.version if bundle is not None else None
        status = self.breaker.status(version or served, record)
        if version is not None and version != served:
            # another version's breaker (an admin's reset of a version an instance still serves
            # during a rolling deploy): the served version's fallback is not its fallback (it was
            # often that very version), and this worker serves it no fallback at all
            status.update(fallback=None, fallback_loaded=None, fallback_error=None)
            return status
        # named from the model store, never loaded here: a monitoring poll loaded it in every worker
        status.update(self.fallback.describe(bundle))
        if not self.breaker.policy.routes:
            # nothing is routed to a fallback (MOVIEREC_BREAKER_ENABLED=false): naming one, beside
            # an "open" state, said users got it while the model served every request
            status.update(fallback="none", fallback_loaded=False, fallback_error=None)
        return status

    def reset(self, by: str = "admin", version: str | None = None) -> dict[str, Any]:
        """Close ``version``'s breaker (default: the served version's); its status afterwards."""
        served = self._served()
        target = version or served
        record = self.breaker.reset(target, by=by)
        if version is not None and version != served and record.generation == 0:
            # nothing was ever recorded for it (a typo, or a version no instance has served):
            # a 200 "closed" would hide that the intended breaker is still open
            raise NotFound(
                f"model version {version!r} has no circuit breaker record",
                fields={"model_version": "no breaker record for this version"},
            )
        return self.status(target, record)

    def _served(self) -> str | None:
        bundle = self.monitor.models.bundle
        return bundle.version if bundle is not None else None


class AlertsView:
    """``services.alerts``: the last in-app alerts of this worker."""

    def status(self) -> dict[str, Any]:
        return _RECENT.status()


# --------------------------------------------------------------------------- /api/recommend


class GuardedRecommendations:
    """Recommendations through the breaker: champion, probe or fallback, with the outcome recorded.

    Every recommend path asks it (``RecommendationService.answer``): /api/recommend, each item of
    /api/recommend/batch, /api/users/<id>/recommendations and the UI. When the breaker does not
    route (``MOVIEREC_BREAKER_ENABLED=false``) the champion answers every request and a failing
    call raises as it would without a breaker; calls and lists are still counted.
    """

    def __init__(self, breaker: CircuitBreaker, fallback: Fallback) -> None:
        self.breaker = breaker
        self.fallback = fallback

    def answer(self, service: Any, bundle: LoadedBundle, query: RecommendQuery, counted: bool = True) -> Any:
        """``counted=False`` (a HEAD: nobody receives the list): the same answer, but no probe is
        taken and neither the breaker's call record nor the recommendation metrics see it."""
        if not self.breaker.policy.routes:
            route = MODEL
        else:
            route = self.breaker.route(bundle.version) if counted else self.breaker.peek(bundle.version)
        if route != FALLBACK:
            started = time.perf_counter()
            try:
                served = service.lookup(bundle, query)
            except (ApiError, BundleError):
                raise  # the client's error (unknown user) or no model at all: not the model failing
            except Exception:
                # a HEAD answers what its GET would (the fallback's list), recording nothing
                if counted:
                    elapsed = time.perf_counter() - started
                    self.breaker.record_call(bundle.version, False, elapsed)
                    metrics.TALLY.count(metrics.MODEL_CALLS, ("error",))
                if not self.breaker.policy.routes:
                    raise
                if counted:
                    log.exception("the champion failed to recommend; answering from the fallback")
            else:
                if counted:
                    elapsed = time.perf_counter() - started
                    self.breaker.record_call(bundle.version, True, elapsed)
                    metrics.TALLY.count(metrics.MODEL_CALLS, ("ok",))
                    metrics.TALLY.observe(metrics.MODEL_LATENCY, elapsed)
                    _count(served.strategy, len(served.items))
                return served
        from app.services.recommendations import Served  # here: a module-level import would be circular

        items, version = self.fallback.recommend(bundle, query)
        if counted:
            _count(FALLBACK, len(items))
        return Served(service.ids.issue(), items, version, FALLBACK)


def _count(strategy: str, n_items: int) -> None:
    labels = (strategy,)
    metrics.TALLY.count(metrics.RECOMMENDATIONS, labels)
    metrics.TALLY.count(metrics.RECOMMENDED_ITEMS, labels, n_items)


# --------------------------------------------------------------------------- /metrics state series


class StateCollector:
    """Scrape-time gauges: model info, breaker state, online quality and drift from the shared record."""

    def __init__(self, models: Any, breaker: CircuitBreaker | None) -> None:
        self.models = models
        self.breaker = breaker

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        bundle = self.models.bundle
        version = bundle.version if bundle is not None else None
        if bundle is not None:
            info = GaugeMetricFamily(
                "movierec_model_info", "The model bundle this worker serves (value 1)",
                labels=["version", "served_model", "created_at"],
            )  # fmt: skip
            info.add_metric(
                [
                    bundle.version,
                    str(bundle.manifest.get("served_model") or ""),
                    str(bundle.manifest.get("created_at") or ""),
                ],
                1.0,
            )
            yield info
            loaded = metrics.gauge(
                "movierec_model_loaded_timestamp_seconds",
                "When this worker loaded its bundle",
                bundle.loaded_at,
            )
            if loaded is not None:
                yield loaded
        if self.breaker is None:
            return
        state = self.breaker.effective_state(version)
        family = GaugeMetricFamily(
            "movierec_breaker_state",
            "Circuit breaker state of the served model version (1 for the current one)",
            labels=["state", "model_version"],
        )  # the version: while workers or instances serve different ones, each has its own breaker
        for name in ("closed", "open", "half_open"):
            family.add_metric([name, version or ""], 1.0 if name == state else 0.0)
        yield family
        # the state above is the last one read: with the store unreachable it may be stale
        store = GaugeMetricFamily(
            "movierec_breaker_store_up",
            "1 when this worker's last read of the shared breaker state succeeded, 0 when it failed "
            "(movierec_breaker_state is then the last state read)",
            labels=["model_version"],
        )
        store.add_metric([version or ""], 0.0 if self.breaker.store_error else 1.0)
        yield store
        evaluation = self.breaker.record_of(version).evaluation
        quality = evaluation_part(evaluation, "quality")
        if quality.get("model_version") == version:
            for key, name, doc in (
                (
                    "events",
                    "movierec_online_feedback_events",
                    "Feedback rows on the champion's lists in the window",
                ),
                (
                    "mean_score",
                    "movierec_online_mean_score",
                    "Mean feedback score of the champion in the window",
                ),
                (
                    "like_share",
                    "movierec_online_like_share",
                    "Share of scores >= 4 for the champion in the window",
                ),
                ("rmse", "movierec_online_rmse", "Online RMSE of predicted vs given scores in the window"),
                (
                    "coverage",
                    "movierec_online_catalogue_coverage",
                    "Share of the catalogue served in the window",
                ),
            ):
                sample = metrics.gauge(name, doc, quality.get(key))
                if sample is not None:
                    yield sample
        drift = evaluation_part(evaluation, "drift")
        if drift:
            status = GaugeMetricFamily(
                "movierec_drift_status", "Drift evaluation outcome (1 for the current one)", labels=["status"]
            )
            for name in ("ok", "drift", "insufficient", "unknown"):
                status.add_metric([name], 1.0 if drift.get("status") == name else 0.0)
            yield status
            stored = drift.get("psi")
            psi = {
                str(feature): float(value)
                for feature, value in (stored.items() if isinstance(stored, Mapping) else ())
                if metrics.is_number(value)
            }
            if psi:
                family = GaugeMetricFamily(
                    "movierec_drift_psi", "Population stability index of request demographics vs training",
                    labels=["feature"],
                )  # fmt: skip
                for feature, value in psi.items():
                    family.add_metric([feature], value)
                family.add_metric(["max"], max(psi.values()))
                yield family


def evaluation_part(evaluation: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The ``drift`` or ``quality`` part of a breaker record's evaluation, empty when it is no mapping.

    The evaluation is free-form JSON in the shared record (what a monitor stored, by hand anything):
    a text there made /metrics a 500 (every series lost to the scrape), the dashboard the 500 page,
    and each evaluation of the monitor fail before it could replace it.
    """
    part = evaluation.get(key)
    return dict(part) if isinstance(part, Mapping) else {}


# --------------------------------------------------------------------------- wiring


def build_store(settings: Any, db: Any) -> BreakerStore:
    if settings.redis_url:
        from app.services.revocation import redis_client

        return RedisBreakerStore(redis_client(settings.redis_url), settings.breaker_name)
    return DatabaseBreakerStore(db, settings.breaker_name)


def policy_from(settings: Any) -> BreakerPolicy:
    return BreakerPolicy(
        min_events=settings.breaker_min_events,
        min_lists=settings.breaker_min_lists,
        min_mean_score=settings.breaker_min_mean_score,
        min_like_share=settings.breaker_min_like_share,
        max_rmse=settings.breaker_max_rmse,
        min_requests=settings.breaker_min_requests,
        max_error_rate=settings.breaker_max_error_rate,
        max_latency_ms=settings.breaker_max_latency_ms,
        cooldown_seconds=settings.breaker_cooldown_seconds,
        probe_share=settings.breaker_probe_share,
        probe_min_events=settings.breaker_probe_min_events,
        routes=settings.breaker_enabled,
    )


def install_monitoring(
    app: Any, services: Any, settings: Any, model_store: Path | None = None
) -> OnlineMonitor:
    """Create the breaker, fallback and monitor; expose them on ``services``; start the thread lazily."""
    breaker = CircuitBreaker(
        build_store(settings, services.db),
        policy_from(settings),
        alert=raise_alert,
        window_seconds=settings.quality_window_seconds,
    )
    fallback = Fallback(model_store, settings.breaker_fallback)
    monitor = OnlineMonitor(
        services.models,
        services.db,
        breaker,
        fallback,
        interval=settings.monitor_interval_seconds,
        every_events=settings.monitor_every_events,
        sync_seconds=settings.monitor_sync_seconds,
        window_seconds=settings.quality_window_seconds,
        drift_threshold=settings.drift_psi_threshold,
        drift_min_requests=settings.drift_min_requests,
        # the thread runs either way: with the evaluation timer off it still re-reads the
        # shared state, or a reset (or a trip) made through another worker never reached this one
        evaluates=settings.monitor_interval_seconds > 0,
    )
    bundle = services.models.bundle
    breaker.sync(bundle.version if bundle is not None else None)
    services.models.before_swap = lambda loaded: breaker.sync(loaded.version)
    services.monitor = monitor
    # disabled, the breaker does not route, but lists and champion calls are counted all the same
    services.recommendations.guard = GuardedRecommendations(breaker, fallback)
    services.recommendations.on_feedback = monitor.note_feedback
    monitor.drain_feedback = services.recommendations.feedback.drain
    services.breaker = BreakerView(breaker, monitor, fallback)
    services.drift = DriftView(monitor)
    services.alerts = AlertsView()
    app.before_request(monitor.ensure_started)
    return monitor
