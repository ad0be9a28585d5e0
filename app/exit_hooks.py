"""What a process runs when it stops gracefully: Python's ``atexit``, and uwsgi's hook in uwsgi.

uwsgi may end a worker without running Python's atexit handlers, but it always calls
``uwsgi.atexit`` (chained here, never replaced) on a graceful stop or recycle (SIGTERM under
uwsgi.ini). The write-behind request log flushes its rows here (app/services/request_log.py),
the feedback journal ships its scores (app/services/feedback_journal.py), both through
:func:`close_at_exit`, and the metrics tally writes its counts (app/monitoring/metrics.py).
Callbacks run in the order they were registered, may run twice (once from each hook) and must
be idempotent. The resources of :func:`close_at_exit` share one budget, :data:`EXIT_SECONDS`.

And what a forked child runs first (:func:`reset_after_fork`): a fork copies every lock, but
not the threads that held them, so a lock another thread held at that moment stays held in the
child for ever. Objects whose locks, threads or files must be the child's own reset them there.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

_CALLBACKS: list[Callable[[], None]] = []
_LOCK = threading.Lock()
_INSTALLED = False


EXIT_SECONDS = 10.0
"""How long the resources given to :func:`close_at_exit` may take to close, in all, per process.

Each had 10 s of its own: with the database down, the request log's final flush retried for
10 s before spilling its rows, then the feedback journal's for another 10 s, 20 s of the 30 s
a worker has to stop (uwsgi.ini ``worker-reload-mercy``, docker-compose.yml
``stop_grace_period``, app/deploy.py), and anything else slow got the worker killed before the
rows were spilled. Now they close one after the other, each with what is left of this budget:
the request log first (its rows live in memory only; created first, app/__init__.py), then the
journal, whose scores are on disk already and simply stay in their segments when no time is
left (replayed at the next start).
"""


class Closable(Protocol):
    def close(self, timeout: float = ...) -> None: ...


_TO_CLOSE: list[weakref.ref[Closable]] = []
_DEADLINE: tuple[int, float] | None = None  # (pid, monotonic time): when this process's budget ends
_IN_CHILD: list[weakref.WeakMethod[Callable[[], None]]] = []
_FORK_HOOK_INSTALLED = False


def at_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` when this process stops gracefully (registering it again is a no-op)."""
    global _INSTALLED
    with _LOCK:
        if callback not in _CALLBACKS:
            _CALLBACKS.append(callback)
        if _INSTALLED:
            return
        _INSTALLED = True
    atexit.register(run_exit_callbacks)
    try:
        import uwsgi  # type: ignore[import-not-found]
    except ImportError:
        return
    previous = getattr(uwsgi, "atexit", None)

    def _uwsgi_atexit() -> None:
        run_exit_callbacks()
        if callable(previous):
            previous()

    uwsgi.atexit = _uwsgi_atexit


def run_exit_callbacks() -> None:
    """Run every registered callback; one that fails is logged and the next still runs."""
    with _LOCK:
        callbacks = list(_CALLBACKS)
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("exit callback failed", extra={"callback": getattr(callback, "__qualname__", "?")})


def close_at_exit(resource: Closable) -> None:
    """Call ``resource.close()`` when this process stops gracefully, if it is still alive then.

    Held by a weak reference: registering keeps nothing alive. Resources close in the order
    they were registered, each given what is left of :data:`EXIT_SECONDS` as its ``timeout``
    (register first what has most to lose); one that fails is logged and the next still closes.
    """
    with _LOCK:
        _TO_CLOSE[:] = [ref for ref in _TO_CLOSE if ref() is not None]
        _TO_CLOSE.append(weakref.ref(resource))
    at_exit(close_registered)


def close_registered() -> None:
    """Close every live resource given to :func:`close_at_exit` (an exit callback), within one budget.

    The budget is the process's, not the call's: the second run (uwsgi's hook, then Python's
    ``atexit``) gets only what the first left.
    """
    global _DEADLINE
    with _LOCK:
        resources = [resource for resource in (ref() for ref in _TO_CLOSE) if resource is not None]
        if _DEADLINE is None or _DEADLINE[0] != os.getpid():  # a forked child's budget is its own
            _DEADLINE = (os.getpid(), time.monotonic() + EXIT_SECONDS)
        deadline = _DEADLINE[1]
    for resource in resources:
        try:
            resource.close(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:
            log.exception("closing at exit failed", extra={"resource": type(resource).__name__})


def reset_after_fork(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in every child this process forks, while its object is alive.

    Held by a weak reference, like :func:`close_at_exit`; registering it again is a no-op. Methods
    run in the order they were registered; one that fails is logged and the next still runs.
    """
    global _FORK_HOOK_INSTALLED
    reference = weakref.WeakMethod(method)
    with _LOCK:
        _IN_CHILD[:] = [ref for ref in _IN_CHILD if ref() is not None]
        if reference not in _IN_CHILD:
            _IN_CHILD.append(reference)
        if _FORK_HOOK_INSTALLED:
            return
        _FORK_HOOK_INSTALLED = True
    os.register_at_fork(after_in_child=_reset_in_child)


def _reset_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # this module's own, too: a thread of the parent may have held it
    for method in [ref() for ref in list(_IN_CHILD)]:
        if method is None:
            continue
        try:
            method()
        except Exception:
            log.exception("reset after fork failed", extra={"method": getattr(method, "__qualname__", "?")})
