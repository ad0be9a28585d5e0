"""Liveness and readiness probes (Docker HEALTHCHECK, load balancers, deploy-docker.py)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from spectree import Response

from app.api.schemas import Live, Ready
from app.api.spec import spec

bp = Blueprint("health", __name__)


@bp.get("/health/live")
@spec.validate(resp=Response(HTTP_200=Live))
def live() -> Any:
    """Liveness: the process answers."""
    return jsonify(status="ok")


@bp.get("/health/ready")
@spec.validate(resp=Response(HTTP_200=Ready, HTTP_503=Ready))
def ready() -> Any:
    """Ready = a model is loaded and the database answers."""
    services = current_app.extensions["movierec"]
    bundle = services.models.bundle
    checks = {"model": bundle is not None, "database": services.db.ping()}
    body = {
        "status": "ok" if all(checks.values()) else "unavailable",
        "checks": checks,
        "model_version": bundle.version if bundle else None,
    }
    return jsonify(body), 200 if all(checks.values()) else 503
