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


@bp.get("/health/ready")
@spec.validate(resp=Response(HTTP_200=Ready, HTTP_503=ErrorResponse))
def ready() -> Any:
    """Ready = a model is loaded, the database answers and the feedback journal's disk has room for
    scores; else 503 ``unavailable`` naming what is not.

    The 503 is in the one error envelope like every other error status (API.md); it used to be
    this body with ``"status": "unavailable"``. A score is acknowledged only once synced into the
    journal (app/services/feedback_journal.py): with its disk full every score failed while this
    said 200, so a load balancer kept sending them. Liveness (above) ignores all three: a restart
    loads no model, reaches no database and frees no disk.
    """
    services = current_app.extensions["movierec"]
    bundle = services.models.bundle
    problems = {
        "model": None if bundle is not None else "no model is loaded",
        "database": None if services.db.ping() else "the database is unreachable",
        "journal_disk": services.recommendations.feedback.disk_problem(),
    }
    failed = [problem for problem in problems.values() if problem is not None]
    if failed or bundle is None:  # no bundle is a failed check: the second test is for the type checker
        raise Unavailable("not ready: " + "; ".join(failed), headers={"Retry-After": "5"})
    checks = {name: problem is None for name, problem in problems.items()}
    return jsonify(status="ok", checks=checks, model_version=bundle.version)
