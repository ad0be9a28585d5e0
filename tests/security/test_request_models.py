"""Property tests of the request models: what they accept is exactly what API.md promises.

Fuzzing the HTTP surface (tests/api/test_fuzz.py) samples the spec; these go straight at the
pydantic models with hypothesis, over the whole JSON value space of each field, and state the
rule independently of the model (so a loosened bound or a lax type fails here).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.api.schemas import LoginRequest, RecommendRequest, ScoreRequest, field_errors
from app.recommender.segments import OCCUPATIONS

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
)
VALID = {"age": 30, "gender": "M", "occupation": "programmer"}


def is_json_integer_in(value: Any, low: int, high: int) -> bool:
    """The rule: a JSON integer (30 or 30.0; never true/false or "30") within [low, high]."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return low <= value <= high
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return low <= value <= high
    return False


def accepts(model: Any, payload: dict[str, Any]) -> bool:
    try:
        model.model_validate(json.loads(json.dumps(payload)))  # what a JSON body can carry
    except ValidationError:
        return False
    return True


def test_age_true_is_not_an_age() -> None:
    """JSON ``true`` is an int to Python; fuzzing never caught this, so it stays explicit."""
    with pytest.raises(ValidationError) as info:
        RecommendRequest.model_validate({**VALID, "age": True})
    assert set(field_errors(info.value.errors())) == {"age"}
    assert not accepts(RecommendRequest, {**VALID, "age": False})
    assert not accepts(RecommendRequest, {**VALID, "max_recs": True})
    assert not accepts(ScoreRequest, {"id": "x", "movie": "y", "score": True})


def test_age_true_is_refused_over_http(client: Any, auth_headers: dict[str, str]) -> None:
    response = client.post("/api/recommend", json={**VALID, "age": True}, headers=auth_headers)
    assert response.status_code == 400
    assert set(response.get_json()["error"]["fields"]) == {"age"}


@SETTINGS
@given(age=json_values)
def test_age_accepts_exactly_json_integers_1_to_120(age: Any) -> None:
    if isinstance(age, float) and not math.isfinite(age):
        return  # not representable in JSON
    assert accepts(RecommendRequest, {**VALID, "age": age}) == is_json_integer_in(age, 1, 120)


@SETTINGS
@given(max_recs=json_values)
def test_max_recs_accepts_exactly_json_integers_1_to_100_or_null(max_recs: Any) -> None:
    if isinstance(max_recs, float) and not math.isfinite(max_recs):
        return
    expected = max_recs is None or is_json_integer_in(max_recs, 1, 100)  # null: absent, the default
    assert accepts(RecommendRequest, {**VALID, "max_recs": max_recs}) == expected


@SETTINGS
@given(gender=json_values, occupation=json_values)
def test_gender_and_occupation_are_closed_vocabularies(gender: Any, occupation: Any) -> None:
    if any(isinstance(v, float) and not math.isfinite(v) for v in (gender, occupation)):
        return
    expected = gender in ("M", "F", "O") and isinstance(occupation, str) and occupation in OCCUPATIONS
    assert accepts(RecommendRequest, {"age": 30, "gender": gender, "occupation": occupation}) == expected


@SETTINGS
@given(extra=st.text(min_size=1, max_size=12), value=json_scalars)
def test_unknown_fields_are_refused_and_named(extra: str, value: Any) -> None:
    if extra in RecommendRequest.model_fields or (isinstance(value, float) and not math.isfinite(value)):
        return
    with pytest.raises(ValidationError) as info:
        RecommendRequest.model_validate({**VALID, extra: value})
    assert field_errors(info.value.errors()) == {extra: "unknown field"}


@SETTINGS
@given(fields=st.sets(st.sampled_from(["age", "gender", "occupation"]), min_size=1))
def test_every_missing_demographic_is_named_unless_user_id(fields: set[str]) -> None:
    partial = {k: v for k, v in VALID.items() if k not in fields}
    with pytest.raises(ValidationError) as info:
        RecommendRequest.model_validate(partial)
    assert set(field_errors(info.value.errors())) == fields
    assert accepts(RecommendRequest, {**partial, "user_id": 7})


@SETTINGS
@given(score=json_values)
def test_score_accepts_exactly_finite_numbers_from_half_to_five(score: Any) -> None:
    if isinstance(score, float) and not math.isfinite(score):
        # NaN/Infinity are not JSON, but Python's json module would send them: refuse them too
        with pytest.raises(ValidationError):
            ScoreRequest.model_validate({"id": "x", "movie": "y", "score": score})
        return
    number = isinstance(score, int | float) and not isinstance(score, bool)
    expected = number and 0.5 <= score <= 5
    assert accepts(ScoreRequest, {"id": "x", "movie": "y", "score": score}) == expected


@SETTINGS
@given(password=json_values)
def test_login_takes_one_non_empty_string(password: Any) -> None:
    if isinstance(password, float) and not math.isfinite(password):
        return
    expected = isinstance(password, str) and 1 <= len(password) <= 1024
    assert accepts(LoginRequest, {"session_password": password}) == expected
