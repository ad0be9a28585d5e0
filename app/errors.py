"""The one error hierarchy. Each error carries its HTTP status and stable code; app/api/errors.py
is the one place that turns them (and every other failure) into the JSON error envelope.
Services raise these; they never build HTTP responses themselves.
"""

from __future__ import annotations

from typing import Any

CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    411: "invalid_request",
    413: "payload_too_large",
    415: "invalid_request",
    429: "rate_limited",
    431: "invalid_request",
    503: "unavailable",
}


class ApiError(Exception):
    """An error with an HTTP status, a stable code and, for invalid input, per-field reasons."""

    status = 400

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or CODES.get(self.status, "internal")
        self.fields = fields
        self.headers = headers or {}


class InvalidRequest(ApiError):
    status = 400


BEARER_CHALLENGE = "Bearer"
"""``WWW-Authenticate`` of a 401 when no token was refused (RFC 9110, 15.5.2: every 401 carries a
challenge; RFC 6750, 3: no error code then). Bearer, never Basic, which makes browsers prompt."""
BEARER_REFUSED = 'Bearer error="invalid_token"'
"""``WWW-Authenticate`` of a 401 refusing the token that was sent (RFC 6750, 3.1)."""


class Unauthorized(ApiError):
    """401: carries a Bearer challenge (``BEARER_CHALLENGE`` unless ``headers`` name another)."""

    status = 401

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("WWW-Authenticate", BEARER_CHALLENGE)


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Unavailable(ApiError):
    status = 503
