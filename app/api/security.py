"""Request hardening shared by every endpoint: security headers, CORS, login rate limit, revocation.

``init_security(app, settings)`` is called once by ``register_api``. Everything here is per app
(the tests build many apps), so nothing is bound at import time.

* Security headers on every response; ``Cache-Control: no-store`` on API answers (tokens and
  personal recommendations must not sit in shared caches); HSTS only when the deployment
  terminates TLS and says so (``MOVIEREC_HSTS_SECONDS``).
* CORS is off unless ``MOVIEREC_CORS_ORIGINS`` lists origins: the API authenticates with a bearer
  header, not cookies, so an exact-match allow-list without credentials is all a browser client
  needs, and no origin is trusted by default. ``null``, ``*`` and entries that could never equal
  a browser's ``Origin`` header are refused at start (:func:`app.config.parse_origins`).
* ``/api/login`` is rate-limited per client address with Flask-Limiter, counting wrong passwords
  only (:func:`is_failed_login`): Redis storage when
  ``MOVIEREC_REDIS_URL`` is set (so every replica counts the same attempts), memory otherwise,
  where each uwsgi worker counts its share of the budget (:func:`share_of_limit`); if Redis
  stops answering, the limiter falls back to memory instead of failing logins, each worker
  counting its share there too until Redis answers again (:func:`login_budget`).
* Logged-out tokens are refused through :class:`RevocationStore` (``token_in_blocklist_loader``),
  and tokens whose claims are not the ones ``/api/login`` writes by :func:`token_issued_here`,
  tokens issued under a password since changed included.
* Headers over :data:`MAX_HEADER_BYTES` are refused with 431 (:func:`refuse_oversized_headers`).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from flask_jwt_extended import get_jwt, jwt_required
from flask_limiter import Limiter
from limits import parse_many
from spectree import Response as Responses
from werkzeug.exceptions import LengthRequired, RequestEntityTooLarge, RequestHeaderFieldsTooLarge
from werkzeug.wsgi import LimitedStream

from app.api.auth import issued_under_current_password
from app.api.schemas import ErrorResponse, Message, Strict
from app.api.serving_schemas import BULK_MAX_BODY_BYTES
from app.api.spec import BEARER, spec
from app.config import Settings, parse_origins
from app.services.revocation import RevocationStore

bp = Blueprint("security", __name__)

log = logging.getLogger(__name__)

EXTENSION = "movierec.security"
# every view that turns a password into a token shares one per-address budget
LOGIN_ENDPOINTS = ("auth.login", "ui.login")
RATE_LIMIT_KEY_PREFIX = "movierec"
# a dead Redis must cost milliseconds per request, not a hung worker (storage options are typed str|int)
_REDIS_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_API_PREFIXES = ("/api/", "/protected", "/health/", "/metrics")
# X-Request-ID both ways: a browser client may send its own id, and reads the one each answer
# carries (the id to quote in a support request; a cross-origin script sees no other header)
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
_CORS_EXPOSE_HEADERS = ", ".join(
    ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Request-ID")
)


IPV6_CLIENT_PREFIX = 64
"""IPv6 addresses count per /64: the least one site is given (RFC 6177), all of it one client's."""


def client_address() -> str:
    """The rate-limit key: the peer address, or behind ``MOVIEREC_FORWARDED_FOR_HOPS`` proxies the
    address the outermost of them saw (:func:`forwarded_peer`).

    An IPv6 peer is keyed by its /64: per address, one host holding a /64 had 2^64 budgets.
    An IPv4 peer of a dual-stack listener (``::ffff:a.b.c.d``) is keyed as its IPv4 address.
    """
    hops: int = current_app.extensions["movierec"].settings.forwarded_for_hops
    peer = (forwarded_peer(hops) if hops else None) or request.remote_addr or "unknown"
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])  # a link-local peer's "%eth0"
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


def forwarded_peer(hops: int) -> str | None:
    """The ``hops``-th ``X-Forwarded-For`` entry from the right: the one the outermost of ``hops``
    proxies appended, each appending its own peer. Entries left of it are the client's to write,
    so never read. None when the header has fewer entries (the request did not come through them).
    A port some balancers add (``203.0.113.5:4711``, ``[2001:db8::1]:4711``) is dropped: it
    differs per connection, and each would have been a budget of its own.

    Behind a load balancer every request's peer is the balancer: all clients shared one login
    budget, and one guesser made every other client's right password a 429 for the window.
    """
    entries = [entry.strip() for entry in ",".join(request.headers.getlist("X-Forwarded-For")).split(",")]
    entries = [entry for entry in entries if entry]
    if len(entries) < hops:
        return None
    entry = entries[-hops]
    if entry.startswith("["):
        return entry[1:].split("]", 1)[0]
    return entry.split(":", 1)[0] if entry.count(":") == 1 else entry


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The exact origins CORS allows; checked when the settings were read (config.parse_origins)."""
    return parse_origins(settings.cors_origins)


def init_security(app: Flask, settings: Settings) -> None:
    """Bind headers, CORS, the login limiter and the revocation store to ``app``."""
    services = app.extensions["movierec"]
    revocations = RevocationStore(services.db, settings.redis_url)
    # registered before the limiter so it runs after the limiter's own header hook (Flask runs
    # after_request functions in reverse order)
    origins = allowed_origins(settings)
    hsts = settings.hsts_seconds

    @app.after_request
    def _harden(response: Response) -> Response:
        add_security_headers(response, hsts)
        if origins:
            add_cors_headers(response, origins)
        if response.status_code == 429:
            wait_out_the_window(response, limiter)
        elif response.status_code != 503:
            # Flask-Limiter adds Retry-After to every limited response; it only means something here
            response.headers.pop("Retry-After", None)
        return response

    limiter = Limiter(
        key_func=client_address,
        app=app,
        storage_uri=settings.redis_url or "memory://",
        storage_options=_REDIS_TIMEOUTS if settings.redis_url else {},
        strategy="fixed-window",
        key_prefix=RATE_LIMIT_KEY_PREFIX,
        headers_enabled=True,
        in_memory_fallback_enabled=True,  # Redis down: count in memory rather than refuse every login
        swallow_errors=True,
    )
    login_rate = login_budget(limiter, settings.login_rate_limit, settings.redis_url is not None)
    login_limit = limiter.shared_limit(
        login_rate,
        scope="login",
        methods=["POST"],
        error_message="too many login attempts",
        deduct_when=is_failed_login,
    )
    for endpoint in LOGIN_ENDPOINTS:
        if endpoint in app.view_functions:
            app.view_functions[endpoint] = login_limit(app.view_functions[endpoint])  # type: ignore[assignment]
    app.extensions[EXTENSION] = {"limiter": limiter, "revocations": revocations}
    # first of all before_request hooks: nothing may parse a truncated body, nor read headers
    # over the limit
    app.before_request_funcs.setdefault(None, []).insert(0, refuse_oversized_streams)
    app.before_request_funcs[None].insert(0, refuse_oversized_headers)


def wait_out_the_window(response: Response, limiter: Limiter) -> None:
    """A 429's ``Retry-After``: whole seconds after which the window has surely ended.

    Flask-Limiter floors the time to its reset (``X-RateLimit-Reset``, the window's end rounded
    down plus a second; with Redis from its TTL, whole seconds rounded to the nearest): with 0.4 s
    of the window left it said 0, with 30.4 s 30, and a client that waited as told was refused
    again (at once, for 0). Rounded up instead, which is never short, and never more than the
    window: at most ~1.5 s more than needed.
    """
    breached = limiter.current_limit
    if breached is not None:
        left = math.ceil(breached.reset_at - time.time())
        response.headers["Retry-After"] = str(min(max(1, left), breached.limit.get_expiry()))


def is_failed_login(_response: Response) -> bool:
    """Whether a login answer spends one try of the budget: only a wrong password does (the
    API's 401; the web UI's 303 back to its login page, which says so), as ``issue_token`` marks it.

    Every login counted, right password or not: an office or a CI system behind one NAT address
    that logged in 11 times a minute got 429 with the default budget although no password was
    wrong. The budget is still checked before every attempt, so once it is spent on wrong
    passwords the right one is refused too until the window passes. An attempt is counted when
    it is answered, so attempts in flight together are each checked before any of them counts:
    an address can get past the budget by at most the requests an instance serves at once.
    """
    return bool(g.get("wrong_password", False))


def login_budget(limiter: Limiter, limit: str, shared: bool) -> str | Callable[[], str]:
    """The login limit this worker applies: ``limit`` while it is counted in Redis (``shared``),
    else this worker's :func:`share_of_limit`, as each worker counts alone in its memory.

    With Redis configured, the limiter counts in memory while Redis does not answer (its
    fallback), and the fallback applied the whole ``limit`` in each worker: an address had as
    many times its tries as there are workers for as long as Redis was down. So the budget is
    asked per request: the share while the limiter's fallback storage counts.
    """
    share = share_of_limit(limit, worker_processes())
    if not shared:
        return share

    def current() -> str:
        return limit if limiter.limiter.storage is limiter.storage else share

    return current


def worker_processes() -> int:
    """How many worker processes this instance runs: uwsgi's ``processes``, else 1."""
    try:
        import uwsgi  # type: ignore[import-not-found]
    except ImportError:
        return 1
    return max(1, int(uwsgi.numproc))


def share_of_limit(limit: str, processes: int) -> str:
    """``limit`` divided among ``processes`` that count apart: each gets its share, rounded down
    but at least 1, so their sum is at most the limit unless the limit is smaller than
    ``processes`` (then it is ``processes``: 1 each).

    Without Redis every uwsgi worker counted the whole login budget in its own memory, so an
    address had ``processes`` times the configured tries (20 a minute, not 10, with 2 workers).
    """
    if processes <= 1:
        return limit
    return "; ".join(
        f"{max(1, item.amount // processes)} per {item.multiples} {item.GRANULARITY.name}"
        for item in parse_many(limit)
    )


class LogoutRequest(Strict):
    """No fields: the body is optional, and an unknown field is refused (API.md) rather than ignored."""


@bp.post("/api/logout")
@jwt_required()
@spec.validate(
    json=LogoutRequest,
    resp=Responses(HTTP_200=Message, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_503=ErrorResponse),
    security=BEARER,
)
def logout(json: LogoutRequest) -> Any:
    """Revoke the presented token everywhere: later requests with it get 401 on every instance."""
    revoke_current_token()
    return jsonify(message="Logged out")


def revoke_current_token() -> None:
    """Revoke the token verified for this request (API logout and the web UI's log-out button)."""
    claims = get_jwt()
    ttl = current_app.extensions["movierec"].settings.token_ttl_seconds
    exp = claims.get("exp")
    expires_at = (
        datetime.fromtimestamp(exp, UTC)
        if isinstance(exp, int)
        else datetime.now(UTC) + timedelta(seconds=ttl)
    )
    revocations().revoke(str(claims["jti"]), expires_at)


MAX_HEADER_BYTES = 16 * 1024
"""The most a request's headers may hold: the request target (path and query) plus every header's
name and value, in bytes (a name counts with its CGI prefix ``HTTP_``, about what ``: `` and the
line end take on the wire). uwsgi.ini's buffer-size (65535, uwsgi's maximum) lets requests up to
about 60 KiB reach the app, which refuses those over this limit with 431 in the envelope."""


def refuse_oversized_headers() -> None:
    """431 for headers over :data:`MAX_HEADER_BYTES`.

    uWSGI has no answer of its own for them: a request whose headers pass its buffer-size is
    dropped by the worker ("invalid request block size ... skip") and the HTTP router closes the
    client's connection without a byte. With buffer-size at 16384 every such request got that
    empty reply. One pass over the environ's strings (a few microseconds for a usual request).
    """
    environ = request.environ
    size = len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", ""))
    for key, value in environ.items():
        if key.startswith(("HTTP_", "CONTENT_")):
            size += len(key) + len(value)
    if size > MAX_HEADER_BYTES:
        raise RequestHeaderFieldsTooLarge(
            f"request headers are too large: {size} bytes, at most {MAX_HEADER_BYTES} "
            "(the path, query and every header's name and value)"
        )


def refuse_oversized_streams() -> None:
    """411 or 413 for a body without Content-Length (chunked) that cannot be read whole.

    Werkzeug enforces the limit on such streams only by *stopping* at it, so a long chunked
    body would otherwise reach the views silently truncated (400 at best, a wrong accept at
    worst): 413. A server that cannot bound chunked input (uwsgi: no ``wsgi.input_terminated``)
    gives Werkzeug no stream at all, and the view saw an empty body ("not valid JSON", 400): 411,
    which tells the client to send a Content-Length.
    """
    if request.content_length is not None or request.method not in _BODY_METHODS:
        return
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if chunked and not request.environ.get("wsgi.input_terminated"):
        raise LengthRequired(
            "send the request body with a Content-Length header (chunked bodies are not read)"
        )
    limit = request.max_content_length
    if limit is None:
        return
    data = request.get_data(cache=True)  # at most ``limit`` bytes
    if len(data) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


DRAIN_LIMIT = 2 * BULK_MAX_BODY_BYTES
"""The largest declared body an error answer still reads to the end (see :func:`drain_unread_body`)."""


def drain_unread_body(response: Response) -> Response:
    """``after_request``: read to its end the body an error answer left unread (at most DRAIN_LIMIT).

    An answer given without reading the body (413 on the declared length, 415 on the content
    type, 429) left the rest in the connection. uwsgi reads no body for the app (uwsgi.ini: no
    post-buffering), and uWSGI's HTTP router, still relaying it to a worker that had ended the
    request, reset the client's connection: a 3 MB body got ``ConnectionResetError`` instead of
    its 413 (5 tries of 5), a 300 KB one to a 64 KiB endpoint 2 of 5. Read exactly the declared
    length, never past it (Werkzeug's development server would wait for the next request). A
    larger or undeclared (chunked) body is not read: that client may see the reset.
    """
    if response.status_code < 400:  # every response passes here: successes read their body
        return response
    length = request.content_length
    if not length or length > DRAIN_LIMIT:
        return response
    stream: Any
    try:
        stream = request.stream  # the request's own stream knows what the view read
    except RequestEntityTooLarge:  # declared over the endpoint's limit: nothing was read
        stream = LimitedStream(request.environ["wsgi.input"], length)
    try:
        stream.exhaust()
    except Exception as exc:  # noqa: BLE001 - the client went away or stalled; the answer stands
        log.debug("request body not drained: %s", exc)
    return response


def revocations() -> RevocationStore:
    store: RevocationStore = current_app.extensions[EXTENSION]["revocations"]
    return store


def limiter_of(app: Flask) -> Limiter:
    limiter: Limiter = app.extensions[EXTENSION]["limiter"]
    return limiter


def token_revoked(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
    """flask-jwt-extended's ``token_in_blocklist_loader``: a token without a jti is treated as revoked."""
    jti = payload.get("jti")
    return not isinstance(jti, str) or revocations().is_revoked(jti)


def token_issued_here(_header: dict[str, Any], payload: dict[str, Any]) -> bool:
    """flask-jwt-extended's ``token_verification_loader``: the claims ``/api/login`` writes, or 401.

    Every token this service signs is an access token whose integer ``exp`` is its ``iat`` plus
    ``MOVIEREC_TOKEN_TTL_SECONDS``. The library accepts less from a correctly signed token: no
    ``exp`` (valid for ever), any ``type`` but ``refresh``, an ``exp`` past the year 9999 (whose
    logout then failed with a 500). Only the key's holders can sign such a token, but a key
    shared with another system or a script must not mint tokens that outlive the setting. A token
    issued before the lifetime was shortened is refused too: it would outlive the new setting.
    So is a token whose role is not one /api/login issues, or whose password fingerprint is not
    that of its role's password as set now: changing ADMIN_PASSWORD (or SESSION_PASSWORD) ends
    the tokens issued under the old one (:func:`app.api.auth.issued_under_current_password`).
    """
    return well_formed_claims(payload) and issued_under_current_password(payload)


def well_formed_claims(payload: dict[str, Any]) -> bool:
    """The type and lifetime :func:`token_issued_here` asks of a token, its password aside."""
    exp, iat = payload.get("exp"), payload.get("iat")
    ttl: int = current_app.extensions["movierec"].settings.token_ttl_seconds
    return (
        payload.get("type") == "access"
        and isinstance(exp, int)
        and isinstance(iat, int)
        and 0 < exp - iat <= ttl
    )


def add_security_headers(response: Response, hsts_seconds: int = 0) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if "Content-Security-Policy" not in headers:
        # HTML pages (docs, UI) may set their own policy; JSON needs no sub-resources at all
        html = response.mimetype == "text/html"
        headers["Content-Security-Policy"] = (
            "frame-ancestors 'none'" if html else "default-src 'none'; frame-ancestors 'none'"
        )
    if request.path.startswith(_API_PREFIXES) or response.mimetype == "application/json":
        headers["Cache-Control"] = "no-store"
    if hsts_seconds > 0:
        headers.setdefault("Strict-Transport-Security", f"max-age={hsts_seconds}; includeSubDomains")


def add_cors_headers(response: Response, origins: frozenset[str]) -> None:
    origin = request.headers.get("Origin")
    response.vary.add("Origin")
    if not origin or origin.rstrip("/") not in origins:
        return  # no CORS headers: the browser blocks the cross-origin read
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.headers["Access-Control-Allow-Methods"] = response.headers.get("Allow", "GET, POST")
        response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
