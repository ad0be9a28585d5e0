"""The alerting path: grouping, dedup, rate limiting, retries, sinks' contracts, password sources.

Time is a manual clock here so windows are exact; the SMTP sink against a real server is
tested in tests/integration/test_monitor_journald.py.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import time
from pathlib import Path

import pytest

from app.monitoring.alerts import (
    Alert,
    AlertDeliveryError,
    Alerter,
    LoggingSink,
    Notification,
    PasswordSourceError,
    Severity,
    SmtpSink,
    fingerprint_of,
    load_smtp_password,
)
from app.monitoring.logs import JsonFormatter

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A sink that keeps what it is given (the Alerter is what is under test)."""

    name = "recorder"

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.sent: list[Notification] = []
        self.failures = list(failures or [])
        self.calls = 0

    def send(self, notification: Notification) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(notification)


T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)


def err(
    summary: str, i: int = 0, kind: str = "log.error", severity: str = "error", **details: object
) -> Alert:
    return Alert(kind, severity, summary, details, at=T0 + dt.timedelta(seconds=i))


def make(**kwargs: object) -> tuple[Alerter, Recorder, Clock]:
    clock, sink = Clock(), Recorder()
    params: dict = {"group_wait": 10.0, "window": 300.0, "clock": clock}
    params.update(kwargs)
    return Alerter([sink], **params), sink, clock


def test_burst_of_identical_errors_becomes_one_notification_with_count() -> None:
    alerter, sink, clock = make()
    for i in range(500):
        alerter.raise_alert(err(f"upstream timeout after {100 + i} ms", i, request_id=f"r-{i}"))
    assert alerter.flush_due() == [] and sink.sent == []  # still inside group_wait
    clock.advance(10)
    [note] = alerter.flush_due()
    assert sink.sent == [note]
    assert note.count == 500 and len(note.entries) == 1
    entry = note.entries[0]
    assert entry.count == 500 and entry.summary == "upstream timeout after 100 ms"
    assert entry.details == {"request_id": "r-0"}
    assert (entry.first_at, entry.last_at) == (T0, T0 + dt.timedelta(seconds=499))
    assert "500 x log.error" in note.subject and "[500 x] upstream timeout after 100 ms" in note.body
    clock.advance(1000)
    assert alerter.flush_due() == [] and len(sink.sent) == 1  # nothing left behind


def test_distinct_messages_are_listed_most_frequent_first_and_capped() -> None:
    alerter, _sink, clock = make(max_entries=3)
    for i in range(5):
        alerter.raise_alert(err("db down", i))
    alerter.raise_alert(err("cache miss storm"))
    for name in ("a", "b", "c"):
        alerter.raise_alert(err(f"unique failure {name}"))
    clock.advance(10)
    [note] = alerter.flush_due()
    assert [e.summary for e in note.entries] == ["db down", "cache miss storm", "unique failure a"]
    assert note.count == 9 and note.omitted_distinct == 2 and note.omitted_count == 2
    assert "... and 2 more distinct entries (2 occurrences)" in note.body
    assert "Distinct:    5" in note.body


def test_rate_limit_window_sends_one_digest_per_kind() -> None:
    alerter, sink, clock = make(group_wait=5, window=60)
    alerter.raise_alert(err("first"))
    clock.advance(5)
    assert len(alerter.flush_due()) == 1
    clock.advance(1)
    for i in range(20):
        alerter.raise_alert(err("again", i))
        clock.advance(2)  # 40 s of steady errors
    assert alerter.flush_due() == []  # window since the first email not over yet
    clock.now = 1000 + 5 + 60  # last_sent + window
    [digest] = alerter.flush_due()
    assert digest.count == 20 and digest.entries[0].summary == "again"
    assert [n.count for n in sink.sent] == [1, 20]
    # After a quiet window a new alert only waits group_wait again.
    clock.advance(500)
    alerter.raise_alert(err("later"))
    clock.advance(4.9)
    assert alerter.flush_due() == []
    clock.advance(0.1)
    assert [n.entries[0].summary for n in alerter.flush_due()] == ["later"]


def test_kinds_are_limited_independently_and_severity_is_the_worst() -> None:
    alerter, _sink, clock = make()
    alerter.raise_alert(err("breaker opened for model scoring", kind="breaker.opened", severity="critical"))
    alerter.raise_alert(err("psi 0.31 above 0.2", kind="drift", severity="warning"))
    alerter.raise_alert(err("psi 0.35 above 0.2", kind="drift", severity="error"))
    assert alerter.pending() == {"breaker.opened": 1, "drift": 2}
    clock.advance(10)
    notes = {n.kind: n for n in alerter.flush_due()}
    assert notes["breaker.opened"].severity is Severity.CRITICAL
    assert (
        notes["drift"].severity is Severity.ERROR and notes["drift"].entries[0].count == 2
    )  # same fingerprint
    assert notes["breaker.opened"].subject.startswith("[movierec] CRITICAL: breaker.opened")


def test_group_wait_zero_sends_immediately() -> None:
    alerter, sink, _ = make(group_wait=0)
    alerter.raise_alert(err("now"))
    assert [n.entries[0].summary for n in sink.sent] == ["now"]


def test_close_flushes_pending() -> None:
    alerter, sink, _ = make()
    alerter.raise_alert(err("at shutdown"))
    assert sink.sent == []
    alerter.close()
    assert [n.count for n in sink.sent] == [1]


def test_failed_delivery_is_retried_with_backoff_then_dropped() -> None:
    clock = Clock()
    flaky = Recorder([AlertDeliveryError("451 try later"), AlertDeliveryError("451 again")])
    healthy = Recorder()
    alerter = Alerter([flaky, healthy], group_wait=0, retry_delay=30, max_attempts=3, clock=clock)
    alerter.raise_alert(err("x"))
    assert len(healthy.sent) == 1 and flaky.sent == [] and alerter.failed == 1
    clock.advance(29)
    alerter.flush_due()
    assert flaky.calls == 1
    clock.advance(1)
    alerter.flush_due()
    assert flaky.calls == 2 and alerter.failed == 2  # second failure, next retry after 60 s
    clock.advance(60)
    alerter.flush_due()
    assert flaky.calls == 3 and len(flaky.sent) == 1 and alerter.sent == 2


def test_non_retryable_failure_is_not_retried_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    broken = Recorder([AlertDeliveryError("535 auth failed", retryable=False)])
    alerter = Alerter([broken], group_wait=0, clock=clock)
    with caplog.at_level(logging.ERROR, logger="app.monitoring.alerts"):
        alerter.raise_alert(err("x"))
    clock.advance(10_000)
    alerter.flush_due()
    assert broken.calls == 1
    [record] = [r for r in caplog.records if r.getMessage() == "alert delivery failed"]
    assert record.will_retry is False and "535 auth failed" in record.error


def test_unexpected_sink_exception_is_contained() -> None:
    clock = Clock()
    broken = Recorder([RuntimeError("bug in sink")] * 5)
    alerter = Alerter([broken], group_wait=0, max_attempts=2, retry_delay=1, clock=clock)
    alerter.raise_alert(err("x"))
    clock.advance(1)
    alerter.flush_due()
    clock.advance(100)
    alerter.flush_due()
    assert broken.calls == 2 and alerter.failed == 2


def test_alert_contents_are_redacted_before_delivery() -> None:
    alerter, sink, _clock = make(group_wait=0)
    alerter.raise_alert(
        err("auth failed for Bearer abcdefghijklmnop", password="hunter2", headers={"Authorization": "x"})
    )
    [note] = sink.sent
    text = note.body + note.subject
    assert "abcdefghijklmnop" not in text and "hunter2" not in text
    assert note.entries[0].details["headers"] == {"Authorization": "[REDACTED]"}


def test_background_ticker_delivers_without_calls() -> None:
    sink = Recorder()
    alerter = Alerter([sink], group_wait=0.2, window=60)
    alerter.start(interval=0.05)
    try:
        alerter.raise_alert(err("async"))
        deadline = time.monotonic() + 60
        while not sink.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [n.entries[0].summary for n in sink.sent] == ["async"]
    finally:
        alerter.close()


def test_fingerprint_masks_numbers_ids_and_uuids() -> None:
    a = fingerprint_of("request 3f2a9c1e7b failed after 120 ms for 0b4f5a8e-1c2d-4e3f-9a8b-7c6d5e4f3a2b")
    b = fingerprint_of("request 99aa00bb11 failed after 87.5 ms for 11111111-2222-4333-8444-555555555555")
    assert a == b
    assert fingerprint_of("database down") != fingerprint_of("cache down")


def test_alert_validation() -> None:
    with pytest.raises(ValueError):
        Alert("", "error", "x")
    with pytest.raises(ValueError):
        Alert("k", "loud", "x")
    assert Alert("k", "warn", "x").severity is Severity.WARNING
    with pytest.raises(ValueError):
        Alerter([], max_entries=0)


def test_logging_sink_writes_a_json_line_the_monitor_can_route() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.alerts.sink")
    logger.handlers[:] = [handler]
    logger.propagate = False
    alerter = Alerter([LoggingSink(logger)], group_wait=0)
    alerter.raise_alert(
        Alert("breaker.opened", "error", "breaker opened: 5 failures in 30 s", {"model": "v3"})
    )
    doc = json.loads(stream.getvalue())
    assert doc["level"] == "ERROR" and doc["alert_kind"] == "breaker.opened" and doc["alert_count"] == 1
    assert doc["message"] == "breaker opened: 5 failures in 30 s"
    assert doc["alert_entries"][0]["model"] == "v3"


def test_smtp_sink_message_and_repr_hide_the_password() -> None:
    sink = SmtpSink(
        "smtp.example.test",
        587,
        sender="a@x.test",
        recipients=["b@x.test", "c@x.test"],
        username="a@x.test",
        password="pw-123456",
        security="starttls",
    )
    alerter, rec, _ = make(group_wait=0)
    alerter.raise_alert(err("line one\nline two"))
    msg = sink.build_message(rec.sent[0])
    assert "\n" not in msg["Subject"] and msg["To"] == "b@x.test, c@x.test"
    assert msg["X-Movierec-Alert-Count"] == "1"
    assert "pw-123456" not in repr(sink) and "pw-123456" not in msg.as_string()
    with pytest.raises(ValueError):
        SmtpSink("h", sender="a", recipients=["b"], security="tls")
    with pytest.raises(ValueError):
        SmtpSink("h", sender="a", recipients=[])


def test_load_password_sources_in_order(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    f.chmod(0o600)
    env = {"MONITOR_SMTP_PASSWORD": "from-env"}
    assert load_smtp_password(password="explicit", password_file=f, environ=env) == "explicit"
    assert load_smtp_password(password_file=f, environ=env) == "from-file"
    assert load_smtp_password(environ=env) == "from-env"
    assert load_smtp_password(environ={"MONITOR_SMTP_PASSWORD_FILE": str(f)}) == "from-file"
    assert load_smtp_password(environ={}) is None
    g = tmp_path / "crlf"
    g.write_text("p w \r\n")
    assert load_smtp_password(password_file=g, environ={}) == "p w "


def test_load_password_bad_sources_are_errors(tmp_path: Path) -> None:
    with pytest.raises(PasswordSourceError, match="cannot read"):
        load_smtp_password(password_file=tmp_path / "missing", environ={})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(PasswordSourceError, match="empty"):
        load_smtp_password(password_file=empty, environ={})
    with pytest.raises(PasswordSourceError):
        load_smtp_password(environ={"MONITOR_SMTP_PASSWORD_FILE": str(tmp_path / "nope")})


def test_a_world_readable_password_file_is_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md: --password-file wants mode 600, "a warning is logged if world-readable"."""
    f = tmp_path / "pw"
    f.write_text("s3cret-value\n")
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="app.monitoring.alerts"):
        assert load_smtp_password(password_file=f, environ={}) == "s3cret-value"
    assert [r.getMessage() for r in caplog.records] == ["SMTP password file is world-readable; chmod 600 it"]
    assert caplog.records[0].path == str(f) and "s3cret-value" not in caplog.text  # type: ignore[attr-defined]
    caplog.clear()
    f.chmod(0o640)  # readable by its group only: no warning
    with caplog.at_level(logging.WARNING, logger="app.monitoring.alerts"):
        assert load_smtp_password(environ={"MONITOR_SMTP_PASSWORD_FILE": str(f)}) == "s3cret-value"
    assert caplog.records == []


def test_a_long_traceback_keeps_its_last_lines_and_says_what_was_cut() -> None:
    """A traceback's exception is its last line: the body kept the first 40 lines of a detail
    and dropped the rest without a word, so a deep one (Flask plus SQLAlchemy frames, a chained
    exception) was emailed without the error it was about."""
    frames = [f'  File "/app/mod{i}.py", line {i}, in f{i}\n    f{i + 1}()' for i in range(60)]
    exc = "\n".join(["Traceback (most recent call last):", *frames, "OperationalError: connection refused"])
    alerter, sink, _clock = make(group_wait=0)
    alerter.raise_alert(err("scoring failed", exc=exc, sql="SELECT " + "x, " * 2000))
    body = sink.sent[0].body
    assert "Traceback (most recent call last):" in body
    assert "        OperationalError: connection refused\n" in body
    assert re.search(r"\.\.\. \d+ lines? not shown \.\.\.", body)
    assert len(body.splitlines()) < 60
    [sql] = [line for line in body.splitlines() if line.startswith("    sql: ")]
    assert len(sql) < 1100 and sql.endswith("...")  # a cut line says so too


def test_an_alert_kind_with_a_line_break_still_makes_an_email() -> None:
    """The monitor takes a line's ``alert_kind`` as the kind; one with a line break made the
    X-Movierec-Alert-Kind header raise ValueError, and the digest was tried three times, then lost."""
    sink = SmtpSink("smtp.example.test", sender="a@x.test", recipients=["b@x.test"])
    alerter, rec, _ = make(group_wait=0)
    alerter.raise_alert(err("breaker opened", kind="breaker.opened\r\nBcc: someone@x.test"))
    msg = sink.build_message(rec.sent[0])
    assert msg["X-Movierec-Alert-Kind"] == "breaker.opened Bcc: someone@x.test"
    assert msg["Bcc"] is None


def _letters(n: int) -> str:
    """``n`` as a word of letters g-z: a summary that differs in it is a distinct entry (digits and
    hex ids are masked by the fingerprint)."""
    word = ""
    while True:
        n, digit = divmod(n, 20)
        word += "ghijklmnopqrstuvwxyz"[digit]
        if n == 0:
            return word


def test_an_error_storm_of_distinct_messages_keeps_the_group_bounded_and_says_how_many() -> None:
    """Every distinct message past the listed ones was kept, in full (up to 500 characters), for
    as long as its group waited: at journald's rate limit (10,000 lines in 30 s) a window of
    distinct lines was tens of MB, per kind. The omitted ones are told apart up to a cap; past it
    the email still says how many more distinct ones there were (an estimate) and how often."""
    import tracemalloc

    from app.monitoring.alerts import MAX_OMITTED_DISTINCT

    alerter, sink, clock = make(max_entries=20)
    beyond = 15_000
    total = 20 + MAX_OMITTED_DISTINCT + beyond
    padding = "x" * 400  # a long message: what the fingerprint keeps is up to 500 characters

    def storm(first: int, last: int) -> None:
        for i in range(first, last):
            alerter.raise_alert(err(f"refused {_letters(i)} {padding}"))

    storm(0, 20 + MAX_OMITTED_DISTINCT)  # the listed ones and the cap, whatever it costs
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        storm(20 + MAX_OMITTED_DISTINCT, total)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000, f"{beyond} distinct messages past the cap grew the group by {grown} bytes"
    alerter.raise_alert(err(f"refused {_letters(20 + MAX_OMITTED_DISTINCT + 5)} {padding}"))  # seen again
    clock.advance(10)
    [note] = alerter.flush_due()
    assert note.count == total + 1 and len(note.entries) == 20
    assert note.omitted_distinct == MAX_OMITTED_DISTINCT and note.omitted_count == total + 1 - 20
    assert note.beyond_cap_count == beyond + 1
    assert abs(note.beyond_cap_distinct - beyond) < beyond * 0.03, note.beyond_cap_distinct
    body = note.body
    listed = f"... and {MAX_OMITTED_DISTINCT} more distinct entries ({total - 20 - beyond} occurrences)"
    assert f"{listed} not listed" in body
    said = re.search(r"and about ([\d,]+) more distinct entries past those \(([\d,]+) occurrences\)", body)
    assert said, body[-800:]
    assert int(said[1].replace(",", "")) == note.beyond_cap_distinct
    assert int(said[2].replace(",", "")) == beyond + 1
    distinct = re.search(r"Distinct:    about ([\d,]+)", body)
    told_apart = 20 + MAX_OMITTED_DISTINCT
    assert distinct and int(distinct[1].replace(",", "")) == told_apart + note.beyond_cap_distinct
    assert sink.sent == [note]


def test_a_few_distinct_messages_past_the_listed_ones_are_counted_exactly() -> None:
    alerter, _sink, clock = make(max_entries=2)
    for i in range(7):
        alerter.raise_alert(err(f"refused {_letters(i)}"))
        alerter.raise_alert(err(f"refused {_letters(i)}"))
    clock.advance(10)
    [note] = alerter.flush_due()
    assert note.omitted_distinct == 5 and note.omitted_count == 10 and note.beyond_cap_count == 0
    assert "Distinct:    7\n" in note.body and "about" not in note.body
