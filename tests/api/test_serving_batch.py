"""/api/recommend/batch: up to 1,000 requests, answered or rejected one by one."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import PROFILE, watch_reads

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


NOT_OBJECTS = [5, 2.5, "age=30", None, True, [PROFILE], []]


def test_an_item_that_is_not_an_object_is_its_own_error(
    app: Any, client: Any, auth_headers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item that is not a JSON object is refused alone, as /api/recommend refuses such a body;
    the other items are answered, logged and counted by the breaker as before (a non-object item
    made the whole batch a 400)."""
    recommendations = app.extensions["movierec"].recommendations
    assert recommendations.guard is not None
    logged: list[str] = []
    calls: list[str] = []
    append, record_call = recommendations.request_log.append, recommendations.guard.breaker.record_call

    def spy_append(rows: Any) -> None:
        rows = list(rows)
        logged.extend(row["id"] for row in rows)
        append(rows)

    def spy_record_call(version: str, *args: Any) -> None:
        calls.append(version)
        record_call(version, *args)

    monkeypatch.setattr(recommendations.request_log, "append", spy_append)
    monkeypatch.setattr(recommendations.guard.breaker, "record_call", spy_record_call)
    requests = [PROFILE, *NOT_OBJECTS, {**PROFILE, "max_recs": 2}]
    response = client.post("/api/recommend/batch", json={"requests": requests}, headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    results = body["results"]
    assert (body["succeeded"], body["failed"]) == (2, len(NOT_OBJECTS))
    json_headers = {**auth_headers, "Content-Type": "application/json"}
    alone = client.post("/api/recommend", data="5", headers=json_headers)
    assert alone.status_code == 400
    for result in results[1:-1]:
        assert result == alone.get_json()  # the same envelope /api/recommend answers such a body
    assert result["error"]["code"] == "invalid_request" and result["error"]["fields"] == {
        "body": "must be a JSON object"
    }
    assert len(results[0]["recommendations"]) == 10 and len(results[-1]["recommendations"]) == 2
    assert logged == [results[0]["id"], results[-1]["id"]]  # only the answered items, in one go
    assert len(calls) == 2


def test_the_spec_says_what_an_item_is(client: Any) -> None:
    """The schema accepts any item (each is answered on its own) and says it is a recommend body."""
    spec = client.get("/openapi.json").get_json()
    body = spec["paths"]["/api/recommend/batch"]["post"]["requestBody"]["content"]["application/json"]
    name = body["schema"]["$ref"].rsplit("/", 1)[1]
    items = spec["components"]["schemas"][name]["properties"]["requests"]["items"]
    assert "type" not in items  # not only objects: any other value is answered with an error
    assert "/api/recommend body" in items["description"]


def test_batch_needs_a_token(client: Any) -> None:
    response = client.post("/api/recommend/batch", json={"requests": [PROFILE]})
    assert response.status_code == 401


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_items_naming_a_user_leave_out_what_they_rated_in_a_bounded_number_of_reads(
    make_app: Any,
    personal_model_store: Any,
    auth_headers: dict,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """An item with a user id left out only what the bundle knew at training: a movie the user had
    scored since on a list served under their id was recommended to them again. It is left out now,
    as by /api/users/<id>/recommendations, and a batch of 1,000 such items reads the database twice,
    not once (or twice) per item."""
    url = {"database_url": request.getfixturevalue("postgres_url")} if database == "postgresql" else {}
    app = make_app(model_path=personal_model_store, model_dir=personal_model_store, **url)
    client = app.test_client()
    services = app.extensions["movierec"]
    users = [int(u) for u in services.models.require().tables.user_ids[:40]]
    asked = [{"user_id": u, "max_recs": 5} for u in users] + [{"user_id": 999_999, **PROFILE, "max_recs": 5}]
    first = client.post("/api/recommend/batch", json={"requests": asked}, headers=auth_headers).get_json()
    scored = {}
    for position in (0, 3, 7, len(asked) - 1):  # three known users and an id nobody has features for
        served = first["results"][position]
        score = {"id": served["id"], "movie": served["recommendations"][0], "score": 1}
        assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200
        scored[position] = served["items"][0]["movie_id"]
    services.recommendations.feedback.drain()
    reads = watch_reads(services.db)
    requests = [*asked, PROFILE] * 24  # 1,008 items: the first 1,000 are sent
    response = client.post("/api/recommend/batch", json={"requests": requests[:1000]}, headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["succeeded"], body["failed"]) == (1000, 0)
    for n, result in enumerate(body["results"]):
        position = n % (len(asked) + 1)
        before = first["results"][position] if position < len(asked) else None
        movies = [item["movie_id"] for item in result["items"]]
        if position in scored:
            assert scored[position] not in movies, (n, position)
            assert movies[:4] == [item["movie_id"] for item in before["items"][1:]]
        elif before is not None:
            assert movies == [item["movie_id"] for item in before["items"]], (n, position)
    assert len(reads) == 2, reads  # the users' stored features, their scores
