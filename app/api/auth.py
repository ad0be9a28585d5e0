"""Authentication: the seed's /, /protected and /api/login, with roles and constant-time checks."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, current_app, jsonify
from flask_jwt_extended import create_access_token, get_jwt, jwt_required
from spectree import Response

from app.api.schemas import ErrorResponse, LoginRequest, LoginResponse, Message
from app.api.spec import BEARER, spec
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
    same work is done whether or not a secret is set.
    """
    given = hmac.digest(_COMPARISON_KEY, candidate.encode(), "sha256")
    expected = hmac.digest(_COMPARISON_KEY, (secret or "").encode(), "sha256")
    equal = hmac.compare_digest(given, expected)
    return bool(secret) and equal


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
        raise Unauthorized("invalid session password")
    role = "admin" if is_admin else "client"
    return create_access_token(identity=role, additional_claims={"role": role})


def admin_required(view: F) -> F:
    """Require a valid token carrying the admin role (client tokens get 403)."""

    @wraps(view)
    @jwt_required()
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if get_jwt().get("role") != "admin":
            raise Forbidden("this endpoint needs an admin token")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
