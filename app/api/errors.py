"""The one error envelope, and the one place errors become HTTP responses.

Every 4xx/5xx body is ``{"error": {"code", "message", "fields"?}}`` — Werkzeug's own errors
(404, 405, 413 …), request validation, the JWT library's errors and unexpected exceptions
alike. No stack trace or secret ever reaches a response.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from flask_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from app.errors import CODES, ApiError, InvalidRequest
from app.monitoring.logs import LogEvery, describe_error
from app.recommender.bundle import BundleError
from app.storage.db import DatabaseUnavailableError

log = logging.getLogger(__name__)
_DATABASE_DOWN = LogEvery(30.0)  # an outage is one line (every 30 s), not one per request


def log_database_down(error: DatabaseUnavailableError) -> None:
    """The outage's ERROR line (what the monitor alerts on), for the API's answers and the pages'."""
    _DATABASE_DOWN.log(log, logging.ERROR, "database unavailable", reason=describe_error(error))


def envelope(
    status: int, message: str, code: str | None = None, fields: dict[str, str] | None = None
) -> Response:
    body: dict[str, Any] = {"code": code or CODES.get(status, "internal"), "message": message}
    if fields:
        body["fields"] = fields
    response = jsonify({"error": body})
    response.status_code = status
    return response


def not_a_json_object() -> InvalidRequest:
    """The refusal of a body that is not a JSON object: a request's, or a batch item's (each item
    of /api/recommend/batch is refused as /api/recommend refuses that body)."""
    return InvalidRequest("request body must be a JSON object", fields={"body": "must be a JSON object"})


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        response = envelope(error.status, error.message, error.code, error.fields)
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        from app.api import ui

        if request.blueprint is None and ui.is_page_path(request.path):
            return ui.error_page(error)  # a routing error under /ui: a page for the browser
        status = error.code or 500
        response = envelope(status, _describe(error))
        # keep Werkzeug's headers (Allow on 405, Retry-After on 429 …), not its HTML content type
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(DatabaseUnavailableError)
    def _database_down(error: DatabaseUnavailableError) -> Response:
        log_database_down(error)
        response = envelope(503, "the database is unavailable; retry later", "unavailable")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(BundleError)
    def _no_model(error: BundleError) -> Response:
        # as /health/ready says of the same state: a reload (the poller, an admin) ends it
        response = envelope(503, "no model is loaded; the service is not ready", "unavailable")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return envelope(500, "internal error", "internal")


def _describe(error: HTTPException) -> str:
    if isinstance(error, RateLimitExceeded) and error.limit.error_message:
        # the limit's own message ("too many login attempts", app/api/security.py), not the
        # generic one; a limit without one describes itself as its rate ("3 per 1 minute")
        return str(error.description)
    messages = {
        404: "no such resource",
        405: "method not allowed for this resource",
        413: "request body is too large",
        415: "request body must be JSON (Content-Type: application/json)",
        429: "too many requests; slow down",
    }
    status = error.code or 500
    limit = request.max_content_length
    if status == 413 and limit is not None:
        # the limit of the endpoint it was sent to (2 MiB for the bulk ones): what a client must
        # know to split or trim the body, and neither the answer nor the spec said it
        return f"request body is too large: at most {limit} bytes"
    return messages.get(status) or (error.description or error.name or "error").split("\n")[0]
