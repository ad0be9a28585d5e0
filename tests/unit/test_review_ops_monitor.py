"""Review regressions of the monitor: a restart must resume where the last run stopped."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.monitoring.alerts import Alerter, SmtpConnectionError
from app.monitoring.journal import JournalFollower
from app.monitoring.monitor import CursorFile, Monitor, build_parser
from tests.unit.test_alerts import Recorder

pytestmark = pytest.mark.unit

# A journalctl stand-in over a JSON-lines file: honours --after-cursor and --lines=0, follows.
FAKE_JOURNALCTL = r"""
import json, sys, time
journal = sys.argv[1]
after = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--after-cursor=")), None)
def entries():
    with open(journal) as f:
        return [json.loads(line) for line in f if line.strip()]
seen = len(entries())
if after is not None:
    cursors = [e["__CURSOR"] for e in entries()]
    seen = cursors.index(after) + 1 if after in cursors else 0
while True:
    current = entries()
    for e in current[seen:]:
        sys.stdout.write(json.dumps(e) + "\n")
    sys.stdout.flush()
    seen = len(current)
    time.sleep(0.05)
"""


def write_entry(journal: Path, n: int, level: str, message: str) -> None:
    line = json.dumps({"ts": "2026-01-01T12:00:00.000Z", "level": level, "logger": "app", "message": message})
    entry = {"MESSAGE": line, "PRIORITY": "6", "__CURSOR": f"s=ab;i={n:x}", "CONTAINER_NAME": "movierec",
             "__REALTIME_TIMESTAMP": "1767268800000000"}  # fmt: skip
    with journal.open("a") as f:
        f.write(json.dumps(entry) + "\n")


class FileJournalFollower(JournalFollower):
    """Runs the stand-in with the journal file as its first argument."""

    def __init__(self, journal: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = journal

    def command(self) -> list[str]:
        exe, *rest = super().command()
        return [exe, str(self.journal), *rest]


def run_monitor(tmp_path: Path, journal: Path, cursor_file: Path | None, until: int) -> Recorder:
    """One monitor process's life: start, handle ``until`` entries' worth of alerts, SIGTERM."""
    script = tmp_path / "journalctl"
    script.write_text(f"#!{sys.executable}\n{FAKE_JOURNALCTL}")
    script.chmod(0o755)
    cursors = CursorFile(cursor_file) if cursor_file else None
    sink = Recorder()
    follower = FileJournalFollower(
        journal,
        {"CONTAINER_NAME": "movierec"},
        journalctl=str(script),
        since_cursor=cursors.load() if cursors else None,
        refresh_after=None,
    )
    monitor = Monitor("movierec", follower, Alerter([sink], group_wait=0), idle=0.05, cursor_file=cursors)
    thread = threading.Thread(target=monitor.run)
    thread.start()
    deadline = time.monotonic() + 15
    while monitor.alerts_raised < until and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    monitor.stop()
    thread.join(10)
    return sink


def test_errors_written_while_the_monitor_was_down_are_alerted_after_a_restart(tmp_path: Path) -> None:
    journal, cursor_file = tmp_path / "journal.jsonl", tmp_path / "cursor"
    journal.write_text("")

    def writer() -> None:
        time.sleep(0.5)  # after the first monitor follows
        write_entry(journal, 1, "ERROR", "first failure")

    threading.Thread(target=writer).start()
    first = run_monitor(tmp_path, journal, cursor_file, until=1)
    assert [n.entries[0].summary for n in first.sent] == ["app: first failure"]
    assert cursor_file.read_text().strip() == "s=ab;i=1"

    write_entry(journal, 2, "ERROR", "while the monitor was down")  # e.g. during RestartSec
    second = run_monitor(tmp_path, journal, cursor_file, until=1)
    assert [n.entries[0].summary for n in second.sent] == ["app: while the monitor was down"]
    assert cursor_file.read_text().strip() == "s=ab;i=2"


def test_cursor_is_not_saved_past_an_undelivered_alert(tmp_path: Path) -> None:
    class Follower:
        cursor = "s=ab;i=5"
        holding_partial = False

    alerter = Alerter([Recorder([SmtpConnectionError("down")])], group_wait=0)
    cursors = CursorFile(tmp_path / "cursor")
    monitor = Monitor("movierec", Follower(), alerter, cursor_file=cursors)  # type: ignore[arg-type]
    from tests.unit.test_alerts import err

    alerter.raise_alert(err("lost?"))
    monitor.save_cursor()
    assert not (tmp_path / "cursor").exists()  # a restart replays the entry: the alert is not lost


def test_malformed_cursor_file_is_ignored_not_fed_to_journalctl(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    path.write_text("s=ab;i=")  # half-written by an older version, or edited by hand
    assert CursorFile(path).load() is None
    path.write_text("s=0a1b;i=2f;b=ff;m=1;t=5f;x=9\n")
    assert CursorFile(path).load() == "s=0a1b;i=2f;b=ff;m=1;t=5f;x=9"


def test_cursor_file_option() -> None:
    args = build_parser().parse_args(["movierec", "smtp", "a@x.test", "--cursor-file", "/var/lib/m/cursor"])
    assert args.cursor_file == "/var/lib/m/cursor"


def test_an_smtp_server_unreachable_at_start_is_a_temporary_failure_not_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # exit 2 tells systemd not to restart (RestartPreventExitStatus=2): a relay that came up a
    # minute after the host left the monitor off for good, and no alert was sent about it
    from app.monitoring.monitor import EXIT_CONFIG, EXIT_UNREACHABLE, main
    from tests.helpers import free_port

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # verify_sink's waits between tries
    password_file = tmp_path / "smtp-password"
    password_file.write_text("s3cret-pass\n")
    password_file.chmod(0o600)
    rc = main(["movierec", "127.0.0.1", "ops@example.com", "--smtp-port", str(free_port()),
               "--password-file", str(password_file), "--smtp-timeout", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == EXIT_UNREACHABLE != EXIT_CONFIG
    assert "cannot reach SMTP server" in err and "after 3 attempts" in err
    assert "s3cret-pass" not in err and "Traceback" not in err
