"""``GET /metrics`` (Prometheus exposition) and ``POST /api/admin/breaker/reset``.

/metrics needs no JWT (scrapers do not log in) but can be restricted by settings:
``MOVIEREC_METRICS_ALLOW_CIDRS`` (comma-separated networks the scraper's address must be in)
and/or ``MOVIEREC_METRICS_TOKEN`` (a bearer token the scraper must send, compared in
constant time by :func:`app.api.auth.secret_matches`). With neither set it is open, like most
exporters; put it behind the network boundary or set one of them in production
(docs/operations.md).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field
from spectree import Response as SpecResponse

from app.api.auth import admin_required, secret_matches
from app.api.schemas import MAX_REASON_LENGTH, ErrorResponse
from app.api.serving_schemas import BreakerStatus
from app.api.spec import BEARER, METRICS_TOKEN, spec
from app.config import parse_networks
from app.errors import BEARER_CHALLENGE, BEARER_REFUSED, Forbidden, Unauthorized, Unavailable
from app.monitoring.metrics import render
from app.monitoring.online import StateCollector
from app.recommender.bundle import VERSION_MAX_LENGTH
from app.storage.breaker import BreakerStoreError

bp = Blueprint("monitoring", __name__)


class BreakerResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # written into the breaker record ("reset by admin: <reason>"): no control characters (a NUL
    # failed PostgreSQL's write, answered as 503 "retry" quoting the SQL)
    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON_LENGTH,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="why, for the log and the alert (no control characters)",
    )
    model_version: str | None = Field(
        default=None,
        min_length=1,
        max_length=VERSION_MAX_LENGTH,
        # a version names a bundle directory and a database key: no control characters (a NUL
        # made PostgreSQL's lookup fail, answered as 503 "retry"), no surrounding blanks
        pattern=r"^[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?$",
        description="the model version whose breaker to close; default: the one this instance serves "
        "(each version has its own breaker; 404 when the named version has no breaker record)",
    )


def _check_scraper(settings: Any) -> None:
    networks = parse_networks(settings.metrics_allow_cidrs or "")
    if networks:
        try:
            address = ipaddress.ip_address(request.remote_addr or "")
        except ValueError:
            raise Forbidden("metrics are not available to this address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # an IPv4 client of a dual-stack port (MOVIEREC_HOST=::)
        if not any(address in network for network in networks):
            raise Forbidden("metrics are not available to this address")
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if token:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not secret_matches(given, token):
            # a token sent and refused is ``invalid_token`` (RFC 6750, 3.1); none sent: the bare challenge
            challenge = BEARER_REFUSED if given else BEARER_CHALLENGE
            raise Unauthorized(
                "metrics need the scraper's bearer token", headers={"WWW-Authenticate": challenge}
            )


@bp.get("/metrics")
@spec.validate(
    resp=SpecResponse("HTTP_200", HTTP_401=ErrorResponse, HTTP_403=ErrorResponse), security=METRICS_TOKEN
)
def metrics() -> Response:
    """Prometheus text exposition: every worker's counters and histograms, and the state gauges.

    Open unless the service sets ``MOVIEREC_METRICS_TOKEN`` (then send it as ``Authorization:
    Bearer <token>``, else 401) or ``MOVIEREC_METRICS_ALLOW_CIDRS`` (403 from other addresses).
    """
    services = current_app.extensions["movierec"]
    _check_scraper(services.settings)
    monitor = getattr(services, "monitor", None)
    collectors = [StateCollector(services.models, monitor.breaker if monitor is not None else None)]
    body, content_type = render(collectors)
    return Response(body, status=200, content_type=content_type)


@bp.post("/api/admin/breaker/reset")
@admin_required
@spec.validate(
    json=BreakerResetRequest,
    resp=SpecResponse(
        HTTP_200=BreakerStatus,
        HTTP_400=ErrorResponse,
        HTTP_401=ErrorResponse,
        HTTP_403=ErrorResponse,
        HTTP_404=ErrorResponse,
        HTTP_503=ErrorResponse,
    ),
    security=BEARER,
)
def reset_breaker(json: BreakerResetRequest) -> Any:
    """Close the circuit breaker now: the champion serves every request again (logged and alerted)."""
    services = current_app.extensions["movierec"]
    breaker = getattr(services, "breaker", None)
    if breaker is None:
        raise Unavailable("the circuit breaker is not enabled in this service")
    by = "admin" if not json.reason else f"admin: {json.reason}"
    try:
        return jsonify(breaker.reset(by=by, version=json.model_version))
    except BreakerStoreError as exc:
        raise Unavailable(
            f"the breaker state could not be changed: {exc}", headers={"Retry-After": "1"}
        ) from exc
