"""WSGI entry point for uwsgi: ``module = app.wsgi:application``.

With ``lazy-apps`` (uwsgi.ini) each worker imports this after the fork and creates its own app;
the postfork hook below still disposes any database pool a worker could inherit.
"""

from __future__ import annotations

import gc

from app import create_app

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
