"""Operator review (deploy and monitor for real): what an email and a stopping monitor tell the operator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.monitoring.alerts import Alerter
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

