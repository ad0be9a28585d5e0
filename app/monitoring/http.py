"""Per-request observability: a request id, bound log context, and one access-log line.

Every request gets an id (the caller's ``X-Request-ID`` when it is sane, else a new one),
echoed back in the response header and bound to every log line written while handling it,
with the endpoint; the access line adds status, latency and the serving model version.
The same hook counts the request in the Prometheus series ``movierec_http_requests_total``
and ``movierec_http_request_duration_seconds`` (labelled by URL rule, method and status).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request

from app.monitoring.logs import bind_log_context, reset_log_context
from app.monitoring.metrics import observe_request

log = logging.getLogger("movierec.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: "$" also matches before a final "\n"


def _start() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()
    g.log_token = bind_log_context(request_id=g.request_id, endpoint=request.endpoint or request.path)


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    started = g.get("started")
    latency_ms = round(1000.0 * (time.perf_counter() - started), 3) if started else None
    g.latency_ms = latency_ms
    observe_request(
        request.url_rule.rule if request.url_rule is not None else None,
        request.method,
        response.status_code,
        None if latency_ms is None else latency_ms / 1000.0,
    )
    level = logging.WARNING if response.status_code >= 500 else logging.INFO
    log.log(
        level,
        "request",
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "latency_ms": latency_ms,
            "model_version": g.get("model_version"),
        },
    )
    return response


def _teardown(_exc: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        reset_log_context(token)


def instrument(app: Flask) -> None:
    """Install the hooks; call once per app in create_app."""
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_teardown)
