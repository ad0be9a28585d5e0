"""Wiring of the serving extensions: their blueprints, their body limit and the reload poller."""

from __future__ import annotations

from flask import Flask, Request, current_app

from app.api import echo, model, predict, recommend_batch, users
from app.api.serving_schemas import BULK_MAX_BODY_BYTES

BULK_PATHS = frozenset({"/api/predict/batch", "/api/recommend/batch"})


class ServingRequest(Request):
    """Flask's request, whose body limit depends on its path: the bulk endpoints accept bodies up
    to BULK_MAX_BODY_BYTES, everything else keeps ``MAX_CONTENT_LENGTH`` (64 KiB).

    A property of the request rather than a ``before_request`` hook that sets it: such a hook
    must run before every hook that reads the body, and one did not (a chunked 142 KB batch got
    a 413 from the check of undeclared bodies, which ran first with the 64 KiB limit).
    """

    @property
    def max_content_length(self) -> int | None:
        limit = super().max_content_length
        if self.path in BULK_PATHS and self._max_content_length is None:
            return max(BULK_MAX_BODY_BYTES, limit or 0)
        return limit

    @max_content_length.setter
    def max_content_length(self, value: int | None) -> None:
        self._max_content_length = value


def _reload_poller() -> None:
    """Make sure this worker process watches the reload marker (a pid comparison when it does)."""
    reloader = current_app.extensions["movierec"].reloader
    if reloader is not None:
        reloader.ensure_polling()


def register_serving(app: Flask) -> None:
    for blueprint in (predict.bp, recommend_batch.bp, users.bp, model.bp, echo.bp):
        app.register_blueprint(blueprint)
    app.request_class = ServingRequest
    app.before_request(_reload_poller)
