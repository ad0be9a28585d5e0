"""Rating predictions (seed 003): ``POST /api/predict/stream`` (one record) and ``/api/predict/batch``."""

from __future__ import annotations

from typing import Any

import numpy as np
from flask import Blueprint, current_app, g, jsonify
from flask_jwt_extended import jwt_required
from spectree import Response

from app.api.schemas import FIELD_RULES, ErrorResponse, readable_name
from app.api.serving_schemas import (
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRecord,
    PredictResponse,
)
from app.api.spec import BEARER, spec
from app.errors import InvalidRequest
from app.recommender.models.linear import InvalidRecordError
from app.services.predictions import RECORD_FIELDS, UnknownRecordField

bp = Blueprint("predict", __name__)

# The request schemas' own words, so a bad field reads the same alone (/stream, checked by its
# schema) and in a batch (checked record by record by the service); a kept copy had drifted.
RECORD_RULES = {name: FIELD_RULES[name] for name in sorted(RECORD_FIELDS)} | {"record": "must be an object"}


def _service() -> Any:
    return current_app.extensions["movierec"].predictions


def _predict(records: Any, where: str) -> tuple[np.ndarray, str]:
    """The service's predictions, a malformed record as a 400 naming its field.

    ``where`` names the records in error fields (``instances[3].age``); for one record
    (``where="instance"``, /stream, whose body is the record) a field is named alone (``age``),
    as the request validation names it.
    """
    try:
        predicted, version = _service().predict(records)
    except UnknownRecordField as exc:
        path = exc.field if where == "instance" else f"{where}[{exc.index}].{exc.field}"
        prefix = "" if where == "instance" else f"{where}[{exc.index}]: "
        message = f"{prefix}unknown field {readable_name(exc.field)}"  # quoted as invalid_request quotes it
        raise InvalidRequest(message, fields={path: "unknown field"}) from exc
    except InvalidRecordError as exc:
        name = exc.field if exc.field in RECORD_RULES else "record"
        rule = RECORD_RULES[name]
        if exc.missing:  # worded as the request validation words an absent field
            rule = f"is required and {rule}"
        path = name if where == "instance" else f"{where}[{exc.index}].{name}"
        raise InvalidRequest(f"{path} {rule}", fields={path: rule}) from exc
    g.model_version = version  # for the access log line, as /api/recommend's
    return predicted, version


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
    predicted, version = _predict([json.model_dump(exclude_none=True)], where="instance")
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
    predicted, version = _predict(json.instances, where="instances")
    return jsonify(predictions=_rounded(predicted), model_version=version)
