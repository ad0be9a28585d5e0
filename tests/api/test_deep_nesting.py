"""Deeply nested JSON is a bad request, never a 500.

orjson reads documents nested up to 1,024 levels but writes at most 254. A body whose invalid
field held a value nested ~255 levels deep was refused by pydantic, and spectree then wrote the
validation errors (which carry the refused input) with ``jsonify`` before the project's hook
turned them into the envelope: ``TypeError: Recursion limit reached``, a 500 on every endpoint
with a validated body. ``/api/echo`` answered a valid, deeply nested object with a 500 the same
way, writing it back.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import login

pytestmark = pytest.mark.api

DEEP = "[" * 300 + "]" * 300


def _post(client: Any, path: str, body: str, headers: dict[str, str]) -> Any:
    return client.post(path, data=body, headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("path", "body", "field", "role"),
    [
        ("/api/login", '{"session_password": %s}'.replace("%s", DEEP), "session_password", None),
        ("/api/recommend", '{"age": %s, "gender": "M", "occupation": "programmer"}'.replace("%s", DEEP),
         "age", "client"),
        ("/api/recommend/score", '{"id": %s, "movie": "m", "score": 3}'.replace("%s", DEEP), "id", "client"),
        ("/api/predict/stream",
         '{"age": 30, "gender": "M", "occupation": "programmer", "movie_id": %s}'.replace("%s", DEEP),
         "movie_id", "client"),
        ("/api/recommend/batch", '{"requests": {"a": %s}}'.replace("%s", DEEP), "requests", "client"),
        ("/api/admin/reload", '{"version": %s}'.replace("%s", DEEP), "version", "admin"),
        ("/api/admin/breaker/reset", '{"x": %s}'.replace("%s", DEEP), "x", "admin"),
    ],
)  # fmt: skip
def test_a_deeply_nested_invalid_field_is_400(
    client: Any, path: str, body: str, field: str, role: str | None
) -> None:
    from tests.helpers import ADMIN_PASSWORD

    headers = {} if role is None else login(client, ADMIN_PASSWORD) if role == "admin" else login(client)
    response = _post(client, path, body, headers)
    assert response.status_code == 400, response.get_data()[:200]
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["fields"]


def test_a_deeply_nested_batch_item_is_its_own_error(client: Any) -> None:
    """An item is any value, answered on its own: a deep list is that item's error, not a 500."""
    body = '{"requests": [%s, {"age": %s, "gender": "M", "occupation": "programmer"}]}'.replace("%s", DEEP)
    response = _post(client, "/api/recommend/batch", body, login(client))
    assert response.status_code == 200, response.get_data()[:200]
    results = response.get_json()["results"]
    assert results[0]["error"]["fields"] == {"body": "must be a JSON object"}
    assert "age" in results[1]["error"]["fields"]


def test_echo_refuses_an_object_too_deep_to_write_back(client: Any, auth_headers: dict) -> None:
    response = _post(client, "/api/echo", '{"a": %s}'.replace("%s", DEEP), auth_headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert "body" in response.get_json()["error"]["fields"]


def test_echo_still_writes_back_moderately_nested_objects(client: Any, auth_headers: dict) -> None:
    body = '{"a": %s}'.replace("%s", "[" * 200 + "]" * 200)
    response = _post(client, "/api/echo", body, auth_headers)
    assert response.status_code == 200
    assert response.get_data().strip() == body.replace(" ", "").encode()


@pytest.mark.parametrize("validate_responses", [True, False])
def test_echo_writes_back_an_object_at_the_documented_depth(make_app: Any, validate_responses: bool) -> None:
    """254 levels (the object and 253 arrays) are echoed, as docs/serving.md says. With response
    validation on (the tests, ``--debug``), spectree re-read the answer with pydantic's own JSON
    parser, which stops at 200 levels: every body nested 202 to 254 levels deep was a 500."""
    client = make_app(validate_responses=validate_responses).test_client()
    for arrays in (201, 253):
        body = '{"a":' + "[" * arrays + "]" * arrays + "}"
        response = _post(client, "/api/echo", body, login(client))
        assert response.status_code == 200, (arrays, response.get_data()[:200])
        assert response.get_data().strip() == body.encode()
