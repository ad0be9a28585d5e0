"""/api/recommend/batch: up to 1,000 requests, answered or rejected one by one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import PROFILE

pytestmark = pytest.mark.api


@pytest.fixture
def app(make_app: Any, personal_model_store: Any) -> Any:
    return make_app(model_path=personal_model_store, model_dir=personal_model_store)


def test_each_item_is_answered_or_rejected_in_order(app: Any, client: Any, auth_headers: dict) -> None:
    user_id = int(app.extensions["movierec"].models.require().tables.user_ids[0])
    requests = [
        PROFILE,
        {"user_id": user_id, "max_recs": 3},
        {**PROFILE, "age": 0},
        {"user_id": 999_999},
        {"gender": "M"},
        {**PROFILE, "colour": "red"},
        {**PROFILE, "max_recs": 5},
    ]
    response = client.post("/api/recommend/batch", json={"requests": requests}, headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    results = body["results"]
    assert len(results) == len(requests)
    assert (body["succeeded"], body["failed"]) == (3, 4)
    assert results[0]["strategy"] == "segment" and len(results[0]["recommendations"]) == 10
    assert results[1]["strategy"] == "personal" and len(results[1]["recommendations"]) == 3
    assert results[2]["error"]["code"] == "invalid_request" and "age" in results[2]["error"]["fields"]
    assert results[3]["error"]["code"] == "not_found"
    assert set(results[4]["error"]["fields"]) == {"age", "occupation"}
    assert results[5]["error"]["fields"] == {"colour": "unknown field"}
    assert len(results[6]["recommendations"]) == 5
    ids = [r["id"] for r in results if "id" in r]
    assert len(set(ids)) == 3
    assert all(r.get("model_version", body["model_version"]) == body["model_version"] for r in results)
    # every answered item was logged: its id takes a score
    for result in (results[0], results[1]):
        score = {"id": result["id"], "movie": result["recommendations"][0], "score": 4}
        assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200


def test_thousand_requests_are_accepted_and_more_are_not(client: Any, auth_headers: dict) -> None:
    ok = client.post("/api/recommend/batch", json={"requests": [PROFILE] * 1_000}, headers=auth_headers)
    assert ok.status_code == 200
    assert ok.get_json()["succeeded"] == 1_000
    too_many = client.post("/api/recommend/batch", json={"requests": [PROFILE] * 1_001}, headers=auth_headers)
    assert too_many.status_code == 400
    assert "requests" in too_many.get_json()["error"]["fields"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"requests": []}, "requests"), ({}, "requests"), ({"requests": PROFILE}, "requests"),
     ({"requests": [PROFILE], "more": 1}, "more")],
)  # fmt: skip
def test_invalid_batches_are_400(client: Any, auth_headers: dict, body: dict, field: str) -> None:
    response = client.post("/api/recommend/batch", json=body, headers=auth_headers)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]


def test_non_object_items_are_rejected_per_item_or_whole(client: Any, auth_headers: dict) -> None:
    response = client.post("/api/recommend/batch", json={"requests": [PROFILE, 5]}, headers=auth_headers)
    assert response.status_code == 400  # the schema says items are objects


def test_batch_needs_a_token(client: Any) -> None:
    response = client.post("/api/recommend/batch", json={"requests": [PROFILE]})
    assert response.status_code == 401
