"""Review regressions of the journal follower: odd entries must neither kill nor fool it."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from app.monitoring.journal import JournalEntry, JournalFollower, parse_entry

pytestmark = pytest.mark.unit


def journal_line(message: object, cursor: str, priority: str = "6", **extra: object) -> bytes:
    doc = {
        "MESSAGE": message,
        "PRIORITY": priority,
        "__CURSOR": cursor,
        "__REALTIME_TIMESTAMP": "1767268800000000",
        "CONTAINER_NAME": "movierec",
        "CONTAINER_ID_FULL": "f" * 64,
        **extra,
    }
    return json.dumps(doc).encode() + b"\n"


def test_deeply_nested_json_message_does_not_kill_the_parser() -> None:
    entry = parse_entry({"MESSAGE": '{"a":' + "[" * 100_000, "PRIORITY": "3"})
    assert entry.level == "ERROR" and not entry.is_structured


def docker_chunks(line: str, size: int = 16 * 1024) -> list[bytes]:
    """What Docker's journald driver makes of a long line: 16 kB entries, all but the last partial."""
    data = line.encode()
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    out = []
    for n, piece in enumerate(pieces):
        last = n == len(pieces) - 1
        try:
            message: object = piece.decode()
        except UnicodeDecodeError:  # a multi-byte character cut in two: journalctl prints bytes
            message = list(piece)
        extra = {} if last else {"CONTAINER_PARTIAL_MESSAGE": "true"}
        out.append(journal_line(message, f"s=x;i={n}", **extra))
    return out


def test_a_long_json_error_line_split_by_docker_is_one_error_entry() -> None:
    exc = "Traceback (most recent call last):\n" + "  File 'x.py', line 1, in f — é\n" * 1200
    line = json.dumps(
        {
            "ts": "2026-01-01T12:00:00.000Z",
            "level": "ERROR",
            "logger": "app.db",
            "message": "query failed",
            "exc": exc,
        },
        ensure_ascii=False,
    )
    chunks = docker_chunks(line)
    assert len(chunks) > 2
    follower = JournalFollower({"CONTAINER_NAME": "movierec"})
    entries = [follower._parse_line(chunk) for chunk in chunks]
    assert entries[:-1] == [None] * (len(chunks) - 1)
    entry = entries[-1]
    assert entry is not None
    assert entry.level == "ERROR" and entry.message == "query failed" and entry.logger == "app.db"
    assert entry.fields is not None and entry.fields["exc"] == exc
    assert follower.cursor == f"s=x;i={len(chunks) - 1}"  # a restart resumes after the last chunk


def test_partial_chunks_of_two_streams_are_not_mixed() -> None:
    follower = JournalFollower({"CONTAINER_NAME": "movierec"})
    assert follower._parse_line(journal_line("out-", "c1", "6", CONTAINER_PARTIAL_MESSAGE="true")) is None
    assert follower._parse_line(journal_line("err-", "c2", "3", CONTAINER_PARTIAL_MESSAGE="true")) is None
    err = follower._parse_line(journal_line("end", "c3", "3"))
    out = follower._parse_line(journal_line("end", "c4", "6"))
    assert err is not None and err.message == "err-end"
    assert out is not None and out.message == "out-end"
    plain = follower._parse_line(journal_line("next", "c5", "6"))
    assert plain is not None and plain.message == "next"


def fake_journalctl(tmp_path: Path, lines: bytes = b"", *, exits: bool = False) -> str:
    """A journalctl stand-in that prints ``lines`` and then stays open, as ``--follow`` does (or
    ``exits``, as one that failed or was killed)."""
    (tmp_path / "lines").write_bytes(lines)
    script = tmp_path / "journalctl"
    then = "exit 1" if exits else "exec sleep 30"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'lines'}\n{then}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def follow_until(
    follower: JournalFollower, count: int, holding: list[bool] | None = None
) -> list[JournalEntry]:
    """The entries the follower hands over until ``count`` came (or 60 s passed), then stopped;
    ``holding`` gets the follower's ``holding_partial`` as each entry came."""
    got: list[JournalEntry] = []
    deadline = time.monotonic() + 60
    for entry in follower.follow(idle=0.1):
        if entry is not None:
            got.append(entry)
            if holding is not None:
                holding.append(follower.holding_partial)
        if len(got) >= count or time.monotonic() > deadline:
            follower.stop()
    return got


TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/app/app/api/__init__.py", line 120, in create_app',
    "    bundle = load_bundle(path)",
    '  File "/app/app/recommender/bundle.py", line 40, in read_manifest',
    '    with open(path / "manifest.json") as fh:',
    "         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    "FileNotFoundError: [Errno 2] No such file or directory: '/model/latest/manifest.json'",
]


def test_a_plain_traceback_docker_wrote_line_by_line_is_one_error_entry() -> None:
    """Docker's driver makes each line a stderr writes an entry of its own: a crash before JSON
    logging was up (uwsgi loading the app) became one ERROR alert per traceback line, the
    exception among them, and past 20 lines it was not in the email at all."""
    from app.monitoring.monitor import entry_to_alert

    follower = JournalFollower({"CONTAINER_NAME": "movierec"})
    entries = []
    for n, line in enumerate(TRACEBACK):
        entries.append(follower._parse_line(journal_line(line, f"s=x;i={n}", "3")))
        if n < len(TRACEBACK) - 1:
            assert follower.holding_partial
    assert entries[:-1] == [None] * (len(TRACEBACK) - 1) and not follower.holding_partial
    entry = entries[-1]
    assert entry is not None and entry.level == "ERROR" and entry.message == "\n".join(TRACEBACK)
    assert follower.cursor == f"s=x;i={len(TRACEBACK) - 1}"
    alert = entry_to_alert(entry, "movierec")
    assert alert.summary == TRACEBACK[-1]  # what the subject shows, and what identical crashes share
    assert alert.details["traceback"] == "\n".join(TRACEBACK)
    after = follower._parse_line(journal_line("unable to load app 0", "s=x;i=99", "3"))
    assert after is not None and after.message == "unable to load app 0"


def test_a_chained_traceback_and_other_streams_do_not_mix() -> None:
    follower = JournalFollower({"CONTAINER_NAME": "movierec"})
    chained = [*TRACEBACK[:3], "KeyError: 'x'", "", "During handling of the above exception, another "
               "exception occurred:", "", *TRACEBACK]  # fmt: skip
    got = []
    for n, line in enumerate(chained):
        got.append(follower._parse_line(journal_line(line, f"e{n}", "3")))
        if n == 1:  # a stdout line in the middle is its own entry
            out = follower._parse_line(journal_line("GET /health 200", "o1", "6"))
            assert out is not None and out.message == "GET /health 200"
    entries = [e for e in got if e is not None]
    assert entries[0].message == "\n".join([*TRACEBACK[:3], "KeyError: 'x'"])
    assert entries[-1].message == "\n".join(TRACEBACK)
    assert "\n".join(e.message for e in entries) == "\n".join(chained)
    assert all(e.level == "ERROR" for e in entries if e.message.startswith("Traceback"))


def test_a_traceback_whose_end_never_comes_is_handed_over_when_the_stream_goes_quiet(tmp_path) -> None:
    """A process killed while printing: its traceback must not be held for ever (no alert)."""
    lines = b"".join(journal_line(line, f"s=x;i={n}", "3") for n, line in enumerate(TRACEBACK[:3]))
    follower = JournalFollower(
        {"CONTAINER_NAME": "movierec"},
        journalctl=fake_journalctl(tmp_path, lines),
        refresh_after=None,
        traceback_quiet=0.5,
    )
    got = follow_until(follower, 1)
    assert [e.message for e in got] == ["\n".join(TRACEBACK[:3])] and got[0].level == "ERROR"
    assert not follower.holding_partial


def test_a_json_line_ends_a_held_traceback_and_is_its_own_entry(tmp_path) -> None:
    """A structured log line written on the stream while a plain traceback's frames were held
    (another thread logging before the exception line) was swallowed into the traceback's text:
    never parsed, never alerted on under its own level and message."""
    logged = json.dumps({"level": "ERROR", "logger": "app.db", "message": "database unreachable"})
    stream = [*TRACEBACK[:3], logged, TRACEBACK[-1]]
    lines = b"".join(journal_line(line, f"s=x;i={n}", "3") for n, line in enumerate(stream))
    follower = JournalFollower(
        {"CONTAINER_NAME": "movierec"},
        journalctl=fake_journalctl(tmp_path, lines),
        refresh_after=None,
        traceback_quiet=30,
    )
    holding: list[bool] = []
    got = follow_until(follower, 3, holding)
    assert [e.message for e in got] == ["\n".join(TRACEBACK[:3]), "database unreachable", TRACEBACK[-1]]
    assert got[0].level == "ERROR" and not got[0].is_structured
    assert got[1].is_structured and got[1].level == "ERROR" and got[1].logger == "app.db"
    assert got[1].cursor == "s=x;i=3" and got[0].cursor == "s=x;i=2"
    # While the traceback is handled the JSON line is still to come: the monitor must not save
    # a cursor past it yet.
    assert holding == [True, False, False]


def test_the_chunks_of_a_line_whose_end_never_comes_are_handed_over_when_the_stream_goes_quiet(
    tmp_path,
) -> None:
    """Docker's 16 kB chunks of a long line were held until the line's last chunk, which may never
    come: journald drops entries past its rate limit (an error storm of long lines), and a
    redeployed container logs under a new id. The follower then held them for ever, reported
    ``holding_partial`` for ever, and the monitor's saved cursor stayed before them for good:
    each restart alerted everything since again, and found the same chunks to hold."""
    line = json.dumps({"level": "ERROR", "logger": "app.db", "message": "query failed", "sql": "x" * 40_000})
    chunks = docker_chunks(line)[:-1]  # the last one was dropped
    redeployed = journal_line("started", "s=x;i=99", "6", CONTAINER_ID_FULL="e" * 64)
    follower = JournalFollower(
        {"CONTAINER_NAME": "movierec"},
        journalctl=fake_journalctl(tmp_path, b"".join(chunks) + redeployed),
        refresh_after=None,
        traceback_quiet=0.5,
    )
    got = follow_until(follower, 2)
    assert [e.message for e in got] == ["started", line[: 16 * 1024 * len(chunks)]]
    assert got[1].cursor == f"s=x;i={len(chunks) - 1}"
    assert not follower.holding_partial


def test_a_json_log_line_cut_short_keeps_the_level_it_states() -> None:
    """The chunks of a long line whose last chunk never came are handed over cut (see above): not
    JSON any more, an ERROR line on stdout fell back to its PRIORITY 6, INFO, and was never
    alerted on. The level our log lines state at their start is read from the cut line."""
    line = json.dumps(
        {"ts": "2026-01-01T12:00:00.000+00:00", "level": "ERROR", "logger": "app.db",
         "message": "query failed", "sql": "x" * 40_000},
        separators=(",", ":"),
    )  # fmt: skip
    cut = parse_entry({"MESSAGE": line[: 16 * 1024], "PRIORITY": "6"})
    assert cut.level == "ERROR" and not cut.is_structured
    spaced = json.dumps({"level": "warning", "message": "slow", "detail": "y" * 100})[:60]
    assert parse_entry({"MESSAGE": spaced, "PRIORITY": "6"}).level == "WARNING"
    # a level further in, or not ours, is not taken for the line's
    deep = '{"a":"' + "z" * 400 + '","level":"ERROR"'
    assert parse_entry({"MESSAGE": deep, "PRIORITY": "6"}).level == "INFO"
    assert parse_entry({"MESSAGE": '{"level":"BOGUS","message":"x', "PRIORITY": "6"}).level == "INFO"


def test_a_quiet_stream_s_refreshes_do_not_fill_the_monitor_s_log(tmp_path, caplog) -> None:
    """A journalctl silent for ``refresh_after`` is replaced, every 10 s on a quiet container, and
    each start was an INFO "starting journalctl" line: 8,640 a day in the monitor's own journal,
    burying what it has to say. The first start and a restart after journalctl exited are INFO; a
    refresh is DEBUG (with its count)."""
    import logging

    follower = JournalFollower(
        {"CONTAINER_NAME": "movierec"}, journalctl=fake_journalctl(tmp_path), refresh_after=0.2
    )
    with caplog.at_level(logging.DEBUG, logger="app.monitoring.journal"):
        for _ in follower.follow(idle=0.05):
            if follower.refreshes >= 3:
                follower.stop()
    starts = [r for r in caplog.records if r.getMessage() == "starting journalctl"]
    assert len(starts) >= 4
    assert [r.levelname for r in starts[:4]] == ["INFO", "DEBUG", "DEBUG", "DEBUG"]


def test_a_refresh_before_any_entry_replays_from_when_following_began(tmp_path, caplog) -> None:
    """Restarted or refreshed before any entry came, journalctl reads --since the time following
    began. That was the follower's creation, which monitor-docker.py now does before its SMTP
    log-in (and a password prompt): entries from before the following began were replayed."""
    import logging

    follower = JournalFollower(
        {"CONTAINER_NAME": "movierec"}, journalctl=fake_journalctl(tmp_path), refresh_after=0.2
    )
    time.sleep(1.2)  # the SMTP log-in, a prompt
    began = int(time.time())
    with caplog.at_level(logging.DEBUG, logger="app.monitoring.journal"):
        for _ in follower.follow(idle=0.05):
            if follower.refreshes >= 1:
                follower.stop()
    argv = [r.argv for r in caplog.records if r.getMessage() == "starting journalctl"][1]  # type: ignore[attr-defined]
    [since] = [a for a in argv if a.startswith("--since=@")]
    assert int(since.removeprefix("--since=@")) >= began


def _restart_backoffs(
    follower: JournalFollower, restarts: int, caplog: pytest.LogCaptureFixture
) -> list[float]:
    """The backoff of each of the follower's first ``restarts`` restarts of an exited journalctl."""
    import logging

    with caplog.at_level(logging.WARNING, logger="app.monitoring.journal"):
        for _ in follower.follow(idle=0.01):
            if follower.restarts >= restarts:
                follower.stop()
    said = [r for r in caplog.records if r.getMessage() == "journalctl exited; restarting"]
    return [r.backoff_s for r in said]  # type: ignore[attr-defined]


def test_a_journalctl_that_keeps_exiting_is_restarted_with_a_doubling_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md: journalctl is started again "with exponential backoff (0.5 s doubling
    to 30 s)"; back to the first step once a journalctl ran for ``stable_after`` or handed over
    an entry, so one exit after a long run waits 0.5 s, not the 30 s of a storm long past."""
    options: dict[str, Any] = {"backoff_initial": 0.01, "backoff_max": 0.04, "refresh_after": None}
    failing = fake_journalctl(tmp_path, exits=True)
    follower = JournalFollower(
        {"CONTAINER_NAME": "movierec"}, journalctl=failing, stable_after=3600, **options
    )
    assert _restart_backoffs(follower, 5, caplog) == [0.01, 0.02, 0.04, 0.04, 0.04]
    caplog.clear()
    follower = JournalFollower({"CONTAINER_NAME": "movierec"}, journalctl=failing, stable_after=0, **options)
    assert _restart_backoffs(follower, 3, caplog) == [0.01, 0.01, 0.01]  # each ran "long enough"
    caplog.clear()
    (tmp_path / "delivering").mkdir()
    delivering = fake_journalctl(tmp_path / "delivering", journal_line("started", "s=x;i=0"), exits=True)
    follower = JournalFollower(
        {"CONTAINER_NAME": "movierec"}, journalctl=delivering, stable_after=3600, **options
    )
    assert _restart_backoffs(follower, 3, caplog) == [0.01, 0.01, 0.01]  # each handed over an entry
