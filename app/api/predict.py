"""Rating predictions (seed 003): ``POST /api/predict/stream`` (one record) and ``/api/predict/batch``."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, current_app, jsonify
from flask_jwt_extended import jwt_required
from spectree import Response

from app.api.schemas import ErrorResponse
from app.api.serving_schemas import (
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRecord,
    PredictResponse,
)
from app.api.spec import BEARER, spec

bp = Blueprint("predict", __name__)


def _service() -> Any:
    return current_app.extensions["movierec"].predictions


def _rounded(predicted: np.ndarray) -> list[float]:
    """Predictions to 6 decimals, one rounding for both endpoints (Python's round() and NumPy's
    differ next to half-way points, so a record could answer differently alone and in a batch)."""
    return list(predicted.round(6).tolist())


@bp.post("/api/predict/stream")
@jwt_required()
@spec.validate(
    json=PredictRecord,
    resp=Response(
        HTTP_200=PredictResponse, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_503=ErrorResponse
    ),
    security=BEARER,
)
def stream(json: PredictRecord) -> Any:
    """Predicted rating (1-5) of one movie for one person (demographics, optionally a known user_id)."""
    predicted, version = _service().predict([json.model_dump(exclude_none=True)], where="instance")
    return jsonify(prediction=_rounded(predicted)[0], model_version=version)


@bp.post("/api/predict/batch")
@jwt_required()
@spec.validate(
    json=PredictBatchRequest,
    resp=Response(
        HTTP_200=PredictBatchResponse, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_413=ErrorResponse,
        HTTP_503=ErrorResponse,
    ),
    security=BEARER,
)  # fmt: skip
def batch(json: PredictBatchRequest) -> Any:
    """Predicted ratings for up to 10,000 records in one vectorised call; one bad record fails the batch."""
    predicted, version = _service().predict(json.instances, where="instances")
    return jsonify(predictions=_rounded(predicted), model_version=version)
