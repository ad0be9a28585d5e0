"""The circuit breaker's decisions, its shared stores (SQLite, PostgreSQL, Redis) and the fallback."""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.monitoring.alerts import Alert, Severity
from app.monitoring.breaker import (
    CACHED_VERSIONS,
    FALLBACK,
    HEALTHY,
    INSUFFICIENT,
    MODEL,
    PROBE,
    UNHEALTHY,
    BreakerPolicy,
    CallStats,
    CallSummary,
    CircuitBreaker,
    judge_calls,
    judge_quality,
)
from app.monitoring.fallback import Fallback, popularity_order
from app.monitoring.quality import Quality
from app.recommender.bundle import LoadedBundle, RecommendQuery, Tables
from app.recommender.segments import Segment, segment_index
from app.storage.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    REDIS_PREFIX,
    BreakerRecord,
    BreakerRow,
    BreakerStoreError,
    DatabaseBreakerStore,
    RedisBreakerStore,
)
from app.storage.db import Database

pytestmark = pytest.mark.unit

POLICY = BreakerPolicy(
    min_events=10, min_mean_score=2.5, min_like_share=0.2, max_rmse=1.5, min_requests=5,
    max_error_rate=0.2, max_latency_ms=100.0, cooldown_seconds=60.0, probe_share=0.25, probe_min_events=4,
)  # fmt: skip


def quality(
    events: int, mean: float, liked: float, error: float | None = None, version: str = "v1",
    lists: int | None = None,
) -> Quality:  # fmt: skip
    """``events`` rows, each scoring a list of its own unless ``lists`` says otherwise."""
    return Quality(
        version, 0.0, 1.0, events, events if lists is None else lists, mean, liked, error,
        events if error is not None else 0, 1, 0.5, 5,
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(sqlite_database: Database) -> Database:
    return sqlite_database


def make_breaker(store: Any, clock: Clock, alerts: list[Alert] | None = None) -> CircuitBreaker:
    sink = alerts.append if alerts is not None else None
    return CircuitBreaker(store, POLICY, alert=sink, clock=clock, window_seconds=3600)


def test_judge_quality_needs_enough_events_then_applies_each_threshold() -> None:
    assert judge_quality(None, POLICY, 10).verdict == INSUFFICIENT
    assert judge_quality(quality(9, 1.0, 0.0), POLICY, 10).verdict == INSUFFICIENT
    assert judge_quality(quality(10, 3.0, 0.5, 1.0), POLICY, 10).verdict == HEALTHY
    low_mean = judge_quality(quality(10, 2.4, 0.5), POLICY, 10)
    assert low_mean.verdict == UNHEALTHY and "mean score 2.40 < 2.5" in low_mean.reasons[0]
    assert judge_quality(quality(10, 3.0, 0.1), POLICY, 10).verdict == UNHEALTHY
    assert judge_quality(quality(10, 3.0, 0.5, 1.6), POLICY, 10).verdict == UNHEALTHY
    # thresholds switched off are not applied
    lenient = BreakerPolicy(min_mean_score=None, min_like_share=None, max_rmse=None)
    assert judge_quality(quality(50, 0.5, 0.0, 4.0), lenient, 50).verdict == HEALTHY


def test_judge_quality_needs_the_rows_to_score_enough_lists() -> None:
    policy = BreakerPolicy(min_lists=5)
    one_list = judge_quality(quality(60, 0.5, 0.0, lists=1), policy, 50)
    assert one_list.verdict == INSUFFICIENT
    assert one_list.reasons == ("60 feedback events from 1 scored lists; 5 needed",)
    assert judge_quality(quality(60, 0.5, 0.0, lists=5), policy, 50).verdict == UNHEALTHY
    # never more lists than rows needed (a probe needing 3 rows needs 3 lists, not 5)
    assert judge_quality(quality(3, 0.5, 0.0, lists=2), policy, 3).verdict == INSUFFICIENT
    assert judge_quality(quality(3, 0.5, 0.0, lists=3), policy, 3).verdict == UNHEALTHY


def test_call_stats_error_rate_and_nearest_rank_p95() -> None:
    stats = CallStats()
    for i in range(1, 21):  # latencies 1..20 ms, all ok
        stats.record(100.0, "v1", True, i / 1000)
    stats.record(100.0, "v1", False, 0.5)
    stats.record(100.0, "v2", False, 0.5)
    summary = stats.summary(since=0.0, version="v1")
    assert summary == CallSummary(calls=21, errors=1, p95_ms=19.0)  # ceil(0.95 * 20) = 19th of 20
    assert stats.summary(since=0.0, version="v2") == CallSummary(1, 1, None)
    assert stats.summary(since=101.0, version="v1") == CallSummary(0, 0, None)
    assert judge_calls(CallSummary(4, 4, None), POLICY).verdict == INSUFFICIENT
    assert judge_calls(CallSummary(10, 1, 50.0), POLICY).verdict == HEALTHY
    assert judge_calls(CallSummary(10, 3, 50.0), POLICY).verdict == UNHEALTHY  # 30% > 20%
    slow = judge_calls(CallSummary(10, 0, 150.0), POLICY)
    assert slow.verdict == UNHEALTHY and "p95 latency 150 ms > 100 ms" in slow.reasons[0]


def test_state_machine_closed_open_half_open_closed(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    clock, alerts = Clock(), []
    breaker = make_breaker(DatabaseBreakerStore(db), clock, alerts)
    assert breaker.route("v1") == MODEL

    # healthy or not enough evidence: stays closed
    assert breaker.evaluate("v1", lambda since: quality(5, 1.0, 0.0)).state == CLOSED
    assert breaker.evaluate("v1", lambda since: quality(20, 4.0, 0.8)).state == CLOSED

    clock.now += 10
    with caplog.at_level(logging.WARNING, logger="movierec.breaker"):
        record = breaker.evaluate("v1", lambda since: quality(20, 1.5, 0.05))
    assert record.state == OPEN and record.model_version == "v1" and record.since == clock.now
    assert "mean score 1.50 < 2.5" in record.reason
    opened = [r for r in caplog.records if r.name == "movierec.breaker"]
    assert opened[-1].levelno == logging.ERROR and opened[-1].alert_kind == "breaker.opened"
    assert alerts[-1].kind == "breaker.opened" and alerts[-1].severity == Severity.ERROR
    assert [breaker.route("v1") for _ in range(3)] == [FALLBACK] * 3
    assert breaker.route("v2") == MODEL  # opened for v1 only

    # cool-down not over: still open, and quality is not even measured (the champion gets no traffic)
    clock.now += 59
    assert breaker.evaluate("v1", lambda since: pytest.fail("measured while open")).state == OPEN
    clock.now += 1
    record = breaker.evaluate("v1", None)
    assert record.state == HALF_OPEN and alerts[-1].kind == "breaker.half_open"
    # an answer nobody receives (HEAD) peeks: the fallback while probing, and no probe taken
    assert [breaker.peek("v1") for _ in range(8)] == [FALLBACK] * 8 and breaker.peek("v2") == MODEL
    routes = [breaker.route("v1") for _ in range(8)]
    assert routes.count(PROBE) == 2 and routes.count(FALLBACK) == 6  # exactly probe_share = 0.25

    # the probe is judged on events since half-open began, with its own minimum
    seen: list[float] = []
    record = breaker.evaluate("v1", lambda since: seen.append(since) or quality(3, 4.0, 1.0))
    assert seen == [clock.now - 0.0] and record.state == HALF_OPEN  # 3 < probe_min_events
    clock.now += 5
    record = breaker.evaluate("v1", lambda since: quality(4, 4.0, 1.0))
    assert record.state == CLOSED and "probe healthy over 4" in record.reason
    assert alerts[-1].kind == "breaker.closed" and alerts[-1].severity == Severity.WARNING
    assert breaker.route("v1") == MODEL
    assert record.evaluation["quality"]["events"] == 4


def test_unhealthy_probe_reopens_and_errors_open_without_feedback(db: Database) -> None:
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    for _ in range(4):
        breaker.record_call("v1", True, 0.001)
    for _ in range(2):
        breaker.record_call("v1", False, 0.001)
    record = breaker.evaluate("v1", None)  # 2 errors of 6 calls = 33% > 20%
    assert record.state == OPEN and "model error rate" in record.reason
    clock.now += 60
    assert breaker.evaluate("v1", None).state == HALF_OPEN
    # the errors happened before half-open: they do not count against the probe
    assert breaker.evaluate("v1", lambda since: quality(1, 4.0, 1.0)).state == HALF_OPEN
    record = breaker.evaluate("v1", lambda since: quality(4, 1.0, 0.0))
    assert record.state == OPEN and record.reason.startswith("probe failed")


def _open_on_errors(breaker: CircuitBreaker, clock: Clock, version: str = "v1") -> None:
    """Failing calls open ``version``'s breaker; the cool-down passes: half-open."""
    for _ in range(POLICY.min_requests):
        breaker.record_call(version, False, 0.001)
    assert breaker.evaluate(version, None).state == OPEN
    clock.now += POLICY.cooldown_seconds
    assert breaker.evaluate(version, None).state == HALF_OPEN


def test_a_breaker_opened_on_errors_closes_on_the_probes_healthy_calls_without_feedback(db: Database) -> None:
    """Opened on model errors, half-open, and no client ever scores (many API clients never call
    /api/recommend/score): the probe's calls said the champion was healthy again, but closing
    needed probe feedback, so ~90 % of the traffic got the fallback until an admin reset."""
    clock, alerts = Clock(), []
    breaker = make_breaker(DatabaseBreakerStore(db), clock, alerts)
    _open_on_errors(breaker, clock)
    assert breaker.record_of("v1").evaluation["opened_on"] == ["calls"]
    for _ in range(POLICY.min_requests - 1):
        clock.now += 1
        breaker.record_call("v1", True, 0.010)
    assert breaker.evaluate("v1", None).state == HALF_OPEN  # not enough probe calls yet
    breaker.record_call("v1", True, 0.010)
    record = breaker.evaluate("v1", None)  # the light evaluation of each worker: no feedback at all
    assert record.state == CLOSED and record.reason == f"probe healthy over {POLICY.min_requests} model calls"
    assert alerts[-1].kind == "breaker.closed" and breaker.route("v1") == MODEL
    assert "opened_on" not in record.evaluation


def test_probe_calls_count_since_half_open_began_not_only_the_last_five_minutes(db: Database) -> None:
    """A quiet service probes a few calls a minute: the probe's calls are its evidence since the
    half-open state began (within the quality window), or it never reached min_requests."""
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    _open_on_errors(breaker, clock)
    for _ in range(POLICY.min_requests):
        clock.now += 120  # one probe call every two minutes
        breaker.record_call("v1", True, 0.010)
    assert breaker.evaluate("v1", None).state == CLOSED


def test_a_slow_or_failing_probe_reopens_a_breaker_opened_on_calls(db: Database) -> None:
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    _open_on_errors(breaker, clock)
    for _ in range(POLICY.min_requests):
        breaker.record_call("v1", True, 0.5)  # 500 ms > 100 ms
    record = breaker.evaluate("v1", None)
    assert record.state == OPEN and record.reason.startswith("probe failed: model p95 latency")
    clock.now += POLICY.cooldown_seconds
    assert breaker.evaluate("v1", None).state == HALF_OPEN
    for _ in range(POLICY.min_requests):
        breaker.record_call("v1", False, 0.001)
    record = breaker.evaluate("v1", None)
    assert record.state == OPEN and record.reason.startswith("probe failed: model error rate")


def test_a_breaker_opened_on_feedback_still_needs_feedback_to_close(db: Database) -> None:
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    assert breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0)).state == OPEN
    assert breaker.record_of("v1").evaluation["opened_on"] == ["feedback"]
    clock.now += POLICY.cooldown_seconds
    assert breaker.evaluate("v1", None).state == HALF_OPEN
    for _ in range(3 * POLICY.min_requests):
        breaker.record_call("v1", True, 0.010)
    # fast, faultless calls do not show that users like the lists again
    assert breaker.evaluate("v1", None).state == HALF_OPEN
    assert breaker.evaluate("v1", lambda since: quality(2, 4.0, 1.0)).state == HALF_OPEN
    record = breaker.evaluate("v1", lambda since: quality(4, 4.0, 1.0))
    assert record.state == CLOSED and record.reason == "probe healthy over 4 feedback events"


def test_a_probe_failing_for_another_reason_needs_both_kinds_of_evidence(db: Database) -> None:
    """Opened on feedback, then the probe's calls failed: closing needs healthy feedback and
    healthy calls (each reason it opened for), not only the last one."""
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0))
    clock.now += POLICY.cooldown_seconds
    breaker.evaluate("v1", None)
    for _ in range(POLICY.min_requests):
        breaker.record_call("v1", False, 0.001)
    record = breaker.evaluate("v1", None)
    assert record.state == OPEN and record.evaluation["opened_on"] == ["calls", "feedback"]
    clock.now += POLICY.cooldown_seconds
    assert breaker.evaluate("v1", None).state == HALF_OPEN
    for _ in range(POLICY.min_requests):
        breaker.record_call("v1", True, 0.010)
    assert breaker.evaluate("v1", None).state == HALF_OPEN  # calls healthy, no feedback yet
    record = breaker.evaluate("v1", lambda since: quality(4, 4.0, 1.0))
    assert record.state == CLOSED
    assert record.reason == f"probe healthy over 4 feedback events and {POLICY.min_requests} model calls"


def test_workers_close_on_their_own_probe_calls_through_the_shared_record(db: Database) -> None:
    """Each worker judges its own probe calls; the one with enough healthy ones closes the shared
    record (compare-and-set), and another worker's failing calls from before the close do not
    re-open it: they are not evidence about the state that began after them."""
    clock = Clock()
    first = make_breaker(DatabaseBreakerStore(db), clock)
    second = make_breaker(DatabaseBreakerStore(db), clock)
    _open_on_errors(first, clock)
    assert second.sync("v1").state == HALF_OPEN
    for _ in range(POLICY.min_requests - 1):
        second.record_call("v1", False, 0.001)  # too few to judge in that worker
    clock.now += 1
    for _ in range(POLICY.min_requests):
        first.record_call("v1", True, 0.010)
    assert second.evaluate("v1", None).state == HALF_OPEN
    assert first.evaluate("v1", None).state == CLOSED
    clock.now += 1
    second.record_call("v1", True, 0.010)
    assert second.evaluate("v1", None).state == CLOSED and second.route("v1") == MODEL


def test_the_evaluation_that_opens_the_breaker_is_its_last_evaluation(db: Database) -> None:
    """GET /api/model shows the evaluation that opened the breaker (``last_evaluation``) beside
    ``evaluated_at``; the trip's write kept the record's older time, so a breaker opened by a
    score-triggered evaluation of a new version read "evaluated_at": null (the dashboard: "Last
    evaluated: not yet") beside the reasons that evaluation gave, and the next monitor turn
    measured again at once. A transition on call statistics alone, no evaluation of quality,
    leaves it as it was."""
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    record = breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0))
    assert record.state == OPEN and record.evaluated_at == clock.now
    status = breaker.status("v1")
    assert status["evaluated_at"] == "1970-01-12T13:46:40+00:00" and status["last_evaluation"]["quality"]
    clock.now += 60
    assert breaker.evaluate("v1", None).state == HALF_OPEN  # the cool-down: no evaluation of quality
    assert breaker.record_of("v1").evaluated_at == clock.now - 60
    clock.now += 5
    record = breaker.evaluate("v1", lambda since: quality(4, 4.0, 1.0), evaluation={"drift": {}})
    assert record.state == CLOSED and record.evaluated_at == clock.now


def test_a_half_open_record_without_its_opening_reason_needs_feedback_as_before(db: Database) -> None:
    """A record written before the reason was kept (evaluation without ``opened_on``) closes
    only on feedback, as it did; an admin reset closes it at once."""
    clock = Clock()
    store = DatabaseBreakerStore(db)
    store.write("v1", BreakerRecord(state=HALF_OPEN, since=clock.now, model_version="v1"), 0)
    breaker = make_breaker(store, clock)
    for _ in range(POLICY.min_requests):
        breaker.record_call("v1", True, 0.010)
    assert breaker.evaluate("v1", None).state == HALF_OPEN
    assert breaker.evaluate("v1", lambda since: quality(4, 4.0, 1.0)).state == CLOSED


def test_a_min_requests_above_the_call_buffer_still_judges_errors(db: Database) -> None:
    """Each worker kept its last 2,000 model calls whatever MOVIEREC_BREAKER_MIN_REQUESTS said: with
    a bound above that (more evidence asked for on a busy service) the count never reached it,
    and a champion failing every call never opened the breaker (its errors were answered from
    the fallback one by one, each after the failing call)."""
    clock = Clock()
    policy = BreakerPolicy(min_requests=3000, max_error_rate=0.05)
    breaker = CircuitBreaker(DatabaseBreakerStore(db), policy, clock=clock, window_seconds=3600)
    for _ in range(3000):
        breaker.record_call("v1", False, 0.001)
    record = breaker.evaluate("v1", None)
    assert record.state == OPEN and "model error rate 100.0%" in record.reason


def test_admin_reset_closes_it(db: Database) -> None:
    clock, alerts = Clock(), []
    breaker = make_breaker(DatabaseBreakerStore(db), clock, alerts)
    breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0))
    assert breaker.record_of("v1").state == OPEN
    record = breaker.reset("v1", by="admin")
    assert record.state == CLOSED and record.reason == "reset by admin"
    assert alerts[-1].kind == "breaker.reset" and breaker.route("v1") == MODEL
    assert breaker.reset("v1").generation == record.generation  # already closed: nothing written


def test_each_model_version_has_its_own_breaker(db: Database) -> None:
    """Workers serving different versions for a while (a reload reaching them one by one, a
    rolling deploy) shared one record: the version that evaluated last rewrote it as its own,
    so a worker still serving the tripped version read "opened for another model" and served
    it again, and the other version's window restarted at every rewrite."""
    clock, alerts = Clock(), []
    old = make_breaker(DatabaseBreakerStore(db), clock, alerts)  # a worker still serving v1
    new = make_breaker(DatabaseBreakerStore(db), clock, alerts)  # a worker that loaded v2
    assert old.evaluate("v1", lambda since: quality(10, 1.0, 0.0)).state == OPEN
    new_since: list[float] = []
    for _ in range(3):
        clock.now += 10
        assert (
            new.evaluate("v2", lambda since: new_since.append(since) or quality(10, 4.0, 0.8)).state == CLOSED
        )
        assert old.evaluate("v1", None).state == OPEN  # v2's evaluations leave v1's breaker alone
        assert old.route("v1") == FALLBACK and new.route("v2") == MODEL
    # v2 is judged over the whole window each time: v1's evaluations did not restart it
    assert new_since == [clock.now - 3600 - 20, clock.now - 3600 - 10, clock.now - 3600]
    assert [a.kind for a in alerts] == ["breaker.opened"]  # nothing was closed by a reload

    # a version served again (a rollback to v1) finds the state it left: open, then probed
    new.sync("v1")
    assert new.route("v1") == FALLBACK and new.status("v1")["state"] == OPEN
    assert new.status("v2")["state"] == CLOSED  # not the cached version: as a fresh record
    clock.now += POLICY.cooldown_seconds
    assert new.evaluate("v1", None).state == HALF_OPEN

    # the admin closes v1's breaker from a worker that caches v2's: its own view is untouched
    new.sync("v2")
    assert new.reset("v1").state == CLOSED
    assert new.route("v2") == MODEL and new.status("v2")["model_version"] == "v2"
    assert old.sync("v1").state == CLOSED and old.route("v1") == MODEL


def test_calls_of_one_version_are_not_evidence_against_another(db: Database) -> None:
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    for _ in range(10):
        breaker.record_call("v1", False, 0.001)
        breaker.record_call("v2", True, 0.001)
    assert breaker.evaluate("v2", None).state == CLOSED
    assert breaker.evaluate("v1", None).state == OPEN


def test_two_workers_share_the_state_and_only_one_wins_a_race(db: Database) -> None:
    clock = Clock()
    first = make_breaker(DatabaseBreakerStore(db), clock)
    second = make_breaker(DatabaseBreakerStore(db), clock)
    stale = second.sync("v1")
    first.evaluate("v1", lambda since: quality(10, 1.0, 0.0))
    assert second.route("v1") == MODEL  # not synced yet: its cached view
    assert second.sync("v1").state == OPEN and second.route("v1") == FALLBACK
    # a write based on the stale generation loses instead of overwriting the newer decision
    assert second.store.write("v1", stale.evolve(reason="stale"), stale.generation) is None
    assert second.sync("v1").state == OPEN
    # the evaluation turn: one claim per interval and version (the evaluation that opened it was one)
    assert first.claim_evaluation("v1", 30.0) is False
    clock.now += 30
    assert first.claim_evaluation("v1", 30.0) is True
    assert second.claim_evaluation("v1", 30.0) is False
    assert second.claim_evaluation("v2", 30.0) is True
    clock.now += 30
    assert second.claim_evaluation("v1", 30.0) is True


def take_the_store_down(db: Database) -> None:
    """The database store stops answering: its table is gone (every read and write fails)."""
    db.engine.dispose()
    with db.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE circuit_breaker")


def test_store_failure_keeps_the_last_known_state(db: Database) -> None:
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0))
    take_the_store_down(db)
    assert breaker.sync("v1").state == OPEN  # cached
    assert breaker.store_error is not None and breaker.route("v1") == FALLBACK
    assert breaker.status("v1")["store_error"]


def test_a_store_outage_is_logged_when_it_starts_not_at_every_sync(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Each worker's monitor tries to take the evaluation turn every few seconds (the record's
    last evaluation looks older than the interval, since nothing can be written): every failed
    write logged a WARNING, one line per worker every 2 s for as long as the store was down,
    where the failed read beside it, and every other outage, is logged when it starts and then
    at most every 30 s."""
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    breaker.claim_evaluation("v1", 30.0)
    take_the_store_down(db)
    with caplog.at_level(logging.INFO, logger="movierec.breaker"):
        for _ in range(5):  # five monitor syncs, 2 s apart
            clock.now += 2.0
            assert breaker.claim_evaluation("v1", 1.0) is False
            breaker.evaluate("v1", lambda since: quality(1, 4.0, 1.0), evaluation={"drift": {}})
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("breaker state store unreachable; keeping the last known state") == 1
    assert messages.count("breaker state could not be written") == 1, messages


def test_a_trip_the_store_cannot_record_is_an_error_naming_the_model_and_why(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """With the store down (or taking reads but refusing writes: a Redis replica after a fail-over),
    an evaluation that finds the champion unhealthy cannot open the breaker: the model keeps
    serving. That was one rate-limited WARNING, "breaker state could not be written", naming
    neither the model nor why, and nothing the host monitor mails by default: the on-call engineer
    learnt nothing while users got the model the breaker was there to keep out. It is an ERROR
    now (at most every 30 s, like the outage's other lines), and once the store answers again the
    trip is recorded and announced as usual."""
    clock, alerts = Clock(), []
    breaker = make_breaker(DatabaseBreakerStore(db), clock, alerts)
    breaker.claim_evaluation("v1", 30.0)
    take_the_store_down(db)
    with caplog.at_level(logging.INFO, logger="movierec.breaker"):
        for _ in range(5):  # five monitor rounds, 2 s apart
            clock.now += 2.0
            assert breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0)).state == CLOSED
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    message, reason = errors[0].getMessage(), "mean score 1.00 < 2.5"
    assert message.startswith("circuit breaker could not open for model v1: ") and reason in message
    assert getattr(errors[0], "reason", "").startswith(reason) and getattr(errors[0], "error", "")
    assert not alerts and breaker.route("v1") == MODEL  # nothing opened, nothing announced as opened
    BreakerRow.__table__.create(db.engine)  # type: ignore[attr-defined]
    assert breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0)).state == OPEN
    assert [alert.kind for alert in alerts] == ["breaker.opened"] and breaker.route("v1") == FALLBACK


def test_postgres_store(postgres_url: str) -> None:
    database = Database(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    database.upgrade()
    try:
        store = DatabaseBreakerStore(database, "pg")
        first = store.write("v1", BreakerRecord(state=OPEN, since=1.0, reason="x", model_version="v1"), 0)
        assert first is not None and first.generation == 1
        assert store.write("v1", BreakerRecord(state=CLOSED), 0) is None  # a second "first" insert loses
        assert store.read("v1").state == OPEN and store.read("v2") == BreakerRecord()
        assert store.write("v1", store.read("v1").evolve(state=HALF_OPEN), 1) is not None
        assert store.read("v1").generation == 2 and store.read("v1").state == HALF_OPEN
        long_version = "2026" + "x" * 60  # the longest a bundle may have (VERSION_MAX_LENGTH)
        assert store.write(long_version, BreakerRecord(state=OPEN, model_version=long_version), 0) is not None
        assert store.read(long_version).state == OPEN
    finally:
        database.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migration_0006_gives_the_existing_record_to_its_version(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A record written before 0006 (one per breaker, named "champion") is copied as the record of
    the version it was for, and kept; a 64-character name with a 64-character version fits."""
    from sqlalchemy import text

    from tests.helpers import migrate

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://")
    database = Database(url)
    try:
        migrate(database, "0005_user_rated_movies")
        with database.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO circuit_breaker (name, state, since, reason, model_version, generation, "
                    "evaluated_at, evaluation) VALUES ('champion', 'open', 5.0, 'bad', 'v1', 7, 6.0, '{}')"
                )
            )
        database.upgrade()
        store = DatabaseBreakerStore(database)
        # kept for instances of a rolling deploy still running the previous code (they read
        # "champion"; a missing row would be a closed breaker to them)
        with database.engine.connect() as connection:
            legacy = connection.execute(
                text("SELECT state FROM circuit_breaker WHERE name = 'champion'")
            ).all()
        assert [tuple(row) for row in legacy] == [("open",)]
        record = store.read("v1")
        assert (record.state, record.reason, record.generation, record.model_version) == (
            OPEN,
            "bad",
            7,
            "v1",
        )
        assert store.read("v2") == BreakerRecord()
        name, version = "n" * 64, "v" * 64
        assert DatabaseBreakerStore(database, name).write(version, BreakerRecord(state=OPEN), 0) is not None
        assert DatabaseBreakerStore(database, name).read(version).state == OPEN
    finally:
        database.dispose()


@pytest.fixture
def redis_store(local_redis_url: str) -> Iterator[RedisBreakerStore]:
    """A breaker record of its own in the machine's Redis, removed afterwards."""
    import redis

    client = redis.Redis.from_url(local_redis_url, socket_connect_timeout=1)
    store = RedisBreakerStore(client, f"test-{uuid.uuid4().hex}")
    yield store
    client.delete(*client.keys(store.key("*")), store.key(None))


def test_redis_store_compare_and_set(redis_store: RedisBreakerStore) -> None:
    store = redis_store
    assert store.read("v1") == BreakerRecord()
    stored = store.write("v1", BreakerRecord(state=OPEN, since=5.0, reason="bad", model_version="v1"), 0)
    assert stored is not None and stored.generation == 1
    assert store.write("v1", BreakerRecord(state=CLOSED), 0) is None
    assert store.read("v1") == stored and store.read("v2") == BreakerRecord()
    assert store.client.get(store.key("v1")) is not None and store.key("v1").endswith("@v1")
    clock = Clock()
    breaker = make_breaker(store, clock)
    assert breaker.sync("v1").state == OPEN and breaker.route("v1") == FALLBACK
    assert breaker.reset("v1").state == CLOSED and store.read("v1").state == CLOSED


def test_a_record_read_with_a_lower_generation_is_the_stores_truth(redis_store: RedisBreakerStore) -> None:
    """Redis restarted without persistence (or flushed, or the key evicted; a database restored)
    counts generations from 0 again. Workers whose cached generation was higher refused every
    record read since: they kept serving the fallback of a breaker the store said was closed,
    and an admin reset answered with the stale state."""
    store, clock = redis_store, Clock()
    first, second = make_breaker(store, clock), make_breaker(store, clock)
    first.evaluate("v1", lambda since: quality(10, 1.0, 0.0))  # opens
    for _ in range(5):
        clock.now += 30
        first.claim_evaluation("v1", 30.0)
    second.sync("v1")
    assert second.route("v1") == FALLBACK and second.record_of("v1").generation >= 5
    store.client.delete(store.key("v1"))  # the record is gone; the next write is generation 1
    clock.now += 30
    first.claim_evaluation("v1", 30.0)
    assert store.read("v1").state == CLOSED and store.read("v1").generation == 1
    assert second.sync("v1").state == CLOSED and second.route("v1") == MODEL
    first.evaluate("v1", lambda since: quality(10, 1.0, 0.0))  # opens again, and a reset closes it
    assert second.reset("v1").state == CLOSED and second.route("v1") == MODEL


@pytest.mark.parametrize("raw", [b"not json", b'{"state": "forced_open"}', b"null", b'{"generation": "7"}'])
def test_an_unreadable_record_is_a_store_error_not_a_crash(
    redis_store: RedisBreakerStore, raw: bytes
) -> None:
    """A truncated or hand-edited record, or one with a state of a newer version: the parse errors
    escaped, so the app did not start, a reset was a 500 and every monitor tick failed. Then the
    reset answered 503 "retry" for ever: nothing could replace the record, and workers kept
    whatever state they had read before it (a worker started since: closed). An admin reset now
    replaces it with a closed record every worker reads again."""
    redis_store.client.set(redis_store.key("v1"), raw)
    breaker = make_breaker(redis_store, Clock())
    breaker.sync("v1")  # keeps the last known state, as with a store that cannot be reached
    assert breaker.store_error is not None and "unreadable breaker record" in breaker.store_error
    assert breaker.route("v1") == MODEL
    assert not breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0)).generation  # cannot write
    record = breaker.reset("v1")
    assert record.state == CLOSED and record.reason == "reset by admin" and record.generation >= 1
    assert redis_store.read("v1") == record
    other = make_breaker(redis_store, Clock())
    assert other.sync("v1") == record and other.store_error is None
    assert other.evaluate("v1", lambda since: quality(10, 1.0, 0.0)).state == OPEN  # judged again


def test_a_database_record_of_an_unknown_state_is_replaced_by_a_reset(db: Database) -> None:
    """A row another version of the code wrote with a state this one does not know: every read
    failed, and so did the reset (503 "retry", for ever)."""
    from app.storage.breaker import BreakerRow

    store = DatabaseBreakerStore(db)
    with db.session() as session:
        row = BreakerRow(name="champion@v1", state="forced_open", since=1.0, reason="newer code",
                         model_version="v1", generation=4, evaluated_at=1.0, evaluation={})  # fmt: skip
        session.add(row)
    with pytest.raises(BreakerStoreError, match="unreadable"):
        store.read("v1")
    alerts: list[Alert] = []
    breaker = make_breaker(store, Clock(), alerts)
    record = breaker.reset("v1")
    assert (record.state, record.generation) == (CLOSED, 5)
    assert store.read("v1") == record and breaker.route("v1") == MODEL
    assert [a.kind for a in alerts] == ["breaker.reset"]


class MemoryStore:
    where = "memory"

    def __init__(self) -> None:
        self.records: dict[str | None, BreakerRecord] = {}

    def read(self, version: str | None) -> BreakerRecord:
        return self.records.get(version, BreakerRecord())

    def write(self, version: str | None, record: BreakerRecord, expected: int) -> BreakerRecord | None:
        if self.read(version).generation != expected:
            return None
        stored = record.evolve(generation=expected + 1)
        self.records[version] = stored
        return stored


def test_a_sync_never_shows_request_threads_an_open_breaker_as_closed() -> None:
    """_adopt pops the version's record and puts it back: a request thread routing in between
    finds no record, takes it for a fresh closed one and calls the tripped model."""
    store = MemoryStore()
    store.records["v1"] = BreakerRecord(state=OPEN, since=1.0, reason="bad", model_version="v1", generation=3)
    breaker = CircuitBreaker(store, BreakerPolicy(), clock=lambda: 10.0)
    breaker.sync("v1")
    assert breaker.route("v1") == FALLBACK
    stop = threading.Event()

    def monitor() -> None:  # the monitor thread's sync every monitor_sync_seconds, sped up
        while not stop.is_set():
            breaker.sync("v1")

    thread = threading.Thread(target=monitor)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        thread.start()
        leaked = sum(breaker.route("v1") == MODEL for _ in range(200_000))
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old)
    assert leaked == 0, f"{leaked} requests went to the tripped model"


@pytest.mark.parametrize("stored_state", [OPEN, CLOSED])
def test_a_reset_is_this_workers_view_even_when_the_store_counts_from_a_lower_generation(
    stored_state: str,
) -> None:
    """The store lost the record (Redis restarted/flushed, a database restored) and counts from 1
    again; this worker still caches generation 50, open. The reset's own read and write are the
    store's truth, but _adopt (no read_started any more: reset bypasses sync) keeps the higher
    cached generation: the reset answers "closed" while this worker goes on serving the fallback
    (until its next sync)."""
    store = MemoryStore()
    store.records["v1"] = BreakerRecord(
        state=OPEN, since=1.0, reason="bad", model_version="v1", generation=50
    )
    breaker = CircuitBreaker(store, BreakerPolicy(), clock=lambda: 10.0)
    breaker.sync("v1")
    store.records["v1"] = BreakerRecord(state=stored_state, since=5.0, model_version="v1", generation=1)
    assert breaker.reset("v1").state == CLOSED
    assert breaker.route("v1") == MODEL and breaker.status("v1")["state"] == CLOSED


def test_resets_of_other_versions_do_not_evict_the_served_versions_record() -> None:
    """reset() adopts every version it is asked about into this worker's 8-entry cache; 8 resets
    of other versions (a script closing what a rolling deploy tripped, or typos) between two
    syncs evict the served version's open record, and route() takes it for a fresh closed one:
    the tripped model serves until the next sync."""
    store = MemoryStore()
    store.records["v1"] = BreakerRecord(state=OPEN, since=1.0, reason="bad", model_version="v1", generation=3)
    breaker = CircuitBreaker(store, BreakerPolicy(), clock=lambda: 10.0)
    breaker.sync("v1")
    for i in range(CACHED_VERSIONS):
        breaker.reset(f"other-{i}")
    assert breaker.route("v1") == FALLBACK


def test_redis_the_record_written_before_the_change_stays_its_versions(local_redis_url: str) -> None:
    """With Redis there is no migration: the record an open breaker left at movierec:breaker:<name>
    (model_version v1) is not read as v1's, so instances of the new code serving the same v1 (a
    code-only rolling deploy) start closed and serve the tripped model. The database path carries
    it over (migration 0006)."""
    import redis

    client = redis.Redis.from_url(local_redis_url, socket_connect_timeout=1)
    name = f"legacy-{uuid.uuid4().hex[:8]}"
    legacy = REDIS_PREFIX + name
    client.set(
        legacy, BreakerRecord(state=OPEN, since=5.0, reason="bad", model_version="v1", generation=7).to_json()
    )
    try:
        store = RedisBreakerStore(client, name)
        breaker = CircuitBreaker(store, BreakerPolicy(), clock=lambda: 10.0)
        breaker.sync("v1")
        assert breaker.route("v1") == FALLBACK
        assert store.read("v2") == BreakerRecord()  # the old record was for v1 only
    finally:
        client.delete(legacy, store.key("v1"))


# --------------------------------------------------------------------------- fallback


def tiny_bundle(version: str, created_at: str, path: Path = Path(".")) -> LoadedBundle:
    """Three movies; every segment ranks [2, 0] except the first, which ranks [1, 2]."""
    n = len(segment_index())
    top = np.tile(np.array([2, 0], dtype=np.int32), (n, 1))
    top[0] = [1, 2]
    tables = Tables(
        segment_top=top,
        segment_scores=np.ones(top.shape, dtype=np.float32),
        user_ids=np.array([7], dtype=np.int64),
        user_top=np.array([[0, 1]], dtype=np.int32),  # user 7 rated movie 30
        user_scores=np.ones((1, 2), dtype=np.float32),
    )
    catalogue = pd.DataFrame({"movie_id": [10, 20, 30], "title": ["A (1990)", "B (1991)", "C (1992)"]})
    manifest = {"version": version, "created_at": created_at}
    return LoadedBundle(version, manifest, catalogue, tables, path)


def test_popularity_is_a_borda_count_over_the_segment_tables() -> None:
    bundle = tiny_bundle("v1", "2026-01-02")
    # movie C (position 2): 2 points x 440 segments + 1 (second in segment 0) = 881
    # movie A (position 0): 1 point x 440 = 440; movie B (position 1): 2 points once = 2
    assert popularity_order(bundle).tolist() == [2, 0, 1]
    fallback = Fallback(None, "popularity")
    items, version = fallback.recommend(bundle, RecommendQuery(2, 30, "M", "student"))
    assert version == "v1" and [i.title for i in items] == ["C (1992)", "A (1990)"]
    # a known user: only their own (unrated) candidates, in popularity order: A before B; never C
    items, _ = fallback.recommend(bundle, RecommendQuery(5, user_id=7))
    assert [i.title for i in items] == ["A (1990)", "B (1991)"]
    from app.errors import NotFound

    with pytest.raises(NotFound):  # the champion's answer for an unknown user without demographics
        fallback.recommend(bundle, RecommendQuery(5, user_id=99))


def test_the_fallback_leaves_out_movies_a_user_rated_since_the_model() -> None:
    """/api/users/<id>/recommendations passes the user's rated movies from their features; the
    fallback's lists (popularity, the previous champion's) must leave them out as the champion's do."""
    bundle = tiny_bundle("v1", "2026-01-02")
    fallback = Fallback(None, "popularity")
    items, _ = fallback.recommend(bundle, RecommendQuery(2, 30, "M", "student", exclude=frozenset({30})))
    assert [i.title for i in items] == ["A (1990)", "B (1991)"]
    items, _ = fallback.recommend(bundle, RecommendQuery(5, user_id=7, exclude=frozenset({10})))
    assert [i.title for i in items] == ["B (1991)"]
    previous = tiny_bundle("v0", "2026-01-01")
    assert [i.title for i in previous.recommend_segment(Segment.of(30, "M", "student"), 2, {30})] == [
        "A (1990)"
    ]
    assert [i.title for i in previous.recommend_user(7, 2, {10, 20})] == []


def test_previous_champion_is_the_newest_older_bundle_of_the_store(model_store: Path, tmp_path: Path) -> None:
    import json
    import shutil

    source = (model_store / "latest").resolve()
    store = tmp_path / "store"
    store.mkdir()
    for version, created in (("old", "2026-01-01T00:00:00+00:00"), ("older", "2025-01-01T00:00:00+00:00"),
                             ("newer", "2027-01-01T00:00:00+00:00")):  # fmt: skip
        target = store / version
        shutil.copytree(source, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest.update(version=version, created_at=created)
        (target / "manifest.json").write_text(json.dumps(manifest))
    current = tiny_bundle("current", "2026-06-01T00:00:00+00:00")
    fallback = Fallback(store, "previous")
    assert fallback.previous_bundle_dir(current) == store / "old"
    # named from the store's manifests, not loaded; a request does not load it: popularity until then
    assert fallback.describe(current) == {
        "fallback": "previous champion old",
        "fallback_loaded": False,
        "fallback_error": None,
    }
    assert fallback.loaded(current) is None
    assert fallback.recommend(current, RecommendQuery(3, 30, "M", "student"))[1] == "current"
    assert fallback.wanted(current)  # the monitor thread loads it at its next round
    previous = fallback.previous(current)
    assert previous is not None and not fallback.wanted(current)
    items, version = fallback.recommend(current, RecommendQuery(3, 30, "M", "student"))
    assert version == "old" and fallback.loaded(current) is previous
    assert items == previous.recommend_segment(Segment.of(30, "M", "student"), 3)
    assert fallback.describe(current) == {
        "fallback": "previous champion old",
        "fallback_loaded": True,
        "fallback_error": None,
    }
    # nothing older: popularity of the served bundle
    first = tiny_bundle("first", "2000-01-01T00:00:00+00:00")
    assert fallback.previous(first) is None
    assert fallback.describe(first) == {
        "fallback": "popularity from first",
        "fallback_loaded": True,
        "fallback_error": None,
    }


def test_a_previous_champion_that_failed_to_load_is_tried_again_after_a_back_off(
    model_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A previous champion that failed to load (a file of it unreadable for a while: a mount
    gone stale, a copy or a chmod under way) was remembered as "none" until the next reload:
    the breaker's fallback stayed on popularity for the rest of the version's life although the
    store was readable again. The monitor thread tries it again, not at each round (every
    ``monitor_sync_seconds``, while the breaker is open: a bundle read in each worker) but after
    RETRY_SECONDS, doubled at each failure up to RETRY_MAX_SECONDS; a request never loads it."""
    import json
    import shutil

    from app.monitoring.fallback import RETRY_MAX_SECONDS, RETRY_SECONDS

    store = tmp_path / "store"
    store.mkdir()
    shutil.copytree((model_store / "latest").resolve(), store / "old")
    manifest = json.loads((store / "old" / "manifest.json").read_text())
    manifest.update(version="old", created_at="2026-01-01T00:00:00+00:00")
    (store / "old" / "manifest.json").write_text(json.dumps(manifest))
    away = tmp_path / "catalogue.csv"
    (store / "old" / "catalogue.csv").rename(away)  # unreadable for now
    current = tiny_bundle("current", "2026-06-01T00:00:00+00:00")
    clock = Clock()
    fallback = Fallback(store, "previous", clock=clock)
    query = RecommendQuery(3, 30, "M", "student")

    def failures() -> int:
        return sum("cannot serve as fallback" in r.getMessage() for r in caplog.records)

    assert fallback.previous(current) is None and failures() == 1
    assert fallback.recommend(current, query)[1] == "current"  # popularity
    clock.now += RETRY_SECONDS - 1
    assert not fallback.wanted(current) and fallback.previous(current) is None
    assert failures() == 1, "tried again before its back-off"
    clock.now += 1
    assert fallback.wanted(current)  # the monitor thread loads it at its next round, breaker closed or not
    assert fallback.previous(current) is None and failures() == 2  # still unreadable: twice the wait
    clock.now += 2 * RETRY_SECONDS - 1
    assert fallback.previous(current) is None and failures() == 2
    away.rename(store / "old" / "catalogue.csv")  # readable again
    assert fallback.recommend(current, query)[1] == "current"  # a request still does not load it
    clock.now += 1
    previous = fallback.previous(current)
    assert previous is not None and previous.version == "old" and not fallback.wanted(current)
    assert fallback.recommend(current, query)[1] == "old"
    clock.now += 10 * RETRY_MAX_SECONDS
    assert fallback.previous(current) is previous  # loaded: kept, never read again
    assert fallback.describe(current)["fallback"] == "previous champion old"
    # the wait doubles up to RETRY_MAX_SECONDS, and each version starts from RETRY_SECONDS
    (store / "old" / "catalogue.csv").unlink()
    again = tiny_bundle("again", "2026-07-01T00:00:00+00:00")
    assert fallback.previous(again) is None
    tried, waits = failures(), []
    for _ in range(6):
        start = clock.now
        while failures() == tried + len(waits):
            assert clock.now - start < RETRY_MAX_SECONDS, "not tried again"
            clock.now += 1.0
            assert fallback.previous(again) is None
        waits.append(clock.now - start)
    assert waits == [min(RETRY_SECONDS * 2**n, RETRY_MAX_SECONDS) for n in range(6)]
    assert max(waits) == RETRY_MAX_SECONDS


def test_the_fallback_keeps_no_bundle_or_table_of_versions_it_no_longer_serves(
    model_store: Path, tmp_path: Path
) -> None:
    """The fallback kept the previous champion it loaded for each version a worker served, and
    that version's popularity order, for the life of the worker: every retraining and reload
    (GET /api/model loads the previous champion to name it) left one more bundle in memory."""
    import gc
    import json
    import shutil
    import weakref

    source = (model_store / "latest").resolve()
    store = tmp_path / "store"
    store.mkdir()
    for year in range(2020, 2025):
        target = store / f"b{year}"
        shutil.copytree(source, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest.update(version=f"b{year}", created_at=f"{year}-01-01T00:00:00+00:00")
        (target / "manifest.json").write_text(json.dumps(manifest))
    fallback = Fallback(store, "previous")
    loaded: list[weakref.ref[LoadedBundle]] = []
    for year in range(2020, 2025):  # each served version's previous champion is the year's bundle
        current = tiny_bundle(f"c{year}", f"{year}-06-01T00:00:00+00:00")
        fallback.recommend(current, RecommendQuery(2, 30, "M", "student"))
        fallback.popularity(current)
        previous = fallback.previous(current)
        assert previous is not None and previous.version == f"b{year}"
        loaded.append(weakref.ref(previous))
        del current, previous
    gc.collect()
    kept = [ref().version for ref in loaded if ref() is not None]  # type: ignore[union-attr]
    assert kept == ["b2023", "b2024"], kept
    assert len(fallback._popularity) <= 2


DAY = 86_400.0


def test_records_of_versions_nobody_serves_any_more_are_deleted(db: Database) -> None:
    """One record per model version, and every retraining serves a new version: the table grew
    by one row per version ever served, for ever. A record nothing has evaluated, tripped or
    reset for the retention period goes at a later write; the served versions' are kept, and so
    is a tripped one's (reads do not refresh a row: with online evaluation switched off, the
    served version's open state went, and it served again)."""
    from sqlalchemy import func, select

    from app.storage.breaker import RETENTION_SECONDS, BreakerRow

    assert RETENTION_SECONDS >= 7 * DAY  # a rollback a week later still finds its state
    clock = Clock()
    breaker = make_breaker(DatabaseBreakerStore(db), clock)
    other = DatabaseBreakerStore(db, "other")  # another breaker's records are not this one's
    other.write("v0", BreakerRecord(evaluated_at=clock.now), 0)
    assert breaker.evaluate("v1", lambda since: quality(10, 1.0, 0.0)).state == OPEN  # v1 tripped
    for n in range(2, 12):  # ten retrainings, one a day; each version is evaluated while served
        clock.now += DAY
        breaker.evaluate(f"v{n}", lambda since: quality(10, 4.0, 0.8))
    clock.now += RETENTION_SECONDS - 3 * DAY + 1  # v9, v10, v11 were served within the period
    breaker.evaluate("v11", lambda since: quality(10, 4.0, 0.8))

    def names() -> set[str]:
        with db.session() as session:
            return set(session.scalars(select(BreakerRow.name)))

    assert names() == {"champion@v1", "champion@v9", "champion@v10", "champion@v11", "other@v0"}
    assert DatabaseBreakerStore(db).read("v1").state == OPEN  # tripped: kept however idle
    assert DatabaseBreakerStore(db).read("v2") == BreakerRecord()  # as if never served: closed
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(BreakerRow)) == 5


def test_redis_records_expire_unless_read_or_written(redis_store: RedisBreakerStore) -> None:
    from app.storage.breaker import RETENTION_SECONDS

    client, key = redis_store.client, redis_store.key("v1")
    assert redis_store.write("v1", BreakerRecord(state=OPEN, model_version="v1"), 0) is not None
    assert 0 < client.ttl(key) <= RETENTION_SECONDS
    client.expire(key, 100)
    assert redis_store.read("v1").state == OPEN  # the served version is re-read every few seconds
    assert client.ttl(key) > RETENTION_SECONDS - 60


def test_a_redis_without_getex_still_reads_and_keeps_the_record(
    redis_store: RedisBreakerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GETEX is Redis 6.2's: an older server answers "unknown command", and every read failed
    (no worker saw another's trip; the admin reset answered 503). Such a server is read with GET
    and the key's expiry renewed with EXPIRE."""
    import redis

    from app.storage.breaker import RETENTION_SECONDS

    def getex(*args: object, **kwargs: object) -> None:
        raise redis.ResponseError("unknown command 'GETEX', with args beginning with: 'movierec:breaker:'")

    client, key = redis_store.client, redis_store.key("v1")
    assert redis_store.write("v1", BreakerRecord(state=OPEN, model_version="v1"), 0) is not None
    monkeypatch.setattr(client, "getex", getex)
    client.expire(key, 100)
    assert redis_store.read("v1").state == OPEN
    assert client.ttl(key) > RETENTION_SECONDS - 60
    assert redis_store.read("v2") == BreakerRecord()  # a version with no record yet
