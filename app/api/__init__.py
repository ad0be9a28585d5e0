"""HTTP layer: blueprints, the JWT manager, and request hygiene shared by every endpoint."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, Response, request
from flask_jwt_extended import JWTManager
from werkzeug.exceptions import BadRequest

from app.api import auth, docs, health, monitoring, recommend, security, ui
from app.api.errors import envelope, not_a_json_object, register_error_handlers
from app.api.json_provider import number_out_of_range
from app.api.schemas import invalid_request
from app.api.serving import register_serving
from app.api.spec import BODY_OPTIONAL, spec
from app.config import JWT_LEEWAY_SECONDS, Settings
from app.errors import BEARER_CHALLENGE, BEARER_REFUSED, InvalidRequest, NotFound

jwt = JWTManager()


class ApiFlask(Flask):
    """The service's Flask: ``OPTIONS`` on a route is ``204 No Content`` with ``Allow``.

    Flask's own answer was ``200`` with an empty ``text/html`` body on every route, /api/*
    included. The CORS headers of a preflight are added to it like to any answer
    (app/api/security.py); a preflight takes any 2xx.
    """

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]  # no body, so no type (and no HTML for a JSON API)
        return response


_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _unauthorized(message: str, challenge: str = BEARER_REFUSED) -> Response:
    response = envelope(401, message, "unauthorized")
    response.headers["WWW-Authenticate"] = challenge
    return response


@jwt.unauthorized_loader
def _missing_token(reason: str) -> Response:
    if _bearer_credentials(request.headers.get("Authorization", "")) > 1:
        # flask-jwt-extended calls two Bearer credentials in one header a missing token: a token
        # was sent, and it is refused, as a malformed header is
        return _unauthorized("invalid access token: send one Authorization: Bearer <token>")
    return _unauthorized(
        "missing access token: send Authorization: Bearer <token> from /api/login", BEARER_CHALLENGE
    )


def _bearer_credentials(header: str) -> int:
    """How many comma-separated credentials of ``header`` are Bearer ones (any case of the scheme)."""
    schemes = (field.split(None, 1)[:1] for field in header.split(","))
    return sum(1 for scheme in schemes if scheme and scheme[0].lower() == "bearer")


@jwt.invalid_token_loader
def _invalid_token(reason: str) -> Response:
    return _unauthorized("invalid access token")


@jwt.expired_token_loader
def _expired_token(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("access token has expired: log in again")


@jwt.revoked_token_loader
def _revoked_token(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("access token has been revoked: log in again")


@jwt.needs_fresh_token_loader
def _needs_fresh(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("a fresh login is required")


@jwt.token_verification_failed_loader
def _verification_failed(_header: dict[str, Any], payload: dict[str, Any]) -> Response:
    role = payload.get("role")
    if security.well_formed_claims(payload) and isinstance(role, str) and role in auth.ROLES:
        # shaped as issued here, but not under its role's password as set now (token_issued_here)
        return _unauthorized("access token was issued under a password that is no longer set: log in again")
    return _unauthorized("access token was rejected")


@jwt.user_lookup_error_loader
def _user_lookup_error(_header: dict[str, Any], _payload: dict[str, Any]) -> Response:
    return _unauthorized("access token was rejected")


def _bearer_scheme_any_case() -> None:
    """``Authorization: bearer …`` is ``Bearer …``: the scheme is case-insensitive (RFC 9110,
    11.1), and flask-jwt-extended compares it exactly (a lower-case scheme was a 401)."""
    header = request.environ.get("HTTP_AUTHORIZATION")
    if header and not header.startswith("Bearer ") and header[:7].lower() == "bearer ":
        request.environ["HTTP_AUTHORIZATION"] = "Bearer " + header[7:]


def _refuse_empty_segments() -> None:
    """An API path is matched as spelled: an empty segment in it (``/api//recommend``,
    ``/api/%2Frecommend``) makes it an unknown path, 404 in the envelope.

    Werkzeug merged such slashes with a 308 redirect whose body was an HTML page and whose
    ``Location`` was absolute, built from the Host header and the scheme this server saw (``http``
    behind a TLS proxy), which a client would follow with its token and body. API.md gives every
    path exactly and refuses what it does not name (an unknown field, a query parameter) rather
    than correcting it. Leading slashes (``//api/recommend``, a base URL ending in ``/`` joined
    to a path) are not looked at: Werkzeug drops them before routing (``request.path``), without
    a redirect, and such clients have always been answered. Paths outside /api/ keep Werkzeug's
    redirect (a browser follows it).
    """
    path = request.path
    if "//" in path and path.startswith("/api/"):
        raise NotFound("no such resource: the path has an empty segment (//)")


def _check_api_write() -> None:
    """A POST under /api/: its JSON body (:func:`_require_json_object`), then no query parameter
    (:func:`_refuse_query`).

    Not checked for a request routing has already refused (Flask raises its 404 or 405 when it
    dispatches, after these hooks: a PUT to a POST endpoint was a 415, not a 405 with Allow); the
    body not for a request without one where every body field is optional.
    """
    if request.method not in _BODY_METHODS or not request.path.startswith("/api/"):
        return
    if request.routing_exception is not None:
        return
    if not (
        request.path in BODY_OPTIONAL
        and not request.content_length
        and "Transfer-Encoding" not in request.headers
    ):
        _require_json_object()
    _refuse_query()


def _require_json_object() -> None:
    """The body must be a JSON object with a JSON content type and no content coding: 415 / 400 otherwise."""
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        # nothing decodes a content coding: a gzipped body was read as its raw bytes (400 "not
        # valid JSON"), a plain one labelled gzip accepted (RFC 9110, 15.5.16: 415, saying so)
        raise InvalidRequest(
            "request body must not be compressed: send it without Content-Encoding",
            status=415,
            code="invalid_request",
            headers={"Accept-Encoding": "identity"},
        )
    if not request.is_json:
        raise InvalidRequest(
            "request body must be JSON (Content-Type: application/json)", status=415, code="invalid_request"
        )
    try:  # not silent: its None is also what a body of `null`, valid JSON, parses to
        payload = request.get_json()
    except BadRequest:
        if number_out_of_range(request.get_data()):  # valid JSON orjson cannot read: say why
            raise InvalidRequest(
                "request body has a number out of range",
                fields={"body": "must hold no number beyond a double's range (about ±1.8e308)"},
            ) from None
        raise InvalidRequest(
            "request body is not valid JSON", fields={"body": "must be a valid JSON object"}
        ) from None
    if not isinstance(payload, dict):
        raise not_a_json_object()


def _refuse_query() -> None:
    """A POST under /api/ takes no query parameter (its spec lists none): any is a 400 naming it,
    as an unknown body field is and as the GETs' are (``NoQuery``). It used to be ignored:
    ``?max_recs=3`` answered 10 movies. Checked here rather than by a spectree query model per
    view: no query string, the usual case, costs one lookup.
    """
    if not request.environ.get("QUERY_STRING"):
        return
    names = sorted(set(request.args.keys()))
    if names:
        raise invalid_request(dict.fromkeys(names, "unknown field"))


def register_api(app: Flask, settings: Settings, jwt_secret: str) -> None:
    app.config.update(
        JWT_SECRET_KEY=jwt_secret,
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(seconds=settings.token_ttl_seconds),
        JWT_TOKEN_LOCATION=["headers"],
        # Replicas' clocks differ by milliseconds: a token issued by one whose clock is ahead, at
        # the start of a second, has an ``iat``/``nbf`` in the future of the other, which refused
        # it ("not yet valid") when it was used at once. Two seconds of leeway, which also
        # lengthen every token's life by as much.
        JWT_DECODE_LEEWAY=JWT_LEEWAY_SECONDS,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    jwt.init_app(app)
    auth.init_fingerprints(app, settings, jwt_secret)
    app.before_request(_refuse_empty_segments)
    app.before_request(_bearer_scheme_any_case)
    app.before_request(_check_api_write)
    app.after_request(security.drain_unread_body)
    for blueprint in (auth.bp, recommend.bp, health.bp, docs.bp, security.bp, monitoring.bp):
        app.register_blueprint(blueprint)
    register_serving(app)  # predict, batch, users, model/reload, echo (app/api/serving.py)
    ui.configure(app, settings)  # the web pages: cookie-held token with CSRF, /ui only
    jwt.token_in_blocklist_loader(security.token_revoked)
    jwt.token_verification_loader(security.token_issued_here)
    security.init_security(app, settings)  # after the blueprints: it wraps the login views
    register_error_handlers(app)
    spec.register(app)
