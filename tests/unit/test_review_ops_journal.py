"""Review regressions of the journal follower: odd entries must neither kill nor fool it."""

from __future__ import annotations

import json

import pytest

from app.monitoring.journal import JournalFollower, parse_entry

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
