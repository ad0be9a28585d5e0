"""The seed's recommendation endpoints: /api/recommend and /api/recommend/score."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify
from flask_jwt_extended import jwt_required
from spectree import Response

from app.api.schemas import ErrorResponse, Ok, RecommendRequest, RecommendResponse, ScoreRequest
from app.api.spec import BEARER, spec

bp = Blueprint("recommend", __name__)


def _service() -> Any:
    return current_app.extensions["movierec"].recommendations


@bp.post("/api/recommend")
@jwt_required()
@spec.validate(
    json=RecommendRequest,
    resp=Response(
        HTTP_200=RecommendResponse, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse,
        HTTP_503=ErrorResponse,
    ),
    security=BEARER,
)  # fmt: skip
def recommend(json: RecommendRequest) -> Any:
    """Top movies for a demographic profile, or for a known user (``user_id``)."""
    served = _service().recommend(json.query())
    g.model_version = served.model_version  # for the access log line
    return jsonify(served.body())


@bp.post("/api/recommend/score")
@jwt_required()
@spec.validate(
    json=ScoreRequest,
    resp=Response(HTTP_200=Ok, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_503=ErrorResponse),
    security=BEARER,
)
def score(json: ScoreRequest) -> Any:
    """Record the user's score for a movie recommended under ``id``. 200 means stored."""
    _service().score(json.id, json.movie, json.score)
    return jsonify("Ok")
