"""Review regressions of the monitor: a restart must resume where the last run stopped."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.monitoring.alerts import Alerter, SmtpConnectionError
from app.monitoring.journal import JournalFollower, parse_entry
from app.monitoring.monitor import CursorFile, Monitor, build_parser
from tests.helpers import record_fsyncs
from tests.unit.test_alerts import Recorder

pytestmark = pytest.mark.unit

# A journalctl stand-in over a JSON-lines file: honours --after-cursor and --lines=0, follows.
# Once it knows where it starts it creates the journal's ".following" file: from then on an
# entry written is one it hands over.
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
open(journal + ".following", "w").close()
while True:
    current = entries()
    for e in current[seen:]:
        sys.stdout.write(json.dumps(e) + "\n")
    sys.stdout.flush()
    seen = len(current)
    time.sleep(0.05)
"""


def journal_cursor(n: int) -> str:
    """The cursor journald gives its ``n``-th entry (CursorFile.load takes no other form)."""
    return f"s={'ab' * 16};i={n:x};b={'cd' * 16};m={n:x};t={n:x};x={n:x}"


def write_entry(journal: Path, n: int, level: str, message: str) -> None:
    line = json.dumps({"ts": "2026-01-01T12:00:00.000Z", "level": level, "logger": "app", "message": message})
    entry = {"MESSAGE": line, "PRIORITY": "6", "__CURSOR": journal_cursor(n), "CONTAINER_NAME": "movierec",
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
    deadline = time.monotonic() + 60
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
        # after the first monitor follows (its journalctl starts at the end of the journal): a
        # fixed wait was too short where starting the stand-in took longer
        following, deadline = tmp_path / "journal.jsonl.following", time.monotonic() + 60
        while not following.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        write_entry(journal, 1, "ERROR", "first failure")

    threading.Thread(target=writer).start()
    first = run_monitor(tmp_path, journal, cursor_file, until=1)
    assert [n.entries[0].summary for n in first.sent] == ["app: first failure"]
    assert cursor_file.read_text().strip() == journal_cursor(1)

    write_entry(journal, 2, "ERROR", "while the monitor was down")  # e.g. during RestartSec
    second = run_monitor(tmp_path, journal, cursor_file, until=1)
    assert [n.entries[0].summary for n in second.sent] == ["app: while the monitor was down"]
    assert cursor_file.read_text().strip() == journal_cursor(2)


class ScriptedFollower:
    """Hands over journal entries (cursor, level, message) one per ``follow`` step, like JournalFollower."""

    holding_partial = False

    def __init__(self, cursor: str | None, entries: list[tuple[str, str, str]]) -> None:
        self.cursor = cursor
        self.entries = entries
        self.steps: list[Callable[[], None]] = []  # run after each entry is handled

    def follow(self, idle: float = 1.0) -> Any:
        for n, (cursor, level, message) in enumerate(self.entries):
            self.cursor = cursor
            line = json.dumps(
                {"ts": "2026-01-01T12:00:00.000Z", "level": level, "logger": "app", "message": message}
            )
            raw = {"MESSAGE": line, "PRIORITY": "6", "__CURSOR": cursor, "CONTAINER_NAME": "movierec",
                   "__REALTIME_TIMESTAMP": "1767268800000000"}  # fmt: skip
            yield parse_entry(raw)
            if n < len(self.steps):
                self.steps[n]()

    def stop(self) -> None:
        pass


def test_cursor_is_not_saved_past_an_undelivered_alert(tmp_path: Path) -> None:
    alerter = Alerter([Recorder([SmtpConnectionError("down")] * 10)], group_wait=0, retry_delay=60)
    cursors = CursorFile(tmp_path / "cursor")
    cursors.save("s=ab;i=4")
    follower = ScriptedFollower("s=ab;i=4", [("s=ab;i=5", "ERROR", "lost?"), ("s=ab;i=6", "INFO", "later")])
    monitor = Monitor("movierec", follower, alerter, cursor_file=cursors)  # type: ignore[arg-type]
    monitor.run()
    # a restart replays the entry: the alert is not lost
    assert alerter.backlog() == 1 and cursors.path.read_text().strip() == "s=ab;i=4"


class CountingFollower(JournalFollower):
    """A JournalFollower that counts the steps (entries and idle ticks) the monitor handled."""

    handled = 0

    def follow(self, idle: float = 1.0) -> Any:
        for entry in super().follow(idle):
            yield entry
            self.handled += 1


def test_the_cursor_is_not_saved_past_lines_the_follower_still_holds(tmp_path: Path) -> None:
    """The frames of a plain traceback are held until its exception line comes (one alert for
    the whole traceback): the follower's cursor is then past lines no alert has been raised for.
    A save there, and a restart resumed after them: the crash was never alerted. The saved
    position stays before the held lines, so a restart reads them again."""
    from tests.unit.test_review_ops_journal import TRACEBACK, fake_journalctl, journal_line

    stream = [("s=x;i=0", "started", "6")] + [
        (f"s=x;i={n}", line, "3") for n, line in enumerate(TRACEBACK[:3], 1)
    ]
    lines = b"".join(journal_line(message, cursor, priority) for cursor, message, priority in stream)
    follower = CountingFollower(
        {"CONTAINER_NAME": "movierec"},
        journalctl=fake_journalctl(tmp_path, lines),
        refresh_after=None,
        traceback_quiet=3600,
    )
    cursors = CursorFile(tmp_path / "cursor")
    monitor = Monitor(
        "movierec", follower, Alerter([Recorder()], group_wait=0), idle=0.05, cursor_file=cursors
    )
    thread = threading.Thread(target=monitor.run)
    thread.start()
    deadline = time.monotonic() + 60
    while follower.cursor != "s=x;i=3" and time.monotonic() < deadline:  # every line read
        time.sleep(0.01)
    read_at = follower.handled
    while follower.handled < read_at + 2 and time.monotonic() < deadline:  # idle ticks handled since
        time.sleep(0.01)
    monitor.stop()  # its last save, the traceback still held
    thread.join(10)
    assert follower.cursor == "s=x;i=3" and follower.holding_partial and monitor.entries_seen == 1
    assert follower.handled >= read_at + 2
    assert cursors.path.read_text().strip() == "s=x;i=0"


def test_the_cursor_moves_on_while_alerts_wait_for_their_window(tmp_path: Path) -> None:
    """One notification per kind and window: under a steady stream of errors and warnings some
    alert was nearly always waiting, and the cursor was saved only with none waiting. A restart
    then went back to wherever it had last been saved (hours, days) and alerted it all again.
    Now each save names the entry just before the oldest alert still waiting."""
    now = [0.0]
    alerter = Alerter([Recorder()], group_wait=0, window=300, clock=lambda: now[0])
    cursors = CursorFile(tmp_path / "cursor")
    levels = ["ERROR", "WARNING"] * 4  # two kinds, one entry every 100 s
    follower = ScriptedFollower(
        None, [(f"s=ab;i={n}", level, f"failure {n}") for n, level in enumerate(levels, 1)]
    )
    monitor = Monitor("movierec", follower, alerter, notify_warning=True, cursor_file=cursors)  # type: ignore[arg-type]
    seen: list[tuple[str | None, int]] = []

    def step() -> None:  # run() saves about once a second; here after every entry
        now[0] += 100
        monitor.save_cursor()
        seen.append((cursors.saved, alerter.backlog()))

    follower.steps = [step] * len(levels)
    monitor.run()
    saved = [cursor[len("s=ab;i=") :] if cursor else None for cursor, _ in seen]
    backlog = [n for _, n in seen]
    # 3: error 3 waits for the error window (after 1); 4: 3 sent, warning 4 waits (after 2); 5: 4 sent,
    # error 5 waits; 6: 5 and 6 wait; 7: 5 and 7 sent, 6 waits; 8: 6 and 8 sent
    assert saved == ["1", "2", "2", "3", "4", "4", "5", "8"]
    assert backlog == [0, 0, 1, 1, 1, 2, 1, 0]
    assert cursors.path.read_text().strip() == "s=ab;i=8"


def test_malformed_cursor_file_is_ignored_not_fed_to_journalctl(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    # half-written by an older version, cut short, or edited by hand: journalctl refuses each
    for text in ("s=ab;i=", "s=4f0d;i=2a", journal_cursor(7)[:-40], "", journal_cursor(7) + ";q=1"):
        path.write_text(text)
        assert CursorFile(path).load() is None, text
    path.write_text(journal_cursor(0x2F) + "\n")
    assert CursorFile(path).load() == journal_cursor(0x2F)


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


def test_without_a_cursor_file_handled_alerts_are_not_kept_for_ever() -> None:
    """The default (no --cursor-file): every alert raised was remembered for the cursor's sake and
    never forgotten, so a steady error stream grew the monitor's memory without bound."""
    alerter = Alerter([Recorder()], group_wait=0, window=0)
    follower = ScriptedFollower(None, [(f"s=ab;i={n:x}", "ERROR", f"failure {n}") for n in range(1, 501)])
    monitor = Monitor("movierec", follower, alerter)  # type: ignore[arg-type]
    monitor.run()
    assert monitor.alerts_raised == 500 and alerter.oldest_undelivered() is None
    assert len(monitor._undelivered) == 0


class ClockedFollower:
    """Yields (time, cursor or None) steps, moving a fake clock: ``None`` is an idle tick."""

    holding_partial = False

    def __init__(self, steps: list[tuple[float, str | None]]) -> None:
        self.cursor: str | None = None
        self.steps = steps
        self.now = 0.0

    def follow(self, idle: float = 1.0) -> Any:
        for at, cursor in self.steps:
            self.now = at
            if cursor is None:
                yield None
                continue
            self.cursor = cursor
            line = json.dumps(
                {"ts": "2026-01-01T12:00:00.000Z", "level": "INFO", "logger": "app", "message": "m"}
            )
            yield parse_entry(
                {"MESSAGE": line, "PRIORITY": "6", "__CURSOR": cursor, "CONTAINER_NAME": "movierec"}
            )

    def stop(self) -> None:
        pass


def test_cursor_saves_are_at_least_a_second_apart(tmp_path: Path) -> None:
    """Documented as saved "at most once a second", but every idle tick saved as well: an entry's
    save at t=1.0 and an idle tick's at t=1.2 wrote the file twice within 0.2 s."""
    steps: list[tuple[float, str | None]] = [
        (0.2, "s=ab;i=1"), (1.0, "s=ab;i=2"), (1.2, None), (1.5, "s=ab;i=3"), (1.7, None),
        (2.0, None), (2.1, "s=ab;i=4"), (2.6, None), (3.05, None), (3.6, None),
    ]  # fmt: skip
    follower = ClockedFollower(steps)
    written: list[float] = []

    class Recording(CursorFile):
        def save(self, cursor: str | None) -> None:
            if cursor is not None and cursor != self.saved:
                written.append(follower.now)
            super().save(cursor)

    cursors = Recording(tmp_path / "cursor")
    monitor = Monitor(
        "movierec", follower, Alerter([Recorder()], group_wait=0), cursor_file=cursors,  # type: ignore[arg-type]
        clock=lambda: follower.now,
    )  # fmt: skip
    monitor.run()
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(written)), written
    # the idle ticks still save a quiet stream's last position, once a second is up
    assert written == [1.0, 2.0, 3.05] and cursors.path.read_text().strip() == "s=ab;i=4"


def test_the_cursor_file_is_synced_before_it_replaces_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was written and renamed without fsync: a crash could leave an empty cursor file."""
    synced = record_fsyncs(monkeypatch)
    CursorFile(tmp_path / "cursor").save("s=ab;i=1")
    assert (tmp_path / "cursor").read_text().strip() == "s=ab;i=1"
    assert synced and synced[-1] == str(tmp_path)  # the file, then its directory's rename
    assert any(path.startswith(str(tmp_path / ".cursor")) for path in synced[:-1])


STOP_WHILE_LOCKED = r"""
import signal, sys
sys.path.insert(0, sys.argv[1])
from app.monitoring.journal import JournalFollower

follower = JournalFollower({"CONTAINER_NAME": "movierec"})
signal.signal(signal.SIGTERM, lambda *_: follower.stop())
with follower._proc_lock:  # as follow() does around each journalctl start, and at its end
    signal.raise_signal(signal.SIGTERM)  # the handler runs here, in this (the main) thread
    follower._proc = None
print("stopped" if follower.stopped else "running")
"""


def test_a_stop_signal_while_follow_holds_its_lock_does_not_hang() -> None:
    """monitor-docker.py calls stop() from its SIGTERM/SIGINT handler, which Python runs in the
    main thread — the thread running follow(). stop() took the same non-reentrant lock, so a
    signal landing while follow() held it waited for itself for ever."""
    import subprocess

    root = str(Path(__file__).resolve().parents[2])
    try:
        done = subprocess.run(
            [sys.executable, "-c", STOP_WHILE_LOCKED, root], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        pytest.fail("stop() from a signal handler deadlocked on _proc_lock")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stopped"


def test_the_monitor_still_imports_without_the_service_dependencies() -> None:
    """It runs on the Docker host; the durable-file helpers it now shares import SQLAlchemy lazily."""
    import subprocess

    root = str(Path(__file__).resolve().parents[2])
    code = "import sys; sys.modules['sqlalchemy'] = None; import app.monitoring.monitor"
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--smtp-timeout", "0"),  # socket: "Non-blocking socket (timeout=0) is not supported" traceback
        ("--smtp-timeout", "-1"),
        ("--smtp-port", "99999"),  # was "cannot reach SMTP server", exit 75: restarted for ever
        ("--smtp-port", "0"),
        ("--group-wait", "nan"),  # was accepted
        ("--window", "inf"),
    ],
)
def test_a_number_out_of_range_is_a_configuration_error_naming_the_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    from app.monitoring.monitor import EXIT_CONFIG, main

    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # verify_sink's waits, if it got that far
    rc = main(
        ["movierec", "127.0.0.1", "ops@example.com", "--no-auth", "--journalctl", "true", option, value]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_CONFIG, err
    assert option in err and "Traceback" not in err


def test_a_cursor_file_that_stops_being_writable_is_said_once_not_every_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    cursors = CursorFile(directory / "cursor")
    cursors.save("s=ab;i=1")
    directory.rename(tmp_path / "gone")
    directory.write_text("")  # a file where the directory was: every save fails (as a full disk would)
    with caplog.at_level("WARNING", logger="app.monitoring.monitor"):
        for n in range(2, 12):
            cursors.save(f"s=ab;i={n:x}")
    assert [r.getMessage() for r in caplog.records] == ["cannot save the journal cursor"]
    directory.unlink()
    directory.mkdir()
    caplog.clear()
    with caplog.at_level("INFO", logger="app.monitoring.monitor"):
        cursors.save("s=ab;i=c")
    assert (directory / "cursor").read_text().strip() == "s=ab;i=c"
    assert [r.getMessage() for r in caplog.records] == ["the journal cursor is saved again"]


class StoppableFollower(ScriptedFollower):
    """A ScriptedFollower whose ``stop`` ends ``follow`` before its next entry, as JournalFollower's does."""

    stopped = False

    def follow(self, idle: float = 1.0) -> Any:
        for entry in super().follow(idle):
            if self.stopped:
                return
            yield entry

    def stop(self) -> None:
        self.stopped = True


REFUSED = "SMTP server smtp:587 rejected the login for user 'ops@example.com': 535 5.7.8 bad credentials"


def _refusing_monitor(
    tmp_path: Path, **alerter_options: Any
) -> tuple[Monitor, Alerter, Recorder, CursorFile]:
    """A monitor whose SMTP sink refuses every login, over a scripted journal of an ERROR, a
    CRITICAL and an INFO entry; its Alerter groups nothing unless ``alerter_options`` say so."""
    from app.monitoring.alerts import SmtpAuthError

    sink = Recorder([SmtpAuthError(REFUSED)] * 10)
    # retry_delay 0: a notification queued for a retry would be tried again at once
    alerter = Alerter([sink], **{"group_wait": 0, "window": 0, "retry_delay": 0, **alerter_options})
    cursors = CursorFile(tmp_path / "cursor")
    cursors.save("s=ab;i=4")
    follower = StoppableFollower(
        "s=ab;i=4",
        [("s=ab;i=5", "ERROR", "database down"), ("s=ab;i=6", "CRITICAL", "disk full"),
         ("s=ab;i=7", "INFO", "x")],
    )  # fmt: skip
    monitor = Monitor("movierec", follower, alerter, cursor_file=cursors)  # type: ignore[arg-type]
    return monitor, alerter, sink, cursors


def _main_with_a_refusing_monitor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make main() run the monitor of :func:`_refusing_monitor`: its SMTP sink (the start-up
    check passes, each login while running is refused) and its scripted journal."""
    from app.monitoring import monitor as module

    monitor, _, sink, _ = _refusing_monitor(tmp_path)
    monkeypatch.setattr(module, "verify_sink", lambda sink: None)
    monkeypatch.setattr(module, "build_sink", lambda args, password: sink)
    monkeypatch.setattr(module, "check_journal", lambda follower, container: False)
    monkeypatch.setattr(module, "JournalFollower", lambda *args, **kwargs: monitor.follower)
    sink.where, sink.security, sink.recipients = "smtp:587", "starttls", ["ops@example.com"]  # type: ignore[attr-defined]


def test_a_login_refused_while_running_stops_the_monitor_and_keeps_its_alerts(tmp_path: Path) -> None:
    """The SMTP password changed (rotated, revoked) after the start-up check: every alert was
    dropped after one refused login, the cursor moved past its entry, and the monitor ran on,
    alive to systemd, mailing nothing. It stops now, its alerts undelivered: the cursor stays
    before them, so the restart with the password fixed sends them."""
    monitor, alerter, sink, cursors = _refusing_monitor(tmp_path)
    monitor.run()
    assert monitor.entries_seen == 1
    assert sink.calls == 1  # not tried again (a server locks an account after a few refused logins)
    assert alerter.login_refused == REFUSED
    assert alerter.oldest_undelivered() == 1
    assert cursors.path.read_text().strip() == "s=ab;i=4"


def test_a_login_refused_while_running_is_not_tried_again_for_the_alerts_still_waiting(
    tmp_path: Path,
) -> None:
    """Two kinds waiting (an ERROR, then a CRITICAL 5 s later): the first's login is refused and
    the monitor stops, and its last flush, sending what waits, logged in again for the second
    (each a refused login more, which a server counts towards locking the account). What waits
    is held now, like the refused notification, for the restart with the password fixed."""
    now = [0.0]
    monitor, alerter, sink, cursors = _refusing_monitor(tmp_path, group_wait=10, clock=lambda: now[0])
    monitor.follower.steps = [lambda: now.__setitem__(0, 5.0), lambda: now.__setitem__(0, 10.5)]  # type: ignore[attr-defined]
    monitor.run()
    assert monitor.entries_seen == 3 and alerter.login_refused == REFUSED
    assert sink.calls == 1 and sink.sent == []
    assert alerter.backlog() == 2 and alerter.oldest_undelivered() == 1
    assert cursors.path.read_text().strip() == "s=ab;i=4"


def test_a_login_refused_while_running_is_exit_2_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.monitoring import monitor as module

    _main_with_a_refusing_monitor(tmp_path, monkeypatch)
    rc = module.main(["movierec", "smtp", "ops@example.com", "--no-auth", "--group-wait", "0",
                      "--cursor-file", str(tmp_path / "cursor")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == module.EXIT_CONFIG
    assert f"monitor-docker: error: {REFUSED}" in err and "Traceback" not in err


def test_print_to_an_output_that_went_away_loses_no_alert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--print to a pipe whose reader is gone (`| tee` killed, an SSH session without a terminal
    dropped) or a closed terminal (EIO): the entry's echo raised before its alert was raised, so
    that alert was lost (and the cursor saved past its entry), and the monitor ended with a
    traceback. The alert is raised first now, and an output that is gone stops the echo, said
    once in the monitor's own log, not the monitoring."""
    reader, writer = os.pipe()
    os.close(reader)
    out = os.fdopen(writer, "w")
    sink = Recorder()
    cursors = CursorFile(tmp_path / "cursor")
    follower = ScriptedFollower(
        "s=ab;i=4",
        [("s=ab;i=5", "ERROR", "database down"), ("s=ab;i=6", "CRITICAL", "disk full"),
         ("s=ab;i=7", "INFO", "x")],
    )  # fmt: skip
    alerter = Alerter([sink], group_wait=0, window=0)
    monitor = Monitor(
        "movierec",
        follower,
        alerter,
        print_entries=True,
        out=out,
        cursor_file=cursors,  # type: ignore[arg-type]
    )
    try:
        with caplog.at_level("WARNING", logger="app.monitoring.monitor"):
            monitor.run()
    finally:
        with contextlib.suppress(OSError):
            out.close()
    assert monitor.entries_seen == 3
    assert sorted(n.kind for n in sink.sent) == ["log.critical", "log.error"]
    assert cursors.path.read_text().strip() == "s=ab;i=7"
    said = [r for r in caplog.records if "--print" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def test_a_cursor_file_that_can_never_be_saved_is_exit_2_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cursor-file in a directory that does not exist (a unit without its StateDirectory=, a
    typo): every save failed, said once in the monitor's own log, and the monitor ran on without
    the persistence it was asked for: its next restart began at the end of the journal, and the
    entries written meanwhile were never looked at. It is a configuration error at start now."""
    from app.monitoring import monitor as module

    path = tmp_path / "missing-dir" / "cursor"
    rc = module.main(["movierec", "127.0.0.1", "ops@example.com", "--no-auth", "--cursor-file", str(path)])
    err = capsys.readouterr().err
    assert rc == module.EXIT_CONFIG
    assert f"monitor-docker: error: cannot save the cursor file {path}" in err and "Traceback" not in err
    assert "does not exist" in err


def test_an_error_storm_while_smtp_is_down_holds_one_position_per_waiting_group(tmp_path: Path) -> None:
    """With --cursor-file the monitor kept, for every alert raised, the journal position before
    it until the alert was handled: an error storm while the SMTP server is down (one network
    outage can cause both) grew that list by one per error line for as long as the outage
    lasted, a few hundred bytes each (a million lines, hundreds of MB). Only a waiting group's
    first alert can be the oldest undelivered one, whose position a save names: the others go."""
    now = [0.0]
    alerter = Alerter([Recorder([SmtpConnectionError("down")] * 10_000)], group_wait=0, window=300,
                      retry_delay=60, clock=lambda: now[0])  # fmt: skip
    cursors = CursorFile(tmp_path / "cursor")
    cursors.save("s=ab;i=1")
    entries = [(f"s=ab;i={n:x}", "ERROR", f"database unreachable (attempt {n})") for n in range(2, 3002)]
    follower = ScriptedFollower("s=ab;i=1", entries)
    follower.steps = [lambda: now.__setitem__(0, now[0] + 0.01)] * len(entries)  # 100 lines a second
    monitor = Monitor("movierec", follower, alerter, cursor_file=cursors, clock=lambda: now[0])  # type: ignore[arg-type]
    held = []
    original = monitor.save_cursor

    def save_cursor() -> None:
        original()
        held.append(len(monitor._undelivered))

    monitor.save_cursor = save_cursor  # type: ignore[method-assign]
    monitor.run()
    assert monitor.alerts_raised == 3000
    assert cursors.path.read_text().strip() == "s=ab;i=1"  # before the first, still undelivered
    assert len(held) > 20 and max(held) <= 200, held[-5:]  # a second of lines at most, not all
    assert held[-1] <= 2, held[-5:]


def test_main_gives_back_the_signal_handlers_it_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() set SIGTERM, SIGINT and SIGHUP to stop its monitor and left them so when it returned:
    whoever called it in-process (the test suite) had a Ctrl-C, a CI runner's SIGTERM and a hang-up
    each call stop() of a monitor long gone, and so ignored. It sets back what it found."""
    import signal

    from app.monitoring import monitor as module

    _main_with_a_refusing_monitor(tmp_path, monkeypatch)
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = {signum: signal.getsignal(signum) for signum in stops}
    try:
        module.main(["movierec", "smtp", "ops@example.com", "--no-auth", "--group-wait", "0"])
        after = {signum: signal.getsignal(signum) for signum in stops}
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    assert after == before


class ScriptedVerify:
    """A sink whose start-up checks fail as scripted, one error per try."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)

    def verify(self) -> None:
        if self.errors:
            raise self.errors.pop(0)


def test_a_client_certificate_refused_at_every_start_up_try_is_a_configuration_error() -> None:
    """A server that requires a TLS client certificate ends every try the same way; at start that
    was "unreachable" (exit 75, restarted every 10 s for ever). Refused so at each try, it is a
    configuration error (exit 2); once among other failures, the server may have gone away for
    another reason, and it is still "try again later"."""
    from app.monitoring.alerts import SmtpClientCertificateRequired
    from app.monitoring.monitor import ConfigError, Unreachable, verify_sink

    refused = SmtpClientCertificateRequired("SMTP server smtp:465 asked for a TLS client certificate ...")
    with pytest.raises(ConfigError, match=r"client certificate.*at each of 3 attempts"):
        verify_sink(ScriptedVerify(refused, refused, refused), delay=0)  # type: ignore[arg-type]
    dropped = SmtpConnectionError("SMTP server smtp:465 closed the connection during the TLS handshake")
    with pytest.raises(Unreachable, match="after 3 attempts"):
        verify_sink(ScriptedVerify(refused, refused, dropped), delay=0)  # type: ignore[arg-type]
    with pytest.raises(Unreachable):
        verify_sink(ScriptedVerify(dropped, refused, refused), delay=0)  # type: ignore[arg-type]
    verify_sink(ScriptedVerify(refused, refused), delay=0)  # type: ignore[arg-type]  # the third try worked
