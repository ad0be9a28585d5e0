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

from tests.helpers import PROFILE, frame_running, watch_reads

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


def _recommended(client: Any, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/recommend", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    return dict(response.get_json())


def _movies(served: dict[str, Any]) -> list[int]:
    return [item["movie_id"] for item in served["items"]]


def _score_first(app: Any, client: Any, headers: dict[str, str], served: dict[str, Any]) -> int:
    """Score the first movie of ``served`` and wait until the score is in the feedback table."""
    score = {"id": served["id"], "movie": served["recommendations"][0], "score": 2}
    assert client.post("/api/recommend/score", json=score, headers=headers).status_code == 200
    app.extensions["movierec"].recommendations.feedback.drain()  # in the table (~0.1 s later)
    return int(served["items"][0]["movie_id"])


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_movie_the_named_user_rated_since_the_model_is_not_recommended_to_them_again(
    make_app: Any,
    personal_model_store: Any,
    auth_headers: dict[str, str],
    synthetic_data: Any,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """API.md: for a known user, never a movie that user already rated. /api/users/<id>/recommendations
    left out what the user scored since the model was trained and what a newer features snapshot
    says they rated; /api/recommend naming the same user knew only the bundle, so the movie just
    scored came back first."""
    from app.storage.user_features import replace_user_features
    from tests.api.test_serving_users import _rows

    url = {"database_url": request.getfixturevalue("postgres_url")} if database == "postgresql" else {}
    app = make_app(model_path=personal_model_store, model_dir=personal_model_store, **url)
    client = app.test_client()
    uid, other = (int(u) for u in app.extensions["movierec"].models.require().tables.user_ids[:2])
    others = _movies(_recommended(client, auth_headers, {"user_id": other, "max_recs": 100}))
    first = _recommended(client, auth_headers, {"user_id": uid, "max_recs": 5})
    scored = _score_first(app, client, auth_headers, first)
    again = _recommended(client, auth_headers, {"user_id": uid, "max_recs": 5})
    assert again["strategy"] == "personal" and scored not in _movies(again)
    assert _movies(again)[:4] == _movies(first)[1:]
    users_api = client.get(f"/api/users/{uid}/recommendations?max_recs=5", headers=auth_headers).get_json()
    assert users_api["recommendations"] == again["recommendations"]  # the two endpoints agree
    # an id nobody has features for, answered for its segment: at least what it scored is left out
    stranger = {"user_id": 999_999, **PROFILE, "max_recs": 5}
    segment = _recommended(client, auth_headers, stranger)
    stranger_scored = _score_first(app, client, auth_headers, segment)
    assert stranger_scored not in _movies(_recommended(client, auth_headers, stranger))
    # a features snapshot newer than the model: what it says the user rated is left out too,
    # and the scores since (within a day before its load) still are
    rows = _rows(synthetic_data, keep=120)
    newer = _movies(again)[0]
    mine = next(row for row in rows if row["user_id"] == uid)
    mine["rated_movies"] = sorted({*mine["rated_movies"], newer})
    replace_user_features(app.extensions["movierec"].db, rows, snapshot_id="newer-than-the-model")
    latest = _recommended(client, auth_headers, {"user_id": uid, "max_recs": 5})
    assert not {scored, newer} & set(_movies(latest))
    assert _movies(latest)[:4] == _movies(again)[1:]
    assert stranger_scored not in _movies(_recommended(client, auth_headers, stranger))
    # another user's list is theirs alone
    assert _movies(_recommended(client, auth_headers, {"user_id": other, "max_recs": 100})) == others


def test_a_request_without_a_user_id_asks_no_features_and_reads_no_database(
    app: Any, client: Any, auth_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The benchmark's hot path (a profile, no user id) pays nothing for the exclusion of what a
    named user rated: the features service booby-trapped and every statement watched, /api/recommend,
    a batch of profiles and the web form still answer, with no read."""
    from tests.api.test_ui import recommend, titles_of, ui_login

    services = app.extensions["movierec"]

    asked: list[str] = []

    class Trap:
        def __getattr__(self, name: str) -> Any:
            asked.append(name)
            raise AssertionError(f"user features asked ({name}) for a request naming no user")

    csrf = ui_login(client)  # logging in may read (the revocation list): before the watch
    reads = watch_reads(services.db)
    monkeypatch.setattr(services, "user_features", Trap())
    for body in (PROFILE, {**PROFILE, "max_recs": 100}, {**PROFILE, "user_id": None}):
        _recommended(client, auth_headers, body)
    batch = client.post("/api/recommend/batch", json={"requests": [PROFILE] * 50}, headers=auth_headers)
    assert batch.status_code == 200 and batch.get_json()["succeeded"] == 50
    page = recommend(client, csrf)
    assert page.status_code == 200 and len(titles_of(page.text)) == 5
    assert reads == [] and asked == []
    # the trap is live: a request naming a user asks the features service
    response = client.post("/api/recommend", json={"user_id": _known_user(app)}, headers=auth_headers)
    assert response.status_code == 500 and asked == ["rated_by"]


def test_with_the_database_down_or_no_features_a_named_user_gets_the_models_own_exclusion(
    app: Any,
    client: Any,
    auth_headers: dict[str, str],
    make_app: Any,
    personal_model_store: Any,
    tmp_path: Any,
) -> None:
    """What a user rated beyond the model's own exclusion needs the database (their features and
    scores): without it the list is the model's, never a 503, and the answers the endpoints gave
    before (an unknown id without demographics: 404) stay as they were."""
    from tests.helpers import database_down

    known = _known_user(app)
    mine = _recommended(client, auth_headers, {"user_id": known})  # nothing scored: the model's list
    stranger = {"user_id": 999_999, **PROFILE}
    segment = _recommended(client, auth_headers, stranger)
    batch = [{"user_id": known}, stranger, PROFILE, {"user_id": 999_999}]
    with database_down(app):
        assert _movies(_recommended(client, auth_headers, {"user_id": known})) == _movies(mine)
        assert _movies(_recommended(client, auth_headers, stranger)) == _movies(segment)
        response = client.post("/api/recommend", json={"user_id": 999_999}, headers=auth_headers)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
        response = client.post("/api/recommend/batch", json={"requests": batch}, headers=auth_headers)
        assert response.status_code == 200, response.get_json()
        results = response.get_json()["results"]
        assert [_movies(r) for r in results[:2]] == [_movies(mine), _movies(segment)]
        assert results[3]["error"]["code"] == "not_found"
    # no feature snapshot and no local data to compute features from: the user's scores alone
    empty = tmp_path / "no-data"
    empty.mkdir()
    bare = make_app(model_path=personal_model_store, model_dir=personal_model_store, data_dir=empty)
    bare_client = bare.test_client()
    first = _recommended(bare_client, auth_headers, {"user_id": known})
    assert _movies(first) == _movies(mine)
    scored = _score_first(bare, bare_client, auth_headers, first)
    assert scored not in _movies(_recommended(bare_client, auth_headers, {"user_id": known}))
