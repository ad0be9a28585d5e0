"""Wiring of the serving extensions: their blueprints and the two per-request hooks they need."""

from __future__ import annotations

from flask import Flask, current_app, request

from app.api import echo, model, predict, recommend_batch, users
from app.api.serving_schemas import BULK_MAX_BODY_BYTES

BULK_PATHS = frozenset({"/api/predict/batch", "/api/recommend/batch"})


def _bulk_body_limit() -> None:
    """Bulk endpoints accept bodies up to BULK_MAX_BODY_BYTES; everything else keeps the 64 KiB limit."""
    if request.path in BULK_PATHS:
        request.max_content_length = max(
            BULK_MAX_BODY_BYTES, current_app.config.get("MAX_CONTENT_LENGTH") or 0
        )


def _reload_poller() -> None:
    """Make sure this worker process watches the reload marker (a pid comparison when it does)."""
    reloader = current_app.extensions["movierec"].reloader
    if reloader is not None:
        reloader.ensure_polling()


def register_serving(app: Flask) -> None:
    for blueprint in (predict.bp, recommend_batch.bp, users.bp, model.bp, echo.bp):
        app.register_blueprint(blueprint)
    # First in line: the body limit must be set before anything reads the body.
    hooks = app.before_request_funcs.setdefault(None, [])
    hooks.insert(0, _bulk_body_limit)
    hooks.append(_reload_poller)
