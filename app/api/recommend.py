"""The seed's recommendation endpoints: /api/recommend and /api/recommend/score."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify
from flask_jwt_extended import jwt_required
from spectree import Response

from app.api.schemas import ErrorResponse, Ok, RecommendRequest, RecommendResponse, ScoreRequest
from app.api.spec import BEARER, spec
from app.recommender.bundle import RecommendQuery

bp = Blueprint("recommend", __name__)


def _service() -> Any:
    return current_app.extensions["movierec"].recommendations


def leave_out_rated(queries: list[RecommendQuery]) -> list[RecommendQuery]:
    """``queries``, each naming a user leaving out what that user rated as
    /api/users/<id>/recommendations does (API.md: a known user is never recommended a movie they
    rated): their features' movies and those they scored since on lists served under their id,
    read once for all of them (:meth:`UserFeatureService.rated_by`). Queries naming no user, the
    benchmark's, are given back as they are, nothing asked or read.
    """
    users = {query.user_id for query in queries if query.user_id is not None}
    if not users:
        return queries
    rated = current_app.extensions["movierec"].user_features.rated_by(users)
    return [
        query._replace(exclude=rated[query.user_id])
        if query.user_id is not None and rated.get(query.user_id)
        else query
        for query in queries
    ]


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
    """Top movies for a demographic profile, or for a known user (``user_id``), never one that user rated."""
    query = json.query()
    if query.user_id is not None:
        (query,) = leave_out_rated([query])
    served = _service().recommend(query)
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
