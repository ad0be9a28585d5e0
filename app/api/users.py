"""Seed 001's features and predictions APIs: ``GET /api/users/<id>/features`` and ``/recommendations``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from flask_jwt_extended import jwt_required
from spectree import Response

from app.api.schemas import FIELD_RULES, ErrorResponse, NoQuery
from app.api.serving_schemas import MaxRecsQuery, UserFeaturesResponse, UserRecommendationsResponse
from app.api.spec import BEARER, spec
from app.errors import InvalidRequest
from app.recommender.bundle import RecommendQuery
from app.recommender.features import MAX_ID

bp = Blueprint("users", __name__)


def _user_id(raw: str) -> int:
    """Path ids are checked like body fields: 400 naming ``user_id``, not a bare 404.

    The significant digits are counted before any conversion: ``int()`` refuses text of more
    than 4,300 digits with a ValueError, and a path of 5,000 was a 500.
    """
    digits = raw.lstrip("0") if raw.isascii() and raw.isdigit() else ""
    if not digits or len(digits) > len(str(MAX_ID)) or int(digits) > MAX_ID:
        raise InvalidRequest("invalid user id", fields={"user_id": FIELD_RULES["user_id"]})
    return int(digits)


@bp.get("/api/users/<user_id>/features")
@jwt_required()
@spec.validate(
    query=NoQuery,
    resp=Response(
        HTTP_200=UserFeaturesResponse, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse,
        HTTP_503=ErrorResponse,
    ),
    security=BEARER,
)  # fmt: skip
def features(user_id: str) -> Any:
    """The latest features of a user: demographics, activity, rating statistics, genre profile."""
    return jsonify(current_app.extensions["movierec"].user_features.features(_user_id(user_id)))


@bp.get("/api/users/<user_id>/recommendations")
@jwt_required()
@spec.validate(
    query=MaxRecsQuery,
    resp=Response(
        HTTP_200=UserRecommendationsResponse, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
        HTTP_404=ErrorResponse, HTTP_503=ErrorResponse,
    ),
    security=BEARER,
)  # fmt: skip
def recommendations(user_id: str, query: MaxRecsQuery) -> Any:
    """Recommendations for a user, built on their stored features.

    A user the model knows gets personal recommendations; any other user with features is
    answered for their demographic segment. Either way the list leaves out every movie the
    user rated in their features (which may be newer than the model) or scored since on a list
    served under their id, so it may be shorter than ``max_recs``. The answer has an ``id`` for
    /api/recommend/score like any recommendation.
    """
    services = current_app.extensions["movierec"]
    uid = _user_id(user_id)
    profile = services.user_features.profile(uid)
    feats = profile.answer["features"]
    bundle = services.models.require()
    # The user id goes with the profile either way: a model that knows the user answers
    # personally, any other answers for the segment — and the request is logged under the
    # user, so a score on its list is that user's rating at the next ingest, not a stranger's.
    ask = RecommendQuery(
        query.max_recs,
        int(feats["age"]),
        str(feats["gender"]),
        str(feats["occupation"]),
        user_id=uid,
        exclude=services.user_features.rated(uid, profile),
    )
    if request.method == "HEAD":
        # the headers of the same answer, nothing recorded or counted: nobody receives it
        served = services.recommendations.answer(bundle, ask, counted=False)
    else:
        served = services.recommendations.recommend(ask)
    g.model_version = served.model_version  # for the access log line, as /api/recommend's
    return jsonify({**served.body(), "user_id": uid, "features_source": profile.answer["source"]})
