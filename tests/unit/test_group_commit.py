"""Group commit of scores: every caller returns after its own record is committed, never before."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from app.services.group_commit import GroupCommit, NotStoredError
from app.storage.db import DatabaseUnavailableError

pytestmark = pytest.mark.unit


class SlowStore:
    """A store whose commit takes a while, recording each batch it committed."""

    def __init__(self, delay: float = 0.05, bad: frozenset[int] = frozenset(), down: bool = False) -> None:
        self.delay, self.bad, self.down = delay, bad, down
        self.batches: list[list[int]] = []
        self.committed: set[int] = set()
        self.lock = threading.Lock()

    def write(self, records: Sequence[int]) -> None:
        time.sleep(self.delay)
        if self.down:
            raise DatabaseUnavailableError("connection refused")
        if self.bad & set(records):
            raise ValueError(f"bad record in {list(records)}")
        with self.lock:
            self.batches.append(list(records))
            self.committed.update(records)


def _save_concurrently(group: GroupCommit[int], store: SlowStore, n: int) -> dict[int, BaseException | bool]:
    outcome: dict[int, BaseException | bool] = {}
    start = threading.Barrier(n)

    def post(record: int) -> None:
        start.wait()
        try:
            group.save(record)
        except BaseException as exc:
            outcome[record] = exc
        else:
            outcome[record] = record in store.committed  # committed before the caller returned?

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads), "a caller never returned"
    return outcome


def test_a_lone_record_is_written_at_once_in_its_own_batch() -> None:
    store = SlowStore(delay=0)
    group = GroupCommit(store.write, shared_failure=DatabaseUnavailableError)
    group.save(7)
    assert store.batches == [[7]] and group.batches == 1


def test_concurrent_records_share_commits_and_each_caller_returns_after_its_own() -> None:
    store = SlowStore()
    group = GroupCommit(store.write, shared_failure=DatabaseUnavailableError, max_batch=64)
    outcome = _save_concurrently(group, store, 12)
    assert outcome == dict.fromkeys(range(12), True)
    assert sorted(r for batch in store.batches for r in batch) == list(range(12))
    assert len(store.batches) < 12, "concurrent records should share transactions"
    assert group.records == 12


def test_batches_never_exceed_the_limit() -> None:
    store = SlowStore()
    outcome = _save_concurrently(
        GroupCommit(store.write, shared_failure=DatabaseUnavailableError, max_batch=3), store, 10
    )
    assert all(outcome.values()) and max(len(batch) for batch in store.batches) <= 3


def test_a_bad_record_fails_only_its_own_caller() -> None:
    store = SlowStore(delay=0.02, bad=frozenset({5}))
    outcome = _save_concurrently(GroupCommit(store.write, shared_failure=DatabaseUnavailableError), store, 8)
    assert isinstance(outcome.pop(5), ValueError)
    assert outcome == dict.fromkeys(outcome, True) and len(outcome) == 7
    assert 5 not in store.committed


def test_an_unreachable_database_fails_every_caller_of_the_batch() -> None:
    store = SlowStore(down=True)
    outcome = _save_concurrently(GroupCommit(store.write, shared_failure=DatabaseUnavailableError), store, 6)
    assert all(isinstance(error, DatabaseUnavailableError) for error in outcome.values())
    assert not store.committed


def test_an_interrupted_writer_acknowledges_nothing() -> None:
    class Interrupted(BaseException):
        pass

    release, writing = threading.Event(), threading.Event()

    def write(records: Sequence[int]) -> None:
        writing.set()
        release.wait(60)
        raise Interrupted

    group: GroupCommit[int] = GroupCommit(write, shared_failure=DatabaseUnavailableError)
    errors: dict[int, BaseException] = {}

    def post(record: int) -> None:
        try:
            group.save(record)
        except BaseException as exc:
            errors[record] = exc

    leader = threading.Thread(target=post, args=(1,))
    leader.start()
    assert writing.wait(60), "the first caller never began its write"
    followers = [threading.Thread(target=post, args=(i,)) for i in (2, 3)]
    for thread in followers:
        thread.start()
    deadline = time.monotonic() + 60  # both queued behind the write in progress
    while len(group._queue) < 2:
        assert time.monotonic() < deadline, "the other callers never queued behind the write"
        time.sleep(0.01)
    release.set()
    for thread in (leader, *followers):
        thread.join(60)
    assert isinstance(errors[1], Interrupted)
    assert set(errors) == {1, 2, 3}  # the followers' batch was interrupted too, or never written
    assert all(isinstance(errors[i], NotStoredError | Interrupted) for i in (2, 3))
