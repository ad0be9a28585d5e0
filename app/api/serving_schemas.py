"""Schemas of the serving extensions: predictions, batch recommend, users, model and reload, echo.

Kept apart from :mod:`app.api.schemas` (the seed contract) but built from the same strict
field types, so the generated OpenAPI spec states the same bounds everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt

from app.api.schemas import (
    DEFAULT_MAX_RECS,
    MAX_BATCH_PREDICT,
    MAX_BATCH_RECOMMEND,
    MAX_RECS,
    MAX_VERSION_LENGTH,
    Age,
    ErrorResponse,
    Gender,
    MovieId,
    Occupation,
    RecommendResponse,
    Strict,
    UserId,
)
from app.recommender.bundle import BUNDLE_NAME_PATTERN

# Bulk endpoints take bigger bodies than the 64 KiB default: 10,000 records are about 700 KB.
BULK_MAX_BODY_BYTES = 2 * 1024 * 1024


class PredictRecord(Strict):
    """One (person, movie) pair; ``user_id`` of a known user adds their own rating history (an id
    the model does not know is predicted from the demographics alone, as without one, and so is
    one above 1,000,000: a synthetic feedback user's, which no caller is)."""

    age: Age
    gender: Gender
    occupation: Occupation
    movie_id: MovieId
    user_id: UserId | None = None


class PredictResponse(BaseModel):
    prediction: float
    model_version: str


class PredictBatchRequest(Strict):
    """Records as for /api/predict/stream; checked record by record, errors name ``instances[i].field``."""

    # list[Any]: each record is checked once, by the service (app/services/predictions.py), which
    # names ``instances[i].field``; validating 1,000 dicts here first was a tenth of the request.
    # The spec still states what a record is: the /stream body (it said any object).
    instances: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH_PREDICT,
        json_schema_extra={"items": PredictRecord.model_json_schema()},
    )


class PredictBatchResponse(BaseModel):
    predictions: list[float]
    model_version: str


class RecommendBatchRequest(Strict):
    """Each item is a /api/recommend body; each is answered or rejected on its own."""

    # list[Any]: each item is checked by the view, which answers a bad one (an object with a bad
    # field, or a number, text, list or null) with its own error; a non-object item made the whole
    # batch a 400. The spec says so: any value is taken, a recommend body is what is answered.
    requests: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH_RECOMMEND,
        json_schema_extra={
            "items": {
                "description": "A /api/recommend body (RecommendRequest). Any other value, or a body "
                "with a bad field, is answered by its own error envelope in results[i].",
                "examples": [{"age": 30, "gender": "M", "occupation": "programmer"}, {"user_id": 1}],
            }
        },
    )


class RecommendBatchResponse(BaseModel):
    """``results[i]`` answers ``requests[i]``: a /api/recommend body, or ``{"error": {...}}``."""

    # the two shapes, stated in the spec: it said any object, so neither a client built from it nor
    # a reader of /docs could tell an answered item from a refused one or see the error's fields
    results: list[RecommendResponse | ErrorResponse]
    model_version: str
    succeeded: int
    failed: int


def _decimal_digits(value: Any) -> Any:
    """Query text as an int only when it is plain ASCII digits (pydantic's lax parsing took
    ``7_0`` as 70 and `` 7`` as 7); anything else is left for the int check to refuse.

    Leading zeros are the same number, however many (as in a path's user id: ``0000000007`` was
    refused while ``007`` was 7); only the significant digits are bounded, so ``int()`` never
    reads thousands of digits."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        digits = value.lstrip("0") or "0"
        return int(digits) if len(digits) <= 9 else value
    return value


class MaxRecsQuery(Strict):
    """Query strings are text: ``?max_recs=7`` is read as digits, within the body field's bounds."""

    max_recs: Annotated[StrictInt, Field(ge=1, le=MAX_RECS), BeforeValidator(_decimal_digits)] = (
        DEFAULT_MAX_RECS
    )


class UserFeaturesResponse(BaseModel):
    user_id: int
    features: dict[str, Any]
    source: str
    snapshot_id: str | None
    as_of: str | None


class UserRecommendationsResponse(RecommendResponse):
    user_id: int
    features_source: str


class ReloadRequest(Strict):
    # the bundle-name rule, stated in the spec: it said any text, and names such as "../x" or "é"
    # were refused by the reloader, not by the schema
    version: str | None = Field(
        default=None, min_length=1, max_length=MAX_VERSION_LENGTH, pattern=BUNDLE_NAME_PATTERN
    )
    wait: StrictBool = False


class ReloadStatus(BaseModel):
    state: str
    target: str | None = None
    requested_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    model_version: str | None = None
    # the reload's workers: total, swapped, refused, waiting (absent before it reached them)
    workers: dict[str, int] | None = None


class BreakerStatus(BaseModel):
    state: str
    since: str | None = None
    reason: str
    model_version: str | None = None
    fallback: str | None = Field(
        default=None,
        description="what serves while the breaker keeps the champion out: 'previous champion <version>' "
        "(named from the model store), 'popularity from <version>', or 'none' (no model, or the breaker "
        "routes nothing); null in a reset's answer for a version this instance does not serve",
    )
    routes: bool | None = Field(
        default=None,
        description="false when MOVIEREC_BREAKER_ENABLED=false: the breaker is judged and its transitions "
        "announced, but the model serves every request whatever its state",
    )
    fallback_loaded: bool | None = Field(
        default=None,
        description="whether this worker holds the fallback's bundle (reporting never loads it); the "
        "worker's monitor thread loads a previous champion once the breaker opens, and popularity serves "
        "until it has",
    )
    fallback_error: str | None = Field(
        default=None,
        description="why no previous champion could be named: the model store cannot be read by the service "
        "(popularity serves meanwhile); the text for admin tokens only",
    )
    thresholds: dict[str, Any]


class ModelInfo(BaseModel):
    model_version: str
    served_model: str | None
    created_at: str | None
    loaded_at: str
    metrics: dict[str, Any]
    rating_model: str | None
    # what an admin polls after a 202: the reload's status as POST /api/admin/reload answers it,
    # and the served version's breaker as its reset answers it (the spec said any object for both)
    reload: ReloadStatus
    breaker: BreakerStatus | None
    request_log: dict[str, Any]
    feedback_journal: dict[str, Any]


class Echo(BaseModel):
    """Any JSON object, returned as sent."""

    model_config = ConfigDict(extra="allow")


__all__ = [
    "BULK_MAX_BODY_BYTES",
    "MAX_BATCH_PREDICT",
    "MAX_BATCH_RECOMMEND",
    "BreakerStatus",
    "Echo",
    "Gender",
    "MaxRecsQuery",
    "ModelInfo",
    "Occupation",
    "PredictBatchRequest",
    "PredictBatchResponse",
    "PredictRecord",
    "PredictResponse",
    "RecommendBatchRequest",
    "RecommendBatchResponse",
    "ReloadRequest",
    "ReloadStatus",
    "UserFeaturesResponse",
    "UserRecommendationsResponse",
]
