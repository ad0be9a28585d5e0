"""Every field an error envelope names carries the project's rule text (API.md), not pydantic's.

A field's rule says what the field must be, in the words ``FIELD_RULES`` holds for it, whichever
check refused it: a type, a bound, a length. Before, the serving extensions' fields (the batch
lists, ``movie_id``, the reload body) answered with pydantic's own wording ("Input should be a
valid list", "String should have at least 1 character"), and a session password over its length
limit was told it "must be a non-empty string".
"""

from __future__ import annotations

from typing import Any

import pytest

from app.api.schemas import FIELD_RULES

pytestmark = pytest.mark.api

RECORD = {"age": 30, "gender": "M", "occupation": "programmer", "movie_id": 1}
PROFILE = {"age": 30, "gender": "M", "occupation": "programmer"}

CASES = [
    ("/api/login", {"session_password": 5}, "session_password", None),
    ("/api/login", {"session_password": "x" * 1_025}, "session_password", None),
    ("/api/predict/stream", {**RECORD, "movie_id": "1"}, "movie_id", "client"),
    ("/api/predict/stream", {**RECORD, "movie_id": 0}, "movie_id", "client"),
    ("/api/predict/batch", {"instances": []}, "instances", "client"),
    ("/api/predict/batch", {"instances": "x"}, "instances", "client"),
    ("/api/predict/batch", {"instances": [RECORD] * 10_001}, "instances", "client"),
    ("/api/recommend/batch", {"requests": "x"}, "requests", "client"),
    ("/api/recommend/batch", {"requests": []}, "requests", "client"),
    ("/api/recommend/batch", {"requests": {"0": PROFILE}}, "requests", "client"),
    ("/api/recommend/batch", {"requests": [PROFILE] * 1_001}, "requests", "client"),
    ("/api/admin/reload", {"version": 5}, "version", "admin"),
    ("/api/admin/reload", {"version": ""}, "version", "admin"),
    ("/api/admin/reload", {"version": "v" * 129}, "version", "admin"),
    ("/api/admin/reload", {"version": "../x"}, "version", "admin"),
    ("/api/admin/reload", {"version": ".hidden"}, "version", "admin"),
    ("/api/admin/reload", {"wait": "yes"}, "wait", "admin"),
]


@pytest.mark.parametrize(("path", "body", "field", "token"), CASES)
def test_each_refused_field_is_named_with_its_rule(
    client: Any, auth_headers: dict, admin_headers: dict, path: str, body: dict, field: str, token: str | None
) -> None:
    headers = {"client": auth_headers, "admin": admin_headers}.get(token or "", {})
    response = client.post(path, json=body, headers=headers)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["fields"] == {field: FIELD_RULES[field]}
    assert error["message"] == f"invalid request: check {field}"


def test_rules_state_the_limits_the_schemas_enforce() -> None:
    assert "10,000" in FIELD_RULES["instances"]
    assert "1,000" in FIELD_RULES["requests"]
    assert "1024" in FIELD_RULES["session_password"]
    assert "128" in FIELD_RULES["version"]


@pytest.mark.parametrize(
    ("name", "shown"),
    [("", '""'), (" ", '" "'), ("a, b", '"a, b"'), ("colour", "colour"), ("âge", "âge")],
)
def test_an_unknown_field_is_named_readably_in_the_message(
    client: Any, auth_headers: dict, name: str, shown: str
) -> None:
    """An unknown field named "" was told "invalid request: check " with nothing after it, and one
    named " " or "a, b" could not be told from the separator or from two fields. Such a name is
    quoted in the message (body, batch item and query string alike); ``fields`` keeps the name
    as sent."""
    expected = f"invalid request: check {shown}"
    body = client.post("/api/recommend", json={**PROFILE, name: 1}, headers=auth_headers).get_json()
    assert body["error"]["message"] == expected and body["error"]["fields"] == {name: "unknown field"}
    batch = client.post(
        "/api/recommend/batch", json={"requests": [{**PROFILE, name: 1}]}, headers=auth_headers
    ).get_json()
    (item,) = batch["results"]
    assert item["error"]["message"] == expected and item["error"]["fields"] == {name: "unknown field"}
    query = client.post(
        "/api/recommend", query_string={name: "1"}, json=PROFILE, headers=auth_headers
    ).get_json()
    assert query["error"]["message"] == expected and query["error"]["fields"] == {name: "unknown field"}
