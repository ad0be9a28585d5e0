"""app/storage/db.py StatementDeadlines: a statement past its deadline has its socket shut down.

Real sockets (a socketpair), no database: the watcher's own logic. The end-to-end case (a hung
PostgreSQL behind a relay) is tests/integration/test_storage_network.py.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from app.storage.db import StatementDeadlines

pytestmark = pytest.mark.unit


def _connection(sock: socket.socket) -> SimpleNamespace:
    """What the watcher reads of a psycopg connection: its socket's number."""
    return SimpleNamespace(pgconn=SimpleNamespace(socket=sock.fileno()))


def _shut_within(peer: socket.socket, seconds: float) -> bool:
    """True when the other end sees the connection end (EOF) within ``seconds``."""
    peer.settimeout(seconds)
    try:
        return peer.recv(1) == b""
    except TimeoutError:
        return False


def test_a_shorter_deadline_armed_after_a_longer_one_is_cut_on_time() -> None:
    """The watcher sleeps until the nearest deadline and is woken only for an earlier one: a
    statement with a shorter deadline than those already armed must not wait for theirs."""
    deadlines = StatementDeadlines()
    long_side, long_peer = socket.socketpair()
    short_side, short_peer = socket.socketpair()
    with long_side, long_peer, short_side, short_peer:
        deadlines.arm(1, _connection(long_side), 30.0)
        time.sleep(0.05)  # the watcher now sleeps toward the 30-s deadline
        started = time.monotonic()
        deadlines.arm(2, _connection(short_side), 0.2)
        assert _shut_within(short_peer, 3.0)
        assert time.monotonic() - started < 2.0
        assert not _shut_within(long_peer, 0.2)  # the other statement still has its time
        deadlines.disarm(1)


def test_a_statement_answered_in_time_is_left_alone_and_later_ones_still_cut() -> None:
    deadlines = StatementDeadlines()
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    with first, first_peer, second, second_peer:
        with deadlines.bounded(_connection(first), 0.2):
            pass  # answered at once
        time.sleep(0.4)
        first.sendall(b"x")  # still open: nothing cut it
        assert first_peer.recv(1) == b"x"
        deadlines.arm(3, _connection(second), 0.2)  # later than the wake-up it had planned
        assert _shut_within(second_peer, 3.0)
