"""Review regressions of the alerter: an SMTP outage must delay alerts, not lose them."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.monitoring.alerts import AlertDeliveryError, Alerter, SmtpConnectionError, SmtpSink
from tests.unit.test_alerts import Clock, Recorder, err

pytestmark = pytest.mark.unit


def test_alerts_raised_during_a_long_smtp_outage_are_delivered_when_it_ends() -> None:
    clock = Clock()
    down = SmtpConnectionError("cannot reach SMTP server smtp:25: Connection refused")
    sink = Recorder([down] * 8)  # down for 8 attempts: about 25 minutes with these delays
    alerter = Alerter([sink], group_wait=0, retry_delay=30, max_attempts=3, clock=clock)
    alerter.raise_alert(err("database unreachable"))
    for _ in range(30):
        clock.advance(300)
        alerter.flush_due()
    assert sink.calls == 9
    assert [n.entries[0].summary for n in sink.sent] == ["database unreachable"]


def test_other_retryable_failures_still_give_up_after_max_attempts() -> None:
    clock = Clock()
    sink = Recorder([AlertDeliveryError("451 try later")] * 10)
    alerter = Alerter([sink], group_wait=0, retry_delay=1, max_attempts=3, clock=clock)
    alerter.raise_alert(err("x"))
    for _ in range(10):
        clock.advance(1000)
        alerter.flush_due()
    assert sink.calls == 3 and sink.sent == []


def test_queued_notifications_are_bounded_oldest_dropped() -> None:
    clock = Clock()
    sink = Recorder([SmtpConnectionError("down")] * 100)
    alerter = Alerter([sink], group_wait=0, max_queued=3, clock=clock)
    for i in range(5):
        alerter.raise_alert(err(f"e{i}", kind=f"k{i}"))
    assert [r.notification.kind for r in alerter._retries] == ["k2", "k3", "k4"]


def test_a_real_refused_connection_is_an_smtp_connection_error() -> None:
    """What the outage path keys on: SmtpSink maps a refused connection to SmtpConnectionError."""
    from tests.helpers import free_port

    sink = SmtpSink("127.0.0.1", free_port(), sender="a@x.test", recipients=["a@x.test"], timeout=2)
    with pytest.raises(SmtpConnectionError):
        sink.verify()


def test_non_ascii_password_is_a_clear_config_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.monitoring.monitor import EXIT_CONFIG, main
    from tests.integration.test_monitor_journald import USER, start_smtp

    secret = "pässwörd-9"
    password_file = tmp_path / "smtp-password"
    password_file.write_text(secret + "\n")
    password_file.chmod(0o600)
    server = start_smtp()  # a real server: the password must be refused before any login
    try:
        rc = main(["movierec", "127.0.0.1", USER, "--smtp-port", str(server.port),
                   "--password-file", str(password_file)])  # fmt: skip
    finally:
        server.controller.stop()
    assert rc == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "must be ASCII" in err and USER in err and secret not in err


def test_invalid_host_name_is_a_clear_delivery_error() -> None:
    sink = SmtpSink("bad..host", 25, sender="a@x.test", recipients=["a@x.test"], timeout=2)
    with pytest.raises(AlertDeliveryError, match="not a valid host name") as info:
        sink.verify()
    assert info.value.retryable is False


def test_an_unreachable_smtp_server_is_tried_once_per_round_not_once_per_waiting_email() -> None:
    """Each delivery to a server that does not answer waits out --smtp-timeout (10 s), inside the
    monitor's only loop: with a dozen notifications due together (kinds held through an outage),
    every round tried each in turn, two minutes in which no journal entry was read and SIGTERM
    was not heeded. After the first fails so, the others wait for the next round, undelivered."""
    clock = Clock()
    down = SmtpConnectionError("cannot reach SMTP server smtp:25: timed out")
    sink = Recorder([down] * 3)
    alerter = Alerter([sink], group_wait=10, retry_delay=30, clock=clock)
    for i in range(12):
        alerter.raise_alert(err(f"failure {i}", kind=f"kind{i}"))
    clock.advance(10)
    alerter.flush_due()
    assert sink.calls == 1
    assert alerter.backlog() == 12 and alerter.oldest_undelivered() == 1
    clock.advance(30)
    alerter.flush_due()  # still down: one try again
    assert sink.calls == 2 and alerter.backlog() == 12
    clock.advance(300)
    alerter.flush_due()  # down for the first try, then up: the rest wait for the next round
    clock.advance(300)
    alerter.flush_due()
    assert sorted(n.kind for n in sink.sent) == sorted(f"kind{i}" for i in range(12))
    assert alerter.backlog() == 0 and alerter.oldest_undelivered() is None
    assert sink.calls == 3 + 12
