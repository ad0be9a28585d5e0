"""Authentication: the seed's /, /protected and /api/login, with roles and constant-time checks."""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, g, jsonify
from flask_jwt_extended import create_access_token, get_jwt, jwt_required
from spectree import Response

from app.api.schemas import ErrorResponse, LoginRequest, LoginResponse, Message
from app.api.spec import BEARER, spec
from app.config import Settings, comparable_secret
from app.errors import Forbidden, Unauthorized

bp = Blueprint("auth", __name__)

F = TypeVar("F", bound=Callable[..., Any])


_COMPARISON_KEY = secrets.token_bytes(32)
"""Keys the digests :func:`secret_matches` compares; per process, so they mean nothing outside it."""


def secret_matches(candidate: str, secret: str | None) -> bool:
    """Whether ``candidate`` is ``secret``, in time independent of both (passwords, /metrics token).

    ``hmac.compare_digest`` is constant-time only for inputs of equal length: given the raw
    strings it returns at once when the lengths differ, and the secret's length was told by
    timing. Both sides are compared as HMAC-SHA256 digests (always 32 bytes) instead, and the
    same work is done whether or not a secret is set. Both are first put in one Unicode
    normalization (:func:`app.config.comparable_secret`): a password typed on macOS matches the
    same password set on Linux.
    """
    given = hmac.digest(_COMPARISON_KEY, comparable_secret(candidate).encode(), "sha256")
    expected = hmac.digest(_COMPARISON_KEY, comparable_secret(secret or "").encode(), "sha256")
    equal = hmac.compare_digest(given, expected)
    return bool(secret) and equal


FINGERPRINT_CLAIM = "pwfp"
"""The token claim holding :func:`password_fingerprint` of the password it was issued under."""
_FINGERPRINT_CONTEXT = b"movierec password fingerprints v1"
_EXTENSION = "movierec.auth"
ROLES = {"client": "session_password", "admin": "admin_password"}
"""Each role a token may carry, and the setting whose password /api/login issues it for."""
REFUSED_LOGIN = "invalid session password"  # the message of a login whose password is wrong


def password_fingerprint(jwt_secret: str, role: str, password: str) -> str:
    """What a token of ``role`` carries of the password it was issued under: 128 bits of an
    HMAC-SHA256 of role and password, under a key derived from the JWT secret (the secret itself
    signs only tokens), base64url.

    A token's claims are readable by whoever holds it, so the claim is keyed: it cannot be
    checked against guesses of the password without the JWT secret, and neither the password nor
    a plain hash of it is in any token. The same on every replica that shares secret and password,
    the password as logins compare it (:func:`app.config.comparable_secret`): set as NFC on one
    replica and as NFD on another, it is one password, and each replica took the other's tokens
    for ones issued under a password since changed.
    """
    key = hmac.digest(jwt_secret.encode(), _FINGERPRINT_CONTEXT, "sha256")
    digest = hmac.digest(key, role.encode() + b"\0" + comparable_secret(password).encode(), "sha256")
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def init_fingerprints(app: Flask, settings: Settings, jwt_secret: str) -> None:
    """Compute once, at start, the fingerprint each role's tokens must carry (none: no such role)."""
    fingerprints: dict[str, str] = {}
    for role, name in ROLES.items():
        secret = getattr(settings, name)
        if secret is not None and secret.get_secret_value():
            fingerprints[role] = password_fingerprint(jwt_secret, role, secret.get_secret_value())
    app.extensions[_EXTENSION] = fingerprints


def issued_under_current_password(payload: dict[str, Any]) -> bool:
    """Whether a verified token's role is one /api/login issues, with the fingerprint of that role's
    password as it is set now: a token issued before the password changed (or was removed) is not.
    One dictionary lookup and one comparison: it runs on every authenticated request."""
    role = payload.get("role")
    expected = current_app.extensions[_EXTENSION].get(role) if isinstance(role, str) else None
    # a plain comparison: the token's signature was verified before, only the key's holders make one
    return expected is not None and payload.get(FINGERPRINT_CLAIM) == expected


def token_claims(role: str) -> dict[str, Any]:
    """The claims a token of ``role`` is issued with, beside the library's own (API and web UI)."""
    return {"role": role, FINGERPRINT_CLAIM: current_app.extensions[_EXTENSION][role]}


@bp.get("/")
@spec.validate(resp=Response(HTTP_200=Message))
def index() -> Any:
    """Welcome message naming the first steps (the seed's root; no token needed)."""
    return jsonify(message="Welcome to movierec: POST /api/login, then /api/recommend. Docs at /docs.")


@bp.get("/protected")
@jwt_required()
@spec.validate(resp=Response(HTTP_200=Message, HTTP_401=ErrorResponse), security=BEARER)
def protected() -> Any:
    """Check a token: 200 ``{"message": "Protected"}`` for any valid one (the seed's route)."""
    return jsonify(message="Protected")


@bp.post("/api/login")
@spec.validate(
    json=LoginRequest,
    resp=Response(
        HTTP_200=LoginResponse, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_429=ErrorResponse
    ),
)
def login(json: LoginRequest) -> Any:
    """Exchange the session password (client token) or the admin password (admin token) for a JWT."""
    return jsonify(access_token=issue_token(json.session_password))


def issue_token(password: str) -> str:
    """The one way to turn a password into a token (API and web UI): client or admin role."""
    settings = current_app.extensions["movierec"].settings
    session = settings.session_password.get_secret_value() if settings.session_password else None
    admin = settings.admin_password.get_secret_value() if settings.admin_password else None
    is_client, is_admin = secret_matches(password, session), secret_matches(password, admin)
    if not (is_client or is_admin):
        g.wrong_password = True  # what the login limit counts (security.is_failed_login)
        raise Unauthorized(REFUSED_LOGIN)
    role = "admin" if is_admin else "client"
    return create_access_token(identity=role, additional_claims=token_claims(role))


def admin_required(view: F) -> F:
    """Require a valid token carrying the admin role (client tokens get 403)."""

    @wraps(view)
    @jwt_required()
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if get_jwt().get("role") != "admin":
            raise Forbidden("this endpoint needs an admin token")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
