"""Liveness and readiness probes (Docker HEALTHCHECK, load balancers, deploy-docker.py)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from spectree import Response

from app.api.schemas import ErrorResponse, Live, Ready
from app.api.spec import spec
from app.errors import Unavailable

bp = Blueprint("health", __name__)


@bp.get("/health/live")
@spec.validate(resp=Response(HTTP_200=Live))
def live() -> Any:
    """Liveness: the process answers."""
    return jsonify(status="ok")


_NOT_READY = {"model": "no model is loaded", "database": "the database is unreachable"}


@bp.get("/health/ready")
@spec.validate(resp=Response(HTTP_200=Ready, HTTP_503=ErrorResponse))
def ready() -> Any:
    """Ready = a model is loaded and the database answers; else 503 ``unavailable`` naming what is not.

    The 503 is in the one error envelope like every other error status (API.md); it used to be
    this body with ``"status": "unavailable"``.
    """
    services = current_app.extensions["movierec"]
    bundle = services.models.bundle
    checks = {"model": bundle is not None, "database": services.db.ping()}
    failed = [_NOT_READY[name] for name, ok in checks.items() if not ok]
    if failed:
        raise Unavailable("not ready: " + "; ".join(failed), headers={"Retry-After": "5"})
    return jsonify(status="ok", checks=checks, model_version=bundle.version if bundle else None)
