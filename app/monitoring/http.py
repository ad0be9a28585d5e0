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
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, g, request, request_started
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from app.monitoring.logs import bind_log_context, reset_log_context, scrub_text
from app.monitoring.metrics import observe_request

try:  # pragma: no cover - only importable inside uwsgi
    import uwsgi  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    uwsgi = None

log = logging.getLogger("movierec.access")

URI_PATH_LOGVAR = "uri_path"
"""The request-log variable uwsgi.ini's ``log-format`` prints where uwsgi's default has ``%(uri)``."""
METHOD_LOGVAR = "request_method"
"""... and where it has ``%(method)``: uwsgi's own quotes the method as the client sent it."""
PROTOCOL_LOGVAR = "request_protocol"
"""... and where it has ``%(proto)``: the client's text too, up to the line's end, spaces included."""
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # fullmatch: "$" also matches before a final "\n"


def _start(_app: Flask | None = None, **_extra: Any) -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()
    g.log_token = bind_log_context(request_id=g.request_id, endpoint=request.endpoint or request.path)
    if uwsgi is not None:  # pragma: no cover - under uwsgi only (tests/integration/test_serving_uwsgi.py)
        uwsgi.set_logvar(URI_PATH_LOGVAR, uri_path(request.environ))
        # a client's escape sequences (a 404 with "GET\x1b]0;...\x07" as its method) went raw into
        # the line, run by the terminal of an operator reading the log
        uwsgi.set_logvar(METHOD_LOGVAR, printable(request.environ.get("REQUEST_METHOD", "")))
        uwsgi.set_logvar(PROTOCOL_LOGVAR, printable(request.environ.get("SERVER_PROTOCOL", "")))


def uri_path(environ: Mapping[str, Any]) -> str:
    """The request target as sent, without its query string, for uwsgi's own request line.

    uwsgi logs each 4xx/5xx request itself (uwsgi.ini: log-4xx, log-5xx) and quoted the whole
    URI: a token or password a client put in the query string (``?access_token=``, a login
    tried as a GET) reached the log unscrubbed. Not ``PATH_INFO`` either: it is percent-decoded,
    and a ``%0a`` in a path would start a forged line. Anything unprintable left in the raw
    target is percent-encoded for the same reason. What is left is scrubbed as the app's own
    lines are (:func:`app.monitoring.logs.scrub_text`): an absolute-form target, what a client
    sends to a proxy, carried a password in its userinfo (``http://user:password@host/``) into
    uwsgi's line, masked in the app's.
    """
    raw = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    return printable(scrub_text(raw.split("?", 1)[0]))


def printable(text: str) -> str:
    """``text`` with every character but printable ASCII (spaces too) percent-encoded, for a
    plain-text log line: no line break, terminal escape or field separator a client sent."""
    return _UNPRINTABLE.sub(lambda match: f"%{ord(match.group()) & 0xFF:02X}", text)


def _finish(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    started = g.get("started")
    latency_ms = round(1000.0 * (time.perf_counter() - started), 3) if started else None
    g.latency_ms = latency_ms
    observe_request(
        _rule(),
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


def _rule() -> str | None:
    """The URL rule the request matched, for the metrics' ``endpoint`` label; None for no rule.

    A 405 matched a path but not its method, and Flask keeps no rule for it: it was counted under
    ``<unmatched>`` with the scanners' 404s, and which endpoint clients called wrongly was lost.
    Its rule is looked up again with a method it allows (on 405s only).
    """
    if request.url_rule is not None:
        return request.url_rule.rule
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed) or not error.valid_methods:
        return None
    try:
        adapter = current_app.create_url_adapter(request)
        if adapter is None:
            return None
        rule, _arguments = adapter.match(method=next(iter(error.valid_methods)), return_rule=True)
    except HTTPException:  # a redirect (strict slashes) or no match after all
        return None
    return rule.rule


def _teardown(_exc: BaseException | None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        reset_log_context(token)


def instrument(app: Flask) -> None:
    """Install the hooks; call once per app in create_app.

    The request starts on Flask's ``request_started`` signal, sent before every ``before_request``
    hook: as the first such hook it ran after app/api/security.py's body check, which is put
    first of all, so a body it refused (411, 413) was answered with an empty X-Request-ID and
    logged and measured without id, endpoint or latency.
    """
    request_started.connect(_start, app, weak=False)
    app.after_request(_finish)
    app.teardown_request(_teardown)
