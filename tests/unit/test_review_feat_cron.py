"""Weekday names in a crontab field mean what cron means, mixed with numbers or in a range
through Sunday: 'sun-thu' (Sunday to Thursday) was refused, 'mon,3' ran on Thursdays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.pipeline.schedule import cron_trigger

pytestmark = pytest.mark.unit


def _weekdays(expression: str) -> set[str]:
    trigger, previous, now = cron_trigger(expression), None, datetime(2026, 12, 6, tzinfo=UTC)
    days: set[str] = set()
    for _ in range(21):
        now = trigger.get_next_fire_time(previous, now)
        days.add(now.strftime("%a"))
        previous, now = now, now + timedelta(seconds=1)
    return days


@pytest.mark.parametrize(
    ("expression", "days"),
    [
        ("0 3 * * sun-thu", {"Sun", "Mon", "Tue", "Wed", "Thu"}),
        ("0 3 * * SUN-TUE", {"Sun", "Mon", "Tue"}),
        ("0 3 * * mon,3", {"Mon", "Wed"}),
        ("0 3 * * mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("0 3 * * sat,sun", {"Sat", "Sun"}),
    ],
)
def test_weekday_names_mean_what_cron_means(expression: str, days: set[str]) -> None:
    assert _weekdays(expression) == days
