"""Circuit breaker for the serving champion.

Why: offline metrics cannot promise that a model is received well by real users. When the
champion's online quality collapses, or it errors or slows down, the service should stop
showing its output and fall back to something known to be acceptable (the previous
champion, or global popularity) until the champion proves itself again.

States (shared by every worker through a :class:`~app.storage.breaker.BreakerStore`):

* **closed** — the champion serves every request. The breaker **opens** when, over at least
  ``min_events`` feedback rows on the champion's own lists, scoring at least ``min_lists`` of
  those lists (one user scoring a long list is one list, not that many people), the mean
  score, the like share or the online RMSE is worse than its threshold; or when, over at least
  ``min_requests`` model calls in this worker, the error rate or the p95 latency exceeds its bound.
* **open** — ``/api/recommend`` serves the fallback with ``strategy: "fallback"``. After
  ``cooldown_seconds`` it goes **half-open**.
* **half_open** — a ``probe_share`` of requests goes to the champion, the rest to the
  fallback. Feedback and calls since the state began are judged: unhealthy → **open** again
  (a new cool-down); healthy evidence of each kind the breaker opened on → **closed**: over
  ``probe_min_events`` feedback rows when it opened on feedback, over ``min_requests`` probe
  calls in one worker when it opened on errors or latency (so a breaker tripped by a failing
  champion closes when nobody scores), both when it opened on both (the kinds add up over
  failed probes until it closes). Not enough evidence yet → stay half-open.

Every evaluation only counts events since the current state was entered, so feedback that
opened the breaker cannot re-open it right after it closed. Each model version has its own
record: a newly loaded version starts closed and is judged on its own feedback and calls,
while a worker still serving the version that tripped keeps routing it to the fallback
(versions are mixed for a while during a reload or a rolling deploy); a version served
again later finds the state it left (within app.storage.breaker.RETENTION_SECONDS). An admin
can close it at any time (``POST /api/admin/breaker/reset``). Transitions are logged (opened at ERROR, the
others at WARNING), raised as alerts through the alerting path, and counted in metrics.

Nothing here touches the database per request: :meth:`CircuitBreaker.route` reads a cached
record; the online monitor (app/monitoring/online.py) refreshes it and evaluates on a timer.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.monitoring import metrics
from app.monitoring.alerts import Alert, Severity
from app.monitoring.logs import LogEvery, describe_error
from app.monitoring.quality import Quality
from app.storage.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerRecord,
    BreakerStore,
    BreakerStoreError,
    UnreadableRecordError,
)

log = logging.getLogger("movierec.breaker")

HEALTHY, UNHEALTHY, INSUFFICIENT = "healthy", "unhealthy", "insufficient"
MODEL, PROBE, FALLBACK = "model", "probe", "fallback"
CALLS, FEEDBACK = "calls", "feedback"  # the two kinds of evidence the breaker judges
OPENED_ON = "opened_on"
"""Key of the record's evaluation naming the kinds of evidence the breaker opened on (and, after
failed probes, re-opened on): a half-open probe closes it only on healthy evidence of each."""


def opened_on(record: BreakerRecord) -> tuple[str, ...]:
    """The kinds of evidence ``record``'s breaker opened on; feedback for a record written before
    they were kept (such a breaker closed only on probe feedback, and still does)."""
    kinds = record.evaluation.get(OPENED_ON)
    if isinstance(kinds, list) and kinds and all(k in (CALLS, FEEDBACK) for k in kinds):
        return tuple(sorted(set(kinds)))
    return (FEEDBACK,)


@dataclass(frozen=True)
class BreakerPolicy:
    """Thresholds and timings (from Settings ``breaker_*``; docs/operations.md explains each)."""

    min_events: int = 50
    # distinct scored lists the rows must come from (at most the rows needed: min_events, or
    # probe_min_events while half-open)
    min_lists: int = 10
    min_mean_score: float | None = 2.5
    min_like_share: float | None = 0.2
    max_rmse: float | None = 1.5
    min_requests: int = 50
    max_error_rate: float = 0.05
    max_latency_ms: float = 250.0
    cooldown_seconds: float = 300.0
    probe_share: float = 0.1
    probe_min_events: int = 20
    # MOVIEREC_BREAKER_ENABLED: False judges and announces as usual, but routes nothing (the
    # champion answers every request)
    routes: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.probe_share <= 1.0:
            raise ValueError("probe_share must be in (0, 1]")
        if min(self.min_events, self.probe_min_events, self.min_lists, self.min_requests) < 1:
            raise ValueError("minimum event counts must be at least 1")

    def thresholds(self) -> dict[str, Any]:
        return {
            "min_events": self.min_events,
            "min_lists": self.min_lists,
            "min_mean_score": self.min_mean_score,
            "min_like_share": self.min_like_share,
            "max_rmse": self.max_rmse,
            "min_requests": self.min_requests,
            "max_error_rate": self.max_error_rate,
            "max_latency_ms": self.max_latency_ms,
            "cooldown_seconds": self.cooldown_seconds,
            "probe_share": self.probe_share,
            "probe_min_events": self.probe_min_events,
        }


@dataclass(frozen=True)
class Verdict:
    verdict: str  # healthy | unhealthy | insufficient
    reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons)}


def judge_quality(quality: Quality | None, policy: BreakerPolicy, min_events: int) -> Verdict:
    """Online quality against the thresholds, once there are ``min_events`` feedback rows scoring
    enough distinct lists (``policy.min_lists``, or ``min_events`` when fewer): the rows of one
    list are one user's taste, and one user who scored a long list opened the breaker for all."""
    if quality is None or quality.events < min_events:
        n = 0 if quality is None else quality.events
        return Verdict(INSUFFICIENT, (f"{n} feedback events; {min_events} needed",))
    min_lists = min(policy.min_lists, min_events)
    if quality.lists < min_lists:
        return Verdict(
            INSUFFICIENT,
            (f"{quality.events} feedback events from {quality.lists} scored lists; {min_lists} needed",),
        )
    reasons = []
    mean, liked, error = quality.mean_score, quality.like_share, quality.rmse
    if policy.min_mean_score is not None and mean is not None and mean < policy.min_mean_score:
        reasons.append(f"mean score {mean:.2f} < {policy.min_mean_score}")
    if policy.min_like_share is not None and liked is not None and liked < policy.min_like_share:
        reasons.append(f"like share {liked:.2f} < {policy.min_like_share}")
    # RMSE only over enough rows that carry a prediction (bundles without a rating model have none)
    enough_predictions = quality.rmse_events >= min_events
    if policy.max_rmse is not None and error is not None and enough_predictions and error > policy.max_rmse:
        reasons.append(f"online RMSE {error:.2f} > {policy.max_rmse}")
    return Verdict(UNHEALTHY, tuple(reasons)) if reasons else Verdict(HEALTHY)


@dataclass(frozen=True)
class CallSummary:
    calls: int
    errors: int
    p95_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "errors": self.errors, "p95_ms": self.p95_ms}


def judge_calls(summary: CallSummary, policy: BreakerPolicy) -> Verdict:
    """Model errors and latency in this worker against their bounds, once there are enough calls."""
    if summary.calls < policy.min_requests:
        return Verdict(INSUFFICIENT, (f"{summary.calls} model calls; {policy.min_requests} needed",))
    reasons = []
    rate = summary.errors / summary.calls
    if rate > policy.max_error_rate:
        reasons.append(
            f"model error rate {rate:.1%} > {policy.max_error_rate:.1%} ({summary.errors}/{summary.calls})"
        )
    if summary.p95_ms is not None and summary.p95_ms > policy.max_latency_ms:
        reasons.append(f"model p95 latency {summary.p95_ms:.0f} ms > {policy.max_latency_ms:.0f} ms")
    return Verdict(UNHEALTHY, tuple(reasons)) if reasons else Verdict(HEALTHY)


CALLS_KEPT = 2000
"""Model calls a worker keeps for the breaker's error and latency bounds (more when the policy's
``min_requests`` asks for more: a bound above what is kept would never be reached)."""


class CallStats:
    """Recent model calls of this worker: (time, version, ok, latency); bounded, thread-safe."""

    def __init__(self, maxlen: int = CALLS_KEPT) -> None:
        self._calls: deque[tuple[float, str | None, bool, float]] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def record(self, at: float, version: str | None, ok: bool, latency_s: float) -> None:
        with self._lock:
            self._calls.append((at, version, ok, latency_s))

    def summary(self, since: float, version: str | None) -> CallSummary:
        """The calls of ``version`` since ``since`` (another version's calls are not its evidence)."""
        with self._lock:
            recent = [(ok, latency) for at, v, ok, latency in self._calls if at >= since and v == version]
        if not recent:
            return CallSummary(0, 0, None)
        errors = sum(1 for ok, _ in recent if not ok)
        latencies = sorted(latency for ok, latency in recent if ok)
        p95 = None
        if latencies:
            index = max(0, math.ceil(0.95 * len(latencies)) - 1)  # nearest-rank percentile
            p95 = round(1000.0 * latencies[index], 3)
        return CallSummary(len(recent), errors, p95)


@dataclass(frozen=True)
class Transition:
    before: str
    after: str
    reason: str
    model_version: str | None
    by: str


CACHED_VERSIONS = 8  # records a worker keeps: the served version's, and those read or reset lately

_ALERTS = {
    OPEN: ("breaker.opened", Severity.ERROR),
    HALF_OPEN: ("breaker.half_open", Severity.WARNING),
    CLOSED: ("breaker.closed", Severity.WARNING),
}


class CircuitBreaker:
    """This worker's view of the shared breaker, and the one place that changes it.

    ``route(version)`` is the per-request decision (no I/O). ``sync(version)`` re-reads that
    version's shared record; ``evaluate(...)`` decides transitions from online quality and this
    worker's call statistics; ``reset()`` is the admin override. Writes are compare-and-set, so
    two workers deciding at once produce one transition. The worker caches the records of the
    last few versions it read (the one it serves is re-read every ``monitor_sync_seconds``, and
    a bundle's is read before it is swapped in); a version never read is closed.
    """

    def __init__(
        self,
        store: BreakerStore,
        policy: BreakerPolicy,
        *,
        alert: Callable[[Alert], None] | None = None,
        clock: Callable[[], float] = time.time,
        window_seconds: float = 3600.0,
        calls_window_seconds: float = 300.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.alert = alert
        self.clock = clock
        self.window_seconds = window_seconds
        self.calls_window_seconds = calls_window_seconds
        self.calls = CallStats(max(CALLS_KEPT, policy.min_requests))
        # by version, oldest adopted first; an entry is replaced in place, never removed and put
        # back (request threads read it without the lock: a missing entry is a closed breaker)
        self._records: OrderedDict[str | None, BreakerRecord] = OrderedDict()
        self._adoptions = 0  # records adopted so far: a read that raced with none is adopted as is
        self.store_error: str | None = None
        self._store_error_of: str | None = None  # the version whose read failed with store_error
        self.read_at = -math.inf  # when sync() last read the store (monotonic), successfully or not
        # a store outage fails the monitor's write every few seconds: logged when it starts, then
        # at most every 30 s (as its failed reads are), not one WARNING per sync of each worker
        self._write_failures = LogEvery(30.0)
        # a trip the store did not take (down, or a Redis replica refusing writes): the model
        # judged unhealthy keeps serving, an ERROR naming it and why, at most every 30 s
        self._lost_trips = LogEvery(30.0)
        self._probe_lock = threading.Lock()
        self._routed = 0
        self._probed = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ per request

    def record_of(self, version: str | None) -> BreakerRecord:
        """``version``'s record as last read or written here; a fresh closed one if never read."""
        record = self._records.get(version)
        return record if record is not None else BreakerRecord(model_version=version)

    def effective_state(self, version: str | None) -> str:
        """The state of ``version``'s breaker, as last read (no I/O)."""
        return self.record_of(version).state

    def route(self, version: str | None) -> str:
        """``model``, ``probe`` (half-open, champion serves) or ``fallback``; reads only memory."""
        state = self.effective_state(version)
        if state == CLOSED:
            return MODEL
        if state == OPEN:
            return FALLBACK
        # half-open: exactly probe_share of the requests (deterministic, per worker) go to the champion
        with self._probe_lock:
            self._routed += 1
            due = int(self._routed * self.policy.probe_share) > self._probed
            if due:
                self._probed += 1
        return PROBE if due else FALLBACK

    def peek(self, version: str | None) -> str:
        """The route a request would take, without taking a half-open probe (then: ``fallback``)."""
        return MODEL if self.effective_state(version) == CLOSED else FALLBACK

    def record_call(self, version: str | None, ok: bool, latency_s: float) -> None:
        """One call of model ``version`` and its outcome (errors and latency feed the breaker's bounds)."""
        self.calls.record(self.clock(), version, ok, latency_s)

    # ------------------------------------------------------------------ shared state

    def sync(self, version: str | None) -> BreakerRecord:
        """Re-read ``version``'s shared record; on a store failure keep serving by the last known one."""
        started = self._adoptions
        self.read_at = time.monotonic()
        try:
            record = self.store.read(version)
        except BreakerStoreError as exc:
            if self.store_error is None:
                log.warning(
                    "breaker state store unreachable; keeping the last known state",
                    extra={"error": describe_error(exc, 300)},
                )
            self.store_error = describe_error(exc, 300)
            self._store_error_of = version
            return self.record_of(version)
        if self.store_error is not None:
            log.info("breaker state store reachable again")
        self.store_error = None
        self._adopt(version, record, read_started=started)
        return record

    def _adopt(self, version: str | None, record: BreakerRecord, read_started: int | None = None,
               *, cache_new: bool = True) -> None:  # fmt: skip
        """Take ``record`` as this worker's view of ``version``. A read is the store's truth,
        whatever its generation (a Redis restarted or flushed, a database restored, counts again
        from a lower one), unless something newer was adopted while it was in flight. With
        ``cache_new`` False (an admin reset), a version not cached yet is not added: resets of
        other versions must not evict the served version's record."""
        with self._lock:
            current = self._records.get(version)
            if current is None and not cache_new:
                return
            unraced_read = read_started is not None and read_started == self._adoptions
            newer = current is None or record.generation >= current.generation or record.generation == 0
            if not (unraced_read or newer):
                return
            if current is None or record.state != current.state:
                with self._probe_lock:
                    self._routed = self._probed = 0
            self._records[version] = record  # replaced in place: never missing for a request thread
            self._records.move_to_end(version)  # the newest adopted last
            while len(self._records) > CACHED_VERSIONS:
                self._records.popitem(last=False)
            self._adoptions += 1

    def _write(self, version: str | None, record: BreakerRecord, expected: int, strict: bool = False,
               *, read_started: int | None = None, cache_new: bool = True
               ) -> BreakerRecord | None:  # fmt: skip
        """Compare-and-set; None when another writer won, or (unless ``strict``) the store failed.
        ``read_started``: the adoption count before the read the write is based on (a write that
        raced with no adoption is the store's truth, whatever the cached generation)."""
        try:
            stored = self.store.write(version, record, expected)
        except BreakerStoreError as exc:
            if strict:
                raise
            self._write_failures.log(
                log, logging.WARNING, "breaker state could not be written", error=describe_error(exc, 300)
            )
            return None
        if stored is not None:
            self._adopt(version, stored, read_started, cache_new=cache_new)
        return stored

    def _transition(self, current: BreakerRecord, after: str, reason: str, version: str | None, by: str,
                    evaluation: dict[str, Any] | None = None, strict: bool = False,
                    read_started: int | None = None, cache_new: bool = True
                    ) -> BreakerRecord | None:  # fmt: skip
        now = self.clock()
        before = current.state
        evaluation = dict(current.evaluation if evaluation is None else evaluation)
        if after == CLOSED:
            evaluation.pop(OPENED_ON, None)  # a closed breaker opens afresh on what trips it next
        updated = current.evolve(
            state=after,
            since=now,
            reason=reason,
            model_version=version,
            evaluation=evaluation,
        )
        transition = Transition(before, after, reason, version, by)
        try:
            stored = self._write(
                version, updated, current.generation, True, read_started=read_started, cache_new=cache_new
            )
        except BreakerStoreError as exc:
            if strict:
                raise
            self._not_recorded(transition, describe_error(exc, 300))
            return None
        if stored is None:
            return None
        self.announce(transition)
        return stored

    def _not_recorded(self, transition: Transition, error: str) -> None:
        """A transition the store did not take: nothing changed, in any worker. A trip is an ERROR
        naming the model and why (the model found unhealthy keeps serving); until 2026-12-07 it was
        the WARNING of any failed write, which named neither and is not mailed by default."""
        if transition.after != OPEN:
            self._write_failures.log(log, logging.WARNING, "breaker state could not be written", error=error)
            return
        self._lost_trips.log(
            log, logging.ERROR,
            f"circuit breaker could not open for model {transition.model_version}: its state store "
            f"did not take the change, the model keeps serving ({transition.reason})",
            error=error, reason=transition.reason, model_version=transition.model_version,
        )  # fmt: skip

    def announce(self, transition: Transition) -> None:
        """Log, count and alert one transition (opened: ERROR; half-open, closed, reset: WARNING)."""
        kind, severity = _ALERTS[transition.after]
        if transition.by.startswith("admin"):
            kind, severity = "breaker.reset", Severity.WARNING
        state = {OPEN: "OPEN", HALF_OPEN: "half-open", CLOSED: "closed"}[transition.after]
        effect = {
            OPEN: "serving the fallback",
            HALF_OPEN: f"probing {self.policy.probe_share:.0%} of requests",
            CLOSED: "the model serves again",
        }[transition.after]
        if not self.policy.routes:
            effect = "not routing (MOVIEREC_BREAKER_ENABLED=false), the model serves every request"
        summary = f"circuit breaker {state} for model {transition.model_version}: {effect}"
        details = {
            "from": transition.before,
            "to": transition.after,
            "reason": transition.reason,
            "model_version": transition.model_version,
            "by": transition.by,
        }
        log.log(
            int(severity), f"{summary} ({transition.reason})", extra={"alert_kind": kind, "breaker": details}
        )
        metrics.TALLY.count(metrics.BREAKER_TRANSITIONS, (transition.before, transition.after))
        if self.alert is not None:
            try:
                self.alert(Alert(kind, severity, summary, details))
            except Exception:
                log.exception("raising the breaker alert failed")

    # ------------------------------------------------------------------ decisions

    def evaluate(
        self,
        version: str | None,
        quality: Callable[[float], Quality | None] | None,
        *,
        evaluation: dict[str, Any] | None = None,
    ) -> BreakerRecord:
        """Decide the next state for the served ``version``.

        ``quality(since)`` measures the champion's online quality since a time (a database
        query; None = skip, e.g. when another worker holds the evaluation turn). The result
        of the evaluation is stored with the record for /api/model and /metrics.
        """
        record = self.sync(version)
        now = self.clock()
        policy = self.policy
        since = max(now - self.window_seconds, record.since)
        # the probe's calls count since half-open began (within the quality window, like its
        # feedback): a probe_share of a quiet worker's traffic may take longer than the calls
        # window to reach min_requests
        calls_window = self.window_seconds if record.state == HALF_OPEN else self.calls_window_seconds
        probe_calls = self.calls.summary(max(now - calls_window, record.since), version)
        calls = judge_calls(probe_calls, policy)
        measured = quality(since) if quality is not None and record.state != OPEN else None
        needed = policy.probe_min_events if record.state == HALF_OPEN else policy.min_events
        judged = judge_quality(measured, policy, needed) if measured is not None else None
        snapshot = dict(record.evaluation if evaluation is None else evaluation)
        if measured is not None:
            snapshot["quality"] = measured.as_dict()
            snapshot["quality_verdict"] = judged.as_dict() if judged else None
        snapshot["evaluated_at"] = now
        verdicts = {CALLS: calls, FEEDBACK: judged}
        unhealthy = {kind: v for kind, v in verdicts.items() if v is not None and v.verdict == UNHEALTHY}
        healthy = {kind for kind, v in verdicts.items() if v is not None and v.verdict == HEALTHY}
        failed = sorted(unhealthy)
        reasons = "; ".join(r for kind in failed for r in unhealthy[kind].reasons)
        # what the breaker opened on is what its probe must show healthy again (each worker
        # judges its own probe calls; the transition is a compare-and-set like any other)
        tripped = () if record.state == CLOSED else opened_on(record)
        if tripped:
            snapshot[OPENED_ON] = list(tripped)
        after, reason = None, ""
        if record.state == CLOSED and failed:
            after, reason = OPEN, reasons
            snapshot[OPENED_ON] = failed
        elif record.state == OPEN and now - record.since >= policy.cooldown_seconds:
            after, reason = HALF_OPEN, f"cool-down of {policy.cooldown_seconds:.0f} s over"
        elif record.state == HALF_OPEN and failed:
            after, reason = OPEN, f"probe failed: {reasons}"
            snapshot[OPENED_ON] = sorted(set(tripped) | set(failed))
        elif record.state == HALF_OPEN and healthy.issuperset(tripped):
            evidence = {
                FEEDBACK: f"{measured.events if measured else 0} feedback events",
                CALLS: f"{probe_calls.calls} model calls",
            }
            over = " and ".join(evidence[kind] for kind in (FEEDBACK, CALLS) if kind in tripped)
            after, reason = CLOSED, f"probe healthy over {over}"
        evaluated = measured is not None or evaluation is not None  # not only this worker's calls
        if after is not None:
            # the snapshot shown as the last evaluation is dated with it (a trip kept the older time)
            current = record.evolve(evaluated_at=now) if evaluated else record
            stored = self._transition(current, after, reason, version, "monitor", snapshot)
            return stored or self.record_of(version)  # another worker decided first: its decision stands
        if evaluated:
            updated = record.evolve(evaluated_at=now, evaluation=snapshot, model_version=version)
            stored = self._write(version, updated, record.generation)
            return stored or self.record_of(version)
        return record

    def claim_evaluation(self, version: str | None, interval: float, *, force: bool = False) -> bool:
        """Take this interval's evaluation turn for ``version`` (one worker per interval does the
        database work)."""
        record = self.sync(version)
        now = self.clock()
        if not force and now - record.evaluated_at < interval:
            return False
        return self._write(version, record.evolve(evaluated_at=now), record.generation) is not None

    def reset(self, version: str | None, by: str = "admin") -> BreakerRecord:
        """Close ``version``'s breaker now (admin override); a no-op write when it is already closed.
        A record the store holds but that cannot be read is replaced by a closed one. A store that
        cannot be read or written is a :class:`BreakerStoreError` (the endpoint's 503)."""
        for _ in range(5):
            started = self._adoptions
            try:
                record = self.store.read(version)
            except UnreadableRecordError as exc:
                replaced = self._replace_unreadable(version, by, str(exc), started)
                if replaced is not None:
                    self._store_answered(version)
                    return replaced
                continue
            self._store_answered(version)
            if record.state == CLOSED:
                self._adopt(version, record, read_started=started, cache_new=False)
                return record
            stored = self._transition(
                record, CLOSED, f"reset by {by}", version, by,
                strict=True, read_started=started, cache_new=False,
            )  # fmt: skip
            if stored is not None:
                return stored
        raise BreakerStoreError("the breaker state kept changing while resetting it; try again")

    def _store_answered(self, version: str | None) -> None:
        """The store read (or replaced) ``version``'s record: a ``store_error`` its last sync left
        is over. The reset's answer and /api/model said "unreadable breaker record" after the reset
        had replaced it, until the worker's next sync."""
        if self.store_error is not None and version == self._store_error_of:
            log.info("breaker state store reachable again")
            self.store_error = None

    def _replace_unreadable(self, version: str | None, by: str, error: str, read_started: int
                            ) -> BreakerRecord | None:  # fmt: skip
        """An admin reset of a record that cannot be read: a closed one written over it (None when
        another writer changed it meanwhile)."""
        fresh = BreakerRecord(
            state=CLOSED, since=self.clock(), reason=f"reset by {by}", model_version=version
        )
        stored = self.store.replace(version, fresh)
        if stored is None:
            return None
        log.warning("unreadable breaker record replaced by a reset", extra={"error": error[:300]})
        self._adopt(version, stored, read_started=read_started, cache_new=False)
        self.announce(Transition("unreadable", CLOSED, fresh.reason, version, by))
        return stored

    # ------------------------------------------------------------------ reporting

    def status(self, version: str | None, record: BreakerRecord | None = None) -> dict[str, Any]:
        """The breaker block of GET /api/model and the dashboard: ``version``'s state as last read
        (or as ``record`` says)."""
        record = self.record_of(version) if record is None else record
        state = record.state
        now = self.clock()
        remaining = None
        if state == OPEN:
            remaining = max(0.0, round(record.since + self.policy.cooldown_seconds - now, 1))
        return {
            "state": state,
            "since": _iso(record.since) if record.since else None,
            "reason": record.reason,
            "model_version": record.model_version if record.model_version is not None else version,
            "cooldown_remaining_seconds": remaining,
            "probe_share": self.policy.probe_share,
            # False (MOVIEREC_BREAKER_ENABLED=false): judged and announced, but the model serves
            # every request whatever the state says
            "routes": self.policy.routes,
            "store": self.store.where,
            "store_error": self.store_error,
            "thresholds": self.policy.thresholds(),
            "last_evaluation": {k: v for k, v in record.evaluation.items() if k != "evaluated_at"} or None,
            "evaluated_at": _iso(record.evaluated_at) if record.evaluated_at else None,
        }


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
