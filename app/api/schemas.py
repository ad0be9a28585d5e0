"""Request and response schemas (pydantic v2). The OpenAPI spec is generated from these.

Integers are strict (JSON ``true``, ``"30"`` and ``2.5`` are not ages) but accept integral
floats such as ``30.0``, which JSON Schema also calls integers; the bounds are declared before
the converting validator so the spec keeps ``minimum``/``maximum`` (LIBRARY-NOTES.md).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StrictInt,
    model_validator,
)

from app.config import MAX_PASSWORD_LENGTH, MAX_RECS
from app.errors import InvalidRequest
from app.recommender.bundle import VERSION_MAX_LENGTH, RecommendQuery
from app.recommender.data import MAX_TITLE_LENGTH
from app.recommender.features import MAX_ID, integral
from app.recommender.segments import MAX_AGE, MIN_AGE, OCCUPATIONS
from app.services.request_ids import RequestIds

DEFAULT_MAX_RECS = 10  # API.md: max_recs absent (or null) is 10
MAX_BATCH_RECOMMEND = 1_000
MAX_BATCH_PREDICT = 10_000
MAX_VERSION_LENGTH = 128
MAX_REASON_LENGTH = 200  # an admin's note on a breaker reset


_Integral = BeforeValidator(integral)
# Spelled out per alias (not built by a helper function) so type checkers see real aliases.
Age = Annotated[StrictInt, Field(ge=MIN_AGE, le=MAX_AGE), _Integral]
MaxRecs = Annotated[StrictInt, Field(ge=1, le=MAX_RECS), _Integral]
UserId = Annotated[StrictInt, Field(ge=1, le=MAX_ID), _Integral]
MovieId = Annotated[StrictInt, Field(ge=1, le=MAX_ID), _Integral]
Gender = Literal["M", "F", "O"]
Occupation = Literal[OCCUPATIONS]  # type: ignore[valid-type]
Score = Annotated[float, Field(strict=True, ge=0.5, le=5, allow_inf_nan=False)]


def _as_issued(text: str) -> str:
    """A recommendation id in the case it was issued in (lower); other text as sent, for the
    service to refuse as never issued."""
    return RequestIds.canonical(text) or text


RecommendationId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="the id /api/recommend returned: UUID text in the 8-4-4-4-12 form, its hex digits "
        "in any case (RFC 9562); braces, a urn:uuid: prefix or padding are not that id",
    ),
    AfterValidator(_as_issued),
]

# What each field must be, in the words the error envelope uses.
FIELD_RULES: dict[str, str] = {
    "session_password": f"must be a non-empty string of at most {MAX_PASSWORD_LENGTH} characters",
    "age": f"must be an integer between {MIN_AGE} and {MAX_AGE}",
    "gender": "must be one of M, F, O",
    "occupation": "must be one of: " + ", ".join(OCCUPATIONS),
    "max_recs": f"must be an integer between 1 and {MAX_RECS}",
    "user_id": f"must be an integer between 1 and {MAX_ID}",  # "positive" alone left 2**31 unexplained
    "id": "must be a recommendation id issued by this service",
    "movie": "must be a movie title recommended under that id",
    "score": "must be a number between 0.5 and 5",
    # the serving extensions' bodies (app/api/serving_schemas.py)
    "movie_id": "must be the id of a movie in the catalogue",
    "instances": f"must be a list of 1 to {MAX_BATCH_PREDICT:,} records",
    "requests": f"must be a list of 1 to {MAX_BATCH_RECOMMEND:,} /api/recommend bodies",
    "version": f"must be a bundle version name of at most {MAX_VERSION_LENGTH} characters: letters, digits,"
    " '.', '_' and '-', starting with a letter or digit",
    "wait": "must be true or false",
    # the breaker reset body (app/api/monitoring.py)
    "reason": f"must be text of at most {MAX_REASON_LENGTH} characters without control characters",
    "model_version": f"must be a model version name of at most {VERSION_MAX_LENGTH} characters, without "
    "control characters or surrounding blanks",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoQuery(Strict):
    """The query of an ``/api/`` GET that takes no parameters: any is refused (400 naming it), as
    an unknown body field is, rather than answered as if it were not there. The seed's ``/`` and
    ``/protected``, the health probes and ``/metrics`` take none either but ignore a query string:
    what probes, scrapers and links add to a URL (cache busters, tracking) must not fail them."""


class LoginRequest(Strict):
    session_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class LoginResponse(BaseModel):
    access_token: str


class Message(BaseModel):
    message: str


class RecommendRequest(Strict):
    """Demographics for a cold-start recommendation, or ``user_id`` for a known user.

    Every field is optional, and ``null`` is the same as leaving a field out (the spec says so:
    each takes ``null``): ``max_recs: null`` is the default, a demographic's ``null`` is missing.
    ``max_recs: null`` was a 400 while ``user_id: null`` was absent.
    """

    # the "user_id or all three demographics" rule below, stated in the spec too (found by fuzzing:
    # without it `{}` is schema-valid yet answered 400)
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["user_id"], "properties": {"user_id": {"type": "integer"}}},
                {
                    "required": ["age", "gender", "occupation"],
                    "properties": {
                        "age": {"type": "integer"},
                        "gender": {"type": "string"},
                        "occupation": {"type": "string"},
                    },
                },
            ]
        }
    )

    age: Age | None = None
    gender: Gender | None = None
    occupation: Occupation | None = None
    max_recs: MaxRecs | None = DEFAULT_MAX_RECS  # None: sent as null, answered as absent (query())
    user_id: UserId | None = None

    @model_validator(mode="after")
    def _demographics_or_user(self) -> RecommendRequest:
        if self.user_id is None:
            missing = [name for name in ("age", "gender", "occupation") if getattr(self, name) is None]
            if missing:
                raise ValueError("missing:" + ",".join(missing))
        return self

    def query(self) -> RecommendQuery:
        """What the recommendation service is asked (/api/recommend, each batch item, the UI)."""
        max_recs = DEFAULT_MAX_RECS if self.max_recs is None else self.max_recs
        return RecommendQuery(max_recs, self.age, self.gender, self.occupation, self.user_id)


class RecommendedItem(BaseModel):
    movie_id: int
    title: str
    score: float | None


class RecommendResponse(BaseModel):
    recommendations: list[str]
    id: str
    items: list[RecommendedItem]
    model_version: str
    strategy: str


class ScoreRequest(Strict):
    id: RecommendationId
    movie: str = Field(min_length=1, max_length=MAX_TITLE_LENGTH)
    score: Score


class Live(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    """A ready answer (200): not ready is the 503 error envelope, so a model is always named."""

    status: Literal["ok"]
    checks: dict[str, bool]
    model_version: str


class Ok(RootModel[Literal["Ok"]]):
    """The seed's success body for a stored score: the JSON string "Ok"."""


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def invalid_request(fields: dict[str, str]) -> InvalidRequest:
    """The 400 naming every field of ``fields`` (invalid, unknown) in its message, sorted.

    A name that would not read as one field there is quoted as JSON: an unknown field named ""
    was told "invalid request: check " with nothing after it, and one named " " or "a, b" could
    not be told from the separator or from two fields. ``fields`` keeps each name as sent.
    """
    names = ", ".join(readable_name(name) for name in sorted(fields))
    return InvalidRequest(f"invalid request: check {names}", fields=fields)


def readable_name(name: str) -> str:
    """``name`` as sent when it reads as one field name in a message, else quoted as JSON."""
    plain = name.isprintable() and name == name.strip() and name != "" and "," not in name
    return name if plain else json.dumps(name, ensure_ascii=False)


def field_errors(errors: list[dict[str, Any]]) -> dict[str, str]:
    """pydantic errors → {field: rule}, one entry per invalid field, in the envelope's words."""
    fields: dict[str, str] = {}
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
        message = str(error.get("msg", ""))
        if error.get("type") == "extra_forbidden" and loc:
            fields[loc[0]] = "unknown field"
        elif error.get("type") == "missing" and loc:
            fields[loc[0]] = f"is required and {FIELD_RULES.get(loc[0], 'must be given')}"
        elif "missing:" in message:
            for name in message.split("missing:", 1)[1].split(","):
                name = name.strip()
                fields[name] = f"is required (or give user_id) and {FIELD_RULES[name]}"
        elif loc:
            fields.setdefault(loc[0], FIELD_RULES.get(loc[0], message))
        else:
            fields.setdefault("body", message)
    return fields
