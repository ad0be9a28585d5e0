"""WSGI entry point for uwsgi: ``module = app.wsgi:application``.

uwsgi loads this once in the master and forks workers; database connections opened during
start-up must not be shared across the fork, so each worker disposes the inherited pool.
"""

from __future__ import annotations

import gc

from app import create_app

application = create_app()

# The app, its modules and the loaded bundle live as long as the worker: ~190,000 objects that
# the cyclic garbage collector walked on every full collection, holding the GIL ~100-140 ms each
# time, under load too (docs/performance.md). Collect the start-up garbage once, then freeze
# what is left out of the collector's sight; ModelHolder.load freezes again after a hot reload.
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
