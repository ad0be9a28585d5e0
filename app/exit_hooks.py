"""What a process runs when it stops gracefully: Python's ``atexit``, and uwsgi's hook in uwsgi.

uwsgi may end a worker without running Python's atexit handlers, but it always calls
``uwsgi.atexit`` (chained here, never replaced) on a graceful stop or recycle (SIGTERM under
uwsgi.ini). The write-behind request log flushes its rows here (app/services/request_log.py),
the feedback journal ships its scores (app/services/feedback_journal.py), both through
:func:`close_at_exit`, and the metrics tally writes its counts (app/monitoring/metrics.py).
Callbacks run in the order they were registered, may run twice (once from each hook) and must
be idempotent.

And what a forked child runs first (:func:`reset_after_fork`): a fork copies every lock, but
not the threads that held them, so a lock another thread held at that moment stays held in the
child for ever. Objects whose locks, threads or files must be the child's own reset them there.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

_CALLBACKS: list[Callable[[], None]] = []
_LOCK = threading.Lock()
_INSTALLED = False


class Closable(Protocol):
    def close(self) -> None: ...


_TO_CLOSE: list[weakref.ref[Closable]] = []
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
    they were registered; one that fails is logged and the next still closes.
    """
    with _LOCK:
        _TO_CLOSE[:] = [ref for ref in _TO_CLOSE if ref() is not None]
        _TO_CLOSE.append(weakref.ref(resource))
    at_exit(close_registered)


def close_registered() -> None:
    """Close every live resource given to :func:`close_at_exit` (an exit callback)."""
    with _LOCK:
        resources = [resource for resource in (ref() for ref in _TO_CLOSE) if resource is not None]
    for resource in resources:
        try:
            resource.close()
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
