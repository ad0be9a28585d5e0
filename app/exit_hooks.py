"""What a process runs when it stops gracefully: Python's ``atexit``, and uwsgi's hook in uwsgi.

uwsgi may end a worker without running Python's atexit handlers, but it always calls
``uwsgi.atexit`` (chained here, never replaced) on a graceful stop or recycle (SIGTERM under
uwsgi.ini). The write-behind request log flushes its rows here (app/services/request_log.py),
the feedback journal ships its scores (app/services/feedback_journal.py), both through
:func:`close_at_exit`, and the metrics tally writes its counts (app/monitoring/metrics.py).
Callbacks run in the order they were registered, may run twice (once from each hook) and must
be idempotent.
"""

from __future__ import annotations

import atexit
import logging
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
