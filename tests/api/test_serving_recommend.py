"""/api/recommend as a lookup: known users, unknown users, no scoring or pandas per request, echo."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pandas as pd
import pytest

from tests.helpers import PROFILE, frame_running

pytestmark = pytest.mark.api


@pytest.fixture
def app(make_app: Any, personal_model_store: Any) -> Any:
    """Served by a model that knows users."""
    return make_app(model_path=personal_model_store, model_dir=personal_model_store)


def _known_user(app: Any) -> int:
    bundle = app.extensions["movierec"].models.require()
    return int(bundle.tables.user_ids[0])


def test_known_user_gets_personal_recommendations_without_rated_movies(
    app: Any, client: Any, auth_headers: dict[str, str], synthetic_data: Any
) -> None:
    user_id = _known_user(app)
    response = client.post("/api/recommend", json={"user_id": user_id, "max_recs": 20}, headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["strategy"] == "personal"
    assert len(body["recommendations"]) == len(set(body["recommendations"])) > 0
    rated = set(synthetic_data.ratings.loc[synthetic_data.ratings["user_id"] == user_id, "movie_id"])
    assert rated, "the chosen user must have ratings for this test to mean anything"
    assert not rated & {item["movie_id"] for item in body["items"]}


def test_known_user_ignores_demographics_and_unknown_user_falls_back_to_them(
    app: Any, client: Any, auth_headers: dict[str, str]
) -> None:
    user_id = _known_user(app)
    personal = client.post("/api/recommend", json={"user_id": user_id, **PROFILE}, headers=auth_headers)
    assert personal.get_json()["strategy"] == "personal"
    segment = client.post("/api/recommend", json={"user_id": 999_999, **PROFILE}, headers=auth_headers)
    assert segment.status_code == 200
    assert segment.get_json()["strategy"] == "segment"


def test_unknown_user_without_demographics_is_404_in_the_envelope(
    client: Any, auth_headers: dict[str, str]
) -> None:
    response = client.post("/api/recommend", json={"user_id": 999_999}, headers=auth_headers)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert "999999" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("user_id", [0, -3, True, "5", 2.5, 2**31, 1e20, 2.0**53 + 2])
def test_invalid_user_id_is_400_naming_the_field(
    client: Any, auth_headers: dict[str, str], user_id: Any
) -> None:
    """The rule names the range: 2**31 is a positive integer, and "must be a positive integer" left
    its sender no clue what was wrong with it."""
    response = client.post("/api/recommend", json={"user_id": user_id}, headers=auth_headers)
    assert response.status_code == 400
    rule = "must be an integer between 1 and 2147483647"
    assert response.get_json()["error"]["fields"] == {"user_id": rule}


def test_request_path_neither_scores_nor_touches_pandas(
    app: Any, client: Any, auth_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving is a lookup: with model scoring and DataFrame construction booby-trapped, it still answers."""
    bundle = app.extensions["movierec"].models.require()
    user_id = _known_user(app)

    def trap(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("pandas or model scoring on the request path")

    monkeypatch.setattr(pd.DataFrame, "__init__", trap)
    monkeypatch.setattr(pd.Series, "__init__", trap)
    if bundle.model is not None:
        monkeypatch.setattr(bundle.model, "score_segments", trap)
        monkeypatch.setattr(bundle.model, "score_users", trap)
    for body in (PROFILE, {"user_id": user_id}, {**PROFILE, "max_recs": 100}):
        response = client.post("/api/recommend", json=body, headers=auth_headers)
        assert response.status_code == 200, response.get_json()


def test_echo_returns_the_body_and_needs_a_token(client: Any, auth_headers: dict[str, str]) -> None:
    body = {"age": 30, "nested": {"a": [1, 2]}, "text": "héllo"}
    response = client.post("/api/echo", json=body, headers=auth_headers)
    assert response.status_code == 200
    assert response.get_json() == body
    unauthenticated = client.post("/api/echo", json=body)
    assert unauthenticated.status_code == 401
    assert unauthenticated.get_json()["error"]["code"] == "unauthorized"
    assert client.post("/api/echo", json=[1, 2], headers=auth_headers).status_code == 400


def test_later_scores_of_one_list_read_the_stored_recommendation_once(
    app: Any, client: Any, auth_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    services = app.extensions["movierec"]
    body = client.post("/api/recommend", json={**PROFILE, "max_recs": 3}, headers=auth_headers).get_json()
    services.recommendations.request_log.flush()  # stored, no longer buffered: the database is asked
    reads: list[str] = []
    read = services.db.served_request
    monkeypatch.setattr(
        services.db, "served_request", lambda request_id: reads.append(request_id) or read(request_id)
    )
    for title in body["recommendations"]:
        score = {"id": body["id"], "movie": title, "score": 4}
        assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200
    assert reads == [body["id"]]
    wrong = {"id": body["id"], "movie": "Not Recommended (1999)", "score": 4}
    response = client.post("/api/recommend/score", json=wrong, headers=auth_headers)
    assert response.status_code == 400 and "movie" in response.get_json()["error"]["fields"]


def _target() -> Any:
    from app.services.recommendations import ScoreTarget

    return ScoreTarget({"M": 1}, "v", {})


def test_score_targets_keep_only_the_most_recently_used() -> None:
    from app.services.recommendations import ScoreTargets

    targets, loads = ScoreTargets(size=2), []

    def resolve(request_id: str) -> Any:
        return targets.resolve(request_id, lambda: loads.append(request_id) or _target())

    first = resolve("a")
    resolve("b")
    assert resolve("a") is first  # remembered, and now the most recent
    resolve("c")  # "b" goes
    assert loads == ["a", "b", "c"]
    resolve("a"), resolve("c"), resolve("b")
    assert loads == ["a", "b", "c", "b"]


def _blocked_in_resolve() -> int:
    """Threads now waiting inside ``ScoreTargets.resolve`` (on a load, or in the load itself)."""
    from app.services.recommendations import ScoreTargets

    return sum(
        frame.f_code.co_name == "wait" and frame_running(frame, ScoreTargets.resolve.__code__) is not None
        for frame in sys._current_frames().values()
    )


def _all_in(pool: ThreadPoolExecutor, n: int, call: Callable[[], Any]) -> list[Future[Any]]:
    """``n`` concurrent calls, returned once every one of them is blocked inside resolve()."""
    futures = [pool.submit(call) for _ in range(n)]
    deadline = time.monotonic() + 60
    while _blocked_in_resolve() < n:
        assert time.monotonic() < deadline, f"only {_blocked_in_resolve()} of {n} calls are waiting"
        time.sleep(0.005)
    return futures


def test_concurrent_scores_of_a_new_list_share_one_load() -> None:
    from app.services.recommendations import ScoreTargets

    targets, loads, release = ScoreTargets(), [], threading.Event()

    def slow_load() -> Any:
        loads.append(1)
        assert release.wait(10)
        return _target()

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = _all_in(pool, 6, lambda: targets.resolve("id", slow_load))
        release.set()
        results = [future.result(timeout=10) for future in futures]
    assert len(loads) == 1
    assert all(result is results[0] for result in results)


def test_a_failed_load_fails_its_waiters_and_is_not_remembered() -> None:
    from app.services.recommendations import ScoreTargets

    targets, loads, release = ScoreTargets(), [], threading.Event()

    def failing_load() -> Any:
        loads.append(1)
        assert release.wait(10)
        raise RuntimeError("database gone")

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = _all_in(pool, 3, lambda: targets.resolve("id", failing_load))
        release.set()
        errors = [future.exception(timeout=10) for future in futures]
    assert len(loads) == 1
    assert all(isinstance(error, RuntimeError) for error in errors)
    targets.resolve("id", lambda: loads.append(2) or _target())  # the next score loads again
    assert loads == [1, 2]


@pytest.mark.parametrize(
    ("overrides", "validated"),
    [({}, True), ({"validate_responses": False}, False), ({"testing": False, "debug": True}, True)],
)
def test_response_bodies_are_checked_against_their_models_only_where_asked(
    make_app: Any, overrides: dict[str, Any], validated: bool
) -> None:
    from flask import jsonify
    from spectree import Response

    from app.api.schemas import Ok
    from app.api.spec import VALIDATE_RESPONSES, spec

    app = make_app(**overrides)
    assert app.config[VALIDATE_RESPONSES] is validated

    @app.post("/test/drifted")
    @spec.validate(resp=Response(HTTP_200=Ok))
    def drifted() -> Any:
        return jsonify({"not": "the documented body"})

    response = app.test_client().post("/test/drifted")
    assert response.status_code == (500 if validated else 200)


def test_production_settings_answer_without_checking_their_own_responses(make_app: Any) -> None:
    from app.api.spec import VALIDATE_RESPONSES

    assert make_app(testing=False).config[VALIDATE_RESPONSES] is False
