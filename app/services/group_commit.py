"""Group commit of scores: concurrent ``/api/recommend/score`` calls of a worker share one durable write.

A score is acknowledged only once it is on stable storage: synced to the feedback journal
(app/services/feedback_journal.py, API.md "Durability"). A sync per score would make every
score pay for its own; under load the threads of a worker post scores at the same moment, and
here they are written together:

* the first caller to find nobody writing becomes the writer (the *leader*) and writes every
  score queued so far (its own first) in one write and one sync;
* callers arriving meanwhile queue up and wait; when the leader is done it wakes them with
  their outcome, and hands the writer's turn to the oldest caller still queued, which writes
  the next batch (no thread of its own, nothing to start or stop across forks);
* a batch that fails for a reason other than one every record shares (the database or the
  journal being unavailable: ``shared_failure``) is written again record by record, so one bad
  record fails only its own request.

A lone score pays nothing extra: its caller is the leader and writes at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

R = TypeVar("R")


class NotStoredError(RuntimeError):
    """The batch holding a record ended without its commit (the writer was interrupted)."""


class _Ticket(Generic[R]):
    """A caller's record, and the lock it sleeps on until the writer tells it to go on.

    ``_wake`` is held from the start: the caller blocks acquiring it and a writer releases it
    exactly once, when the record's batch ended or when the caller's turn to write came. A bare
    lock rather than a ``threading.Event``: the event's ``wait`` and ``set`` run Python code
    (its condition's bookkeeping) under the GIL for every score; ``acquire`` and ``release`` are
    one C call each.
    """

    __slots__ = ("_wake", "done", "error", "record")

    def __init__(self, record: R) -> None:
        self.record = record
        self._wake = threading.Lock()
        self._wake.acquire()
        self.done = False
        # stays set unless the record is known to be committed: nothing is acknowledged by default
        self.error: BaseException | None = NotStoredError("the score was not stored")

    def wait(self) -> None:
        self._wake.acquire()

    def wake(self) -> None:
        self._wake.release()


class GroupCommit(Generic[R]):
    """Write records through ``write(batch)`` (one durable write per batch), returning once it is done."""

    def __init__(
        self,
        write: Callable[[Sequence[R]], None],
        *,
        shared_failure: type[BaseException],
        max_batch: int = 64,
    ) -> None:
        self.write = write
        self.max_batch = max_batch
        self.shared_failure = shared_failure
        self._queue: list[_Ticket[R]] = []
        self._writing = False
        self._lock = threading.Lock()
        self.batches = 0
        self.records = 0

    def save(self, record: R) -> None:
        """Store ``record``; returns when the write holding it is done, raises what the write raised."""
        ticket = _Ticket(record)
        with self._lock:
            lead = not self._writing
            if lead:
                self._writing = True
            else:
                self._queue.append(ticket)
        if not lead:
            ticket.wait()
        if not ticket.done:  # the writer, first or handed the turn
            self._lead(ticket)
        if ticket.error is not None:
            raise ticket.error

    def _lead(self, own: _Ticket[R]) -> None:
        """Write ``own`` record with those queued so far; then wake them and pass the turn on.

        Every ticket but the writer's own is woken exactly once: with its batch, or as the next
        writer (it is taken off the queue then, and leads a batch of its own).
        """
        with self._lock:
            batch = [own, *self._queue[: self.max_batch - 1]]
            del self._queue[: len(batch) - 1]
        try:
            self._write_batch(batch)
        finally:
            with self._lock:
                successor = self._queue.pop(0) if self._queue else None
                if successor is None:
                    self._writing = False
                self.batches += 1
                self.records += len(batch)
            for ticket in batch:
                ticket.done = True
            for ticket in batch[1:]:
                ticket.wake()
            if successor is not None:
                successor.wake()  # not done: it writes the next batch

    def _write_batch(self, batch: list[_Ticket[R]]) -> None:
        try:
            self.write([ticket.record for ticket in batch])
        except self.shared_failure as exc:
            for ticket in batch:
                ticket.error = exc
        except Exception as exc:  # noqa: BLE001 - handed to the callers, who raise it
            if len(batch) == 1:
                batch[0].error = exc
                return
            for ticket in batch:  # find the culprit: each record alone
                try:
                    self.write([ticket.record])
                except Exception as single:  # noqa: BLE001 - handed to its caller
                    ticket.error = single
                else:
                    ticket.error = None
        else:
            for ticket in batch:
                ticket.error = None
