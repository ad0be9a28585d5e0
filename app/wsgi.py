"""WSGI entry point for uwsgi: ``module = app.wsgi:application``.

With ``lazy-apps`` (uwsgi.ini) each worker imports this after the fork and creates its own app;
the postfork hook below still disposes any database pool a worker could inherit.

A stop that comes while a worker loads its app: uwsgi installs a worker's own signal handlers
(SIGHUP: stop gracefully) only once its app has loaded; until then the worker still has the
master's. The master stops its workers with SIGHUP (SIGTERM: ``gracefully_kill_them_all``,
uwsgi.ini; SIGHUP: a reload), and in a worker still loading, the master's own SIGHUP handler ran
instead: it killed the HTTP router and signalled every worker itself, and the worker then loaded
its app and waited for requests for ever (in epoll_wait; worker-reload-mercy did not end it
either: 70 s with a mercy of 15 s). The master waited for it for ever and the port stayed bound
until Docker's SIGKILL: a SIGTERM during any worker's start or recycle (max-requests,
reload-on-rss: a few seconds each) hung the stop (tests/integration/test_serving_uwsgi.py).
So a worker's first act here is to take SIGHUP itself, and to stop once its app has loaded if
one came, the way uwsgi stops an idle worker: the exit hooks, then exit code 17 (uwsgi's
"reload"; the master respawns the worker unless it is stopping). Python's handler runs only in
the main thread, between bytecodes, so the signal is read from a wakeup pipe by a thread of its
own: it is seen from the moment it comes until uwsgi's handler replaces this one, which then
takes every later SIGHUP.

Ctrl-C (SIGINT to the terminal's whole process group, or from the master's brutal stop) while a
worker loads its app: Python's default handler raised KeyboardInterrupt inside the import, uwsgi
printed it, "no app loaded. GAME OVER", "OOPS ! failed loading app", and need-app ended the
server with status 22 (``make serve-prod``: ``Error 22``). Once loaded, uwsgi's own handler ends
the worker at once (exit code 30) and the server exits 0. So until then SIGINT ends the loading
worker the same way, from whichever comes first: Python's handler (a signal that came before the
wakeup pipe was set) or the thread (the main thread busy in C code). Nothing is lost: the worker
has served nothing yet, and what its start replays (spilled rows, journal segments) stays on disk
until written.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

_UWSGI_RELOAD_CODE = 17  # what uwsgi's graceful stop of an idle worker exits with
_UWSGI_END_CODE = 30  # what uwsgi's brutal stop (SIGINT) of a loaded worker exits with
_LOADED = threading.Event()


def _take_signal(signum: int, frame: object) -> None:
    """SIGHUP's and SIGINT's handler until uwsgi installs its own: the wakeup pipe carries
    SIGHUP; SIGINT ends the worker here if the thread has not yet."""
    if signum == signal.SIGINT:
        os._exit(_UWSGI_END_CODE)


def _stop_once_loaded(wakeup: int) -> None:
    """(Its own thread.) SIGINT through ``wakeup`` ends this worker at once; SIGHUP ends it
    once it has loaded."""
    while True:
        signals = os.read(wakeup, 64)
        if signal.SIGINT in signals:
            os._exit(_UWSGI_END_CODE)
        if signal.SIGHUP in signals:
            break
    _LOADED.wait()
    logging.getLogger(__name__).warning("stopping: the master stopped this worker while it loaded its app")
    from app.exit_hooks import run_exit_callbacks

    run_exit_callbacks()
    os._exit(_UWSGI_RELOAD_CODE)


try:  # pragma: no cover - only importable inside uwsgi
    import uwsgi  # type: ignore[import-not-found]  # noqa: F401
except ImportError:
    pass
else:  # pragma: no cover - before anything slow is imported
    _wakeup_read, _wakeup_write = os.pipe()
    os.set_blocking(_wakeup_write, False)
    signal.signal(signal.SIGHUP, _take_signal)
    signal.signal(signal.SIGINT, _take_signal)
    signal.set_wakeup_fd(_wakeup_write, warn_on_full_buffer=False)
    threading.Thread(
        target=_stop_once_loaded, args=(_wakeup_read,), name="stop-while-loading", daemon=True
    ).start()

import gc  # noqa: E402 - after the handler above

from app import create_app  # noqa: E402 - after the handler above

application = create_app()

# The app, its modules and the loaded bundle live as long as the worker: ~190,000 objects that
# the cyclic garbage collector walked on every full collection, holding the GIL ~100-140 ms each
# time, under load too (docs/performance.md). Collect the start-up garbage once, then freeze
# what is left out of the collector's sight. A bundle replaced by a hot reload is still freed:
# bundles hold no reference cycles, so reference counting frees them, frozen or not
# (tests/unit/test_model_holder.py keeps it so).
gc.collect()
gc.freeze()

try:  # pragma: no cover - only importable inside uwsgi
    from uwsgidecorators import postfork  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    postfork = None

if postfork is not None:  # pragma: no cover

    @postfork
    def _fresh_connections() -> None:
        application.extensions["movierec"].db.engine.dispose(close=False)


_LOADED.set()  # a stop that came while loading ends the worker now (_stop_once_loaded)
