"""WSGI entry point for uwsgi: ``module = app.wsgi:application``.

uwsgi loads this once in the master and forks workers; database connections opened during
start-up must not be shared across the fork, so each worker disposes the inherited pool.
"""

from __future__ import annotations

from app import create_app

application = create_app()

try:  # pragma: no cover - only importable inside uwsgi
    from uwsgidecorators import postfork  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    postfork = None

if postfork is not None:  # pragma: no cover

    @postfork
    def _fresh_connections() -> None:
        application.extensions["movierec"].db.engine.dispose(close=False)
