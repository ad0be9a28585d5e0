"""Operator review (deploy and monitor for real): what an email and a stopping monitor tell the operator."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from app.monitoring.alerts import Alerter, SmtpConnectionError
from tests.unit.test_alerts import Clock, Recorder, err

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_the_email_footer_names_a_section_that_exists_in_operations_md() -> None:
    recorder = Recorder()
    alerter = Alerter([recorder], group_wait=0, clock=Clock())
    alerter.raise_alert(err("database timeout"))
    [notification] = recorder.sent
    match = re.search(r"docs/operations\.md \(section '([^']+)'\)", notification.body)
    assert match, notification.body
    headings = re.findall(r"^#+ (.+)$", (REPO / "docs" / "operations.md").read_text(), re.MULTILINE)
    assert match.group(1) in headings, f"{match.group(1)!r} is not a heading of docs/operations.md"


def test_stopping_with_the_smtp_server_down_says_the_alerts_were_not_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = SmtpConnectionError("cannot reach SMTP server smtp:25: Connection refused")
    sink = Recorder([down] * 5)
    alerter = Alerter([sink], group_wait=10, clock=Clock())
    alerter.raise_alert(err("database unreachable"))
    alerter.raise_alert(err("slow", kind="log.warning", severity="warning"))
    with caplog.at_level(logging.ERROR, logger="app.monitoring.alerts"):
        alerter.close()
    assert sink.sent == [] and sink.calls == 2
    [record] = [r for r in caplog.records if r.getMessage() == "alerts not delivered before stopping"]
    assert record.undelivered == 2
    assert sorted(record.kinds) == ["log.error", "log.warning"]
    # still counted as undelivered, so a monitor with --cursor-file resumes before their entries
    assert alerter.oldest_undelivered() == 1
