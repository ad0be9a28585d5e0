"""``POST /api/recommend/batch``: up to 1,000 recommend requests, each answered or rejected on its own."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, g, jsonify
from flask_jwt_extended import jwt_required
from pydantic import ValidationError
from spectree import Response

from app.api.errors import not_a_json_object
from app.api.recommend import leave_out_rated
from app.api.schemas import ErrorResponse, RecommendRequest, field_errors, invalid_request
from app.api.serving_schemas import RecommendBatchRequest, RecommendBatchResponse
from app.api.spec import BEARER, spec
from app.errors import ApiError
from app.recommender.bundle import RecommendQuery

bp = Blueprint("recommend_batch", __name__)


def _error(error: ApiError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.fields:
        body["fields"] = error.fields
    return {"error": body}


@bp.post("/api/recommend/batch")
@jwt_required()
@spec.validate(
    json=RecommendBatchRequest,
    resp=Response(
        HTTP_200=RecommendBatchResponse, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
        HTTP_413=ErrorResponse, HTTP_503=ErrorResponse,
    ),
    security=BEARER,
)  # fmt: skip
def recommend_batch(json: RecommendBatchRequest) -> Any:
    """One answer per request, in order: a /api/recommend body or an error envelope for that item.

    An item that is not a JSON object is refused like any other bad item: its own error, the one
    /api/recommend answers such a body. All items are answered by the same bundle, each through
    the circuit breaker as /api/recommend is (so an open breaker answers every item from the
    fallback), an item naming a user never recommending a movie that user rated (what the users
    named rated is read once for all); the served items are logged in one go.
    """
    services = current_app.extensions["movierec"]
    recommendations = services.recommendations
    bundle = services.models.require()
    parsed: list[RecommendQuery | dict[str, Any]] = []  # each item's query, or its error
    for item in json.requests:
        if not isinstance(item, dict):  # a number, text, list or null: refused alone, as a body
            parsed.append(_error(not_a_json_object()))
            continue
        try:
            parsed.append(RecommendRequest.model_validate(item).query())
        except ValidationError as exc:
            parsed.append(_error(invalid_request(field_errors(exc.errors()))))  # type: ignore[arg-type]
    # what the users named rated, read once for them all
    queries = iter(leave_out_rated([query for query in parsed if isinstance(query, RecommendQuery)]))
    results: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for item in parsed:
        if not isinstance(item, RecommendQuery):
            results.append(item)
            continue
        query = next(queries)
        try:
            served = recommendations.answer(bundle, query)
        except ApiError as exc:
            results.append(_error(exc))
            continue
        rows.append(recommendations.log_row(served, query))
        results.append(served.body())
    recommendations.request_log.append(rows)
    failed = len(results) - len(rows)
    g.model_version = bundle.version  # for the access log line, as /api/recommend's
    return jsonify(results=results, model_version=bundle.version, succeeded=len(rows), failed=failed)
