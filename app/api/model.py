"""``GET /api/model`` (what is serving) and ``POST /api/admin/reload`` (swap in the champion bundle)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask_jwt_extended import get_jwt, jwt_required
from spectree import Response

from app.api.auth import admin_required
from app.api.schemas import ErrorResponse, NoQuery
from app.api.serving_schemas import ModelInfo, ReloadRequest, ReloadStatus
from app.api.spec import BEARER, spec

bp = Blueprint("model", __name__)

RELOAD_WAIT_SECONDS = 120.0


ADMIN_ONLY_DETAIL = "failed: the details are shown to admin tokens and in the service log"


def _for_role(status: dict[str, Any], key: str, admin: bool) -> dict[str, Any]:
    """``status`` with its error text kept for admins only: a failed reload's, write's or breaker
    store call's text, or why the model store cannot be read, holds server paths, unpickling
    messages, store addresses or SQL, which no client token needs."""
    if admin or not status.get(key):
        return status
    return {**status, key: ADMIN_ONLY_DETAIL}


@bp.get("/api/model")
@jwt_required()
@spec.validate(
    query=NoQuery,
    resp=Response(HTTP_200=ModelInfo, HTTP_401=ErrorResponse, HTTP_503=ErrorResponse),
    security=BEARER,
)
def model_info() -> Any:
    """The serving model: version, offline metrics from its manifest, load time, reload and breaker state."""
    services = current_app.extensions["movierec"]
    bundle = services.models.require()
    rating = bundle.rating_model
    admin = get_jwt().get("role") == "admin"
    # a BreakerView, which create_app always installs; typed optional (None until it is)
    breaker = services.breaker.status() if services.breaker is not None else None
    if breaker is not None:
        breaker = _for_role(_for_role(breaker, "store_error", admin), "fallback_error", admin)
    return jsonify(
        model_version=bundle.version,
        served_model=bundle.manifest.get("served_model"),
        created_at=bundle.manifest.get("created_at"),
        loaded_at=datetime.fromtimestamp(bundle.loaded_at, UTC).isoformat(timespec="seconds"),
        metrics=bundle.metrics,
        rating_model=rating.name if rating is not None else None,
        reload=_for_role(services.reloader.instance_status(), "error", admin),
        breaker=breaker,
        request_log=_for_role(services.recommendations.request_log.stats(), "last_error", admin),
        feedback_journal=_for_role(services.recommendations.feedback.stats(), "last_error", admin),
    )


@bp.post("/api/admin/reload")
@admin_required
@spec.validate(
    json=ReloadRequest,
    resp=Response(
        HTTP_200=ReloadStatus, HTTP_202=ReloadStatus, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
        HTTP_403=ErrorResponse, HTTP_404=ErrorResponse, HTTP_409=ErrorResponse, HTTP_422=ErrorResponse,
        HTTP_503=ErrorResponse,
    ),
    security=BEARER,
)  # fmt: skip
def reload(json: ReloadRequest) -> Any:
    """Load the model store's current bundle (or ``version``) in the background and swap it in everywhere.

    202 while loading; with ``"wait": true`` 200 once every worker serves it, 422 ``invalid_bundle``
    when it is refused (the previous bundle keeps serving), 503 ``reload_incomplete`` when some
    workers refused it or did not take it in time (those keep serving the previous bundle), or 409
    ``reload_superseded`` when a newer reload of another bundle was started meanwhile.
    """
    services = current_app.extensions["movierec"]
    status = services.reloader.request(json.version, wait=RELOAD_WAIT_SECONDS if json.wait else None)
    bundle = services.models.bundle
    status["model_version"] = bundle.version if bundle is not None else None
    return jsonify(status), 200 if status["state"] == "loaded" else 202
