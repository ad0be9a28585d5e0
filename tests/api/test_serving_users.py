"""/api/users/<id>/features and /api/users/<id>/recommendations (seed 001)."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from app.recommender.features import GENRE_SLUGS, user_features
from app.storage.user_features import replace_user_features
from tests.api.test_metrics import scrape
from tests.helpers import fail_for_path

pytestmark = pytest.mark.api


@pytest.fixture
def app(make_app: Any, personal_model_store: Any) -> Any:
    return make_app(model_path=personal_model_store, model_dir=personal_model_store)


def _rows(synthetic_data: Any, keep: int) -> list[dict[str, Any]]:
    frame = user_features(synthetic_data.ratings, synthetic_data.users, synthetic_data.items).head(keep)
    rows = []
    for record in frame.to_dict("records"):
        row = {k: v for k, v in record.items() if not k.startswith(("share_", "liked_share_"))}
        row["genre_share"] = {k[6:]: v for k, v in record.items() if k.startswith("share_")}
        row["liked_genre_share"] = {k[12:]: v for k, v in record.items() if k.startswith("liked_share_")}
        ratings = synthetic_data.ratings
        row["rated_movies"] = sorted(
            int(m) for m in set(ratings.loc[ratings["user_id"] == row["user_id"], "movie_id"])
        )
        rows.append(row)
    return rows


def test_features_are_computed_from_local_data_until_a_snapshot_is_loaded(
    app: Any, client: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    user = synthetic_data.users.iloc[3]
    uid = int(user["user_id"])
    response = client.get(f"/api/users/{uid}/features", headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["source"] == "computed" and body["snapshot_id"] is None
    assert body["as_of"].endswith("+00:00")
    n_ratings = int((synthetic_data.ratings["user_id"] == uid).sum())
    assert body["features"]["n_ratings"] == n_ratings
    assert (body["features"]["age"], body["features"]["gender"]) == (int(user["age"]), user["gender"])
    assert set(body["features"]["genre_share"]) >= {"action", "romance"}
    for padded in (f"00{uid}", "0" * 5000 + str(uid)):  # leading zeros, however many, are the same id
        assert client.get(f"/api/users/{padded}/features", headers=auth_headers).get_json() == body


def test_features_come_from_the_loaded_snapshot(
    app: Any, client: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    db = app.extensions["movierec"].db
    replace_user_features(db, _rows(synthetic_data, keep=10), snapshot_id="snap-1")
    uid = int(synthetic_data.users.iloc[0]["user_id"])
    body = client.get(f"/api/users/{uid}/features", headers=auth_headers).get_json()
    assert body["source"] == "feature_store" and body["snapshot_id"] == "snap-1"
    assert body["as_of"].endswith("+00:00")  # with its offset, as a computed answer's (SQLite has none)
    assert body["features"]["n_ratings"] == int((synthetic_data.ratings["user_id"] == uid).sum())
    # a user the loaded snapshot does not have is unknown, even if local data has them
    missing = int(synthetic_data.users.iloc[50]["user_id"])
    response = client.get(f"/api/users/{missing}/features", headers=auth_headers)
    assert response.status_code == 404


@pytest.mark.parametrize("raw", ["abc", "0", "000", "-1", "1.5", "99999999999", "2147483648", "1" * 5000])
def test_invalid_user_ids_are_400(client: Any, auth_headers: dict, raw: str) -> None:
    for suffix in ("features", "recommendations"):
        response = client.get(f"/api/users/{raw}/{suffix}", headers=auth_headers)
        assert response.status_code == 400
        rule = "must be an integer between 1 and 2147483647"
        assert response.get_json()["error"]["fields"] == {"user_id": rule}


def test_unknown_user_is_404(client: Any, auth_headers: dict) -> None:
    for suffix in ("features", "recommendations"):
        response = client.get(f"/api/users/99999/{suffix}", headers=auth_headers)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"


def test_users_endpoints_need_a_token(client: Any) -> None:
    for suffix in ("features", "recommendations"):
        assert client.get(f"/api/users/1/{suffix}").status_code == 401


def test_recommendations_for_a_known_user_are_personal_and_scoreable(
    app: Any, client: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    uid = int(app.extensions["movierec"].models.require().tables.user_ids[0])
    response = client.get(f"/api/users/{uid}/recommendations?max_recs=7", headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["strategy"] == "personal" and body["user_id"] == uid and len(body["recommendations"]) == 7
    rated = set(synthetic_data.ratings.loc[synthetic_data.ratings["user_id"] == uid, "movie_id"])
    assert not rated & {item["movie_id"] for item in body["items"]}
    score = {"id": body["id"], "movie": body["recommendations"][0], "score": 5}
    assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200


def test_the_access_line_of_a_users_recommendations_names_the_model(
    app: Any, client: Any, auth_headers: dict, capsys: Any
) -> None:
    """/api/recommend's access line named the model that answered; this list, served by the same
    bundle, logged ``model_version: null``."""
    uid = int(app.extensions["movierec"].models.require().tables.user_ids[0])
    capsys.readouterr()
    response = client.get(f"/api/users/{uid}/recommendations", headers=auth_headers)
    assert response.status_code == 200, response.get_json()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "movierec.access"]
    assert [line["model_version"] for line in access] == [response.get_json()["model_version"]]


def test_head_of_recommendations_records_nothing(app: Any, client: Any, auth_headers: dict) -> None:
    """HEAD answers with GET's headers, but issues no list: nobody receives its id (each HEAD
    wrote a request row for a list no client had)."""
    log = app.extensions["movierec"].recommendations.request_log
    uid = int(app.extensions["movierec"].models.require().tables.user_ids[0])

    def rows() -> int:
        stats = log.stats()
        return int(stats["pending"] + stats["written"])

    def served() -> float:  # the recommendations metric (HEADs were counted as lists served)
        samples = scrape(client).get("movierec_recommendations_total", [])  # absent until the first
        return sum(s.value for s in samples if s.labels["strategy"] == "personal")

    before, counted = rows(), served()
    head = client.head(f"/api/users/{uid}/recommendations", headers=auth_headers)
    assert head.status_code == 200 and not head.data and rows() == before and served() == counted
    assert head.headers["Content-Type"] == "application/json"
    assert client.get(f"/api/users/{uid}/recommendations", headers=auth_headers).status_code == 200
    assert rows() == before + 1 and served() == counted + 1


def test_recommendations_for_a_user_the_model_does_not_know_use_their_features(
    make_app: Any, model_store: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    """Their segment's list without the movies they rated (it used to be the segment's list as is,
    rated movies included)."""
    app = make_app()  # the session bundle's served model has no user tables
    client = app.test_client()
    user = synthetic_data.users.iloc[5]
    uid = int(user["user_id"])
    ratings = synthetic_data.ratings
    rated = set(ratings.loc[ratings["user_id"] == uid, "movie_id"])
    profile = {"age": int(user["age"]), "gender": user["gender"], "occupation": user["occupation"]}
    full = client.post("/api/recommend", json={**profile, "max_recs": 100}, headers=auth_headers).get_json()
    unseen = [item["title"] for item in full["items"] if item["movie_id"] not in rated]
    assert rated & {item["movie_id"] for item in full["items"][:10]}, (
        "the case needs a rated movie in the top 10"
    )
    body = client.get(f"/api/users/{uid}/recommendations", headers=auth_headers).get_json()
    assert body["strategy"] == "segment" and body["features_source"] == "computed"
    assert body["recommendations"] == unseen[:10]
    # from a stored snapshot, the same
    replace_user_features(app.extensions["movierec"].db, _rows(synthetic_data, keep=10), snapshot_id="snap-1")
    body = client.get(f"/api/users/{uid}/recommendations", headers=auth_headers).get_json()
    assert body["features_source"] == "feature_store" and body["recommendations"] == unseen[:10]
    # and the list as served is the one its id scores against
    score = {"id": body["id"], "movie": body["recommendations"][0], "score": 4}
    assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200


def test_known_users_lists_leave_out_movies_rated_since_the_model(
    app: Any, client: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    """A features snapshot newer than the serving bundle knows ratings the bundle's table did not
    leave out; the predictions API built on those features leaves them out too."""
    uid = int(app.extensions["movierec"].models.require().tables.user_ids[0])
    personal = client.get(f"/api/users/{uid}/recommendations?max_recs=12", headers=auth_headers).get_json()
    rows = [row for row in _rows(synthetic_data, keep=120) if row["user_id"] == uid]
    since = [item["movie_id"] for item in personal["items"][:3]]  # rated after the bundle was trained
    rows[0]["rated_movies"] = sorted(set(rows[0]["rated_movies"]) | set(since))
    replace_user_features(app.extensions["movierec"].db, rows, snapshot_id="snap-2")
    body = client.get(f"/api/users/{uid}/recommendations?max_recs=9", headers=auth_headers).get_json()
    assert body["strategy"] == "personal" and body["features_source"] == "feature_store"
    assert [item["movie_id"] for item in body["items"]] == [
        item["movie_id"] for item in personal["items"][3:12]
    ]
    # /api/recommend naming the user leaves them out too (until 2026-12-07 it knew only the bundle)
    direct = client.post(
        "/api/recommend", json={"user_id": uid, "max_recs": 3}, headers=auth_headers
    ).get_json()
    assert [item["movie_id"] for item in direct["items"]] == [
        item["movie_id"] for item in personal["items"][3:6]
    ]


@pytest.mark.parametrize(
    "query",
    ["max_recs=0", "max_recs=101", "max_recs=abc", "colour=red", "max_recs=7_0", "max_recs=%207",
     "max_recs=7.0", "max_recs=-5", "max_recs=", "max_recs=%D9%A3"],
)  # fmt: skip
def test_recommendations_query_is_validated(client: Any, auth_headers: dict, query: str) -> None:
    response = client.get(f"/api/users/1/recommendations?{query}", headers=auth_headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["fields"]


def test_max_recs_in_the_query_is_read_as_digits(app: Any, client: Any, auth_headers: dict) -> None:
    uid = int(app.extensions["movierec"].models.require().tables.user_ids[0])
    # leading zeros, however many, as in the path's user id ("0000000007" was a 400 saying that
    # max_recs must be between 1 and 100, and "000000007" was 7)
    for text, expected in (("7", 7), ("007", 7), ("12", 12), ("0000000007", 7), ("0" * 5000 + "12", 12)):
        response = client.get(f"/api/users/{uid}/recommendations?max_recs={text}", headers=auth_headers)
        assert response.status_code == 200, (text, response.get_json())
        assert len(response.get_json()["recommendations"]) == expected
    for text in ("0" * 20, "1" + "0" * 20):  # still within the bounds, and never a 4,300-digit int()
        response = client.get(f"/api/users/{uid}/recommendations?max_recs={text}", headers=auth_headers)
        assert response.status_code == 400, text


def test_malformed_local_data_is_a_503_naming_the_problem(
    make_app: Any, auth_headers: dict, tmp_path: Any
) -> None:
    """With no snapshot loaded the features are computed from the local files; a bad file there
    (a rating of 9) was a bare 500 from deep inside the loader."""
    from tests.synthetic import write_grouplens

    directory = write_grouplens(tmp_path / "bad-data")
    with (directory / "u.data").open("a") as handle:
        handle.write("1\t3\t9\t880000000\n")
    client = make_app(data_dir=directory).test_client()
    response = client.get("/api/users/1/features", headers=auth_headers)
    assert response.status_code == 503, response.get_json()
    assert "rating must be 0.5..5.0" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("problem", ["partial layout", "directory", "unreadable"])
def test_unusable_local_data_is_a_503_naming_the_files_not_the_servers_paths(
    make_app: Any, auth_headers: dict, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    """With no snapshot, features are computed from the local files. A data dir holding u.data and
    u.user but no u.item gave the features of the ml-100k cache beside them; it is a 503 naming the
    files found and missing. Neither it nor a u.data that is a directory or cannot be read (EIO)
    puts the server's paths in the body: the CLI's errors name them, the 503 names the file."""
    import errno

    from tests.synthetic import partial_data_root, write_grouplens

    data_dir = tmp_path / "export"
    if problem == "partial layout":
        partial_data_root(data_dir, "grouplens", "missing")
        found = "found u.data, u.user; missing u.item"
        expected = f"the data directory holds part of the GroupLens files: {found}"
    else:
        write_grouplens(data_dir)
    if problem == "directory":
        (data_dir / "u.data").unlink()
        (data_dir / "u.data").mkdir()
        expected = "u.data: not a readable file (a directory)"
    elif problem == "unreadable":  # as root, chmod 000 denies nothing: the read itself fails
        fail_for_path(
            monkeypatch, "read_bytes", data_dir / "u.data", OSError(errno.EIO, "Input/output error")
        )
        expected = "u.data: cannot be read: Input/output error"
    client = make_app(data_dir=data_dir).test_client()
    response = client.get("/api/users/1/features", headers=auth_headers)
    assert response.status_code == 503, response.get_json()
    message = response.get_json()["error"]["message"]
    assert message == f"user features are not available: the local data set is unusable: {expected}"
    assert str(tmp_path) not in message, message


def test_with_the_database_down_and_no_local_data_the_503_says_the_database_is_down(
    make_app: Any, auth_headers: dict, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database holding the loaded snapshot is unreachable and there are no local files to
    compute from: the 503 said "no feature snapshot and no local data set", sending an operator
    to build a snapshot that was there, without Retry-After or the outage's log line."""
    import app.services.user_features as service
    from app.storage.db import DatabaseUnavailableError

    def down(*_args: Any) -> Any:
        raise DatabaseUnavailableError("connection refused")

    monkeypatch.setattr(service, "get_user_features", down)
    empty = tmp_path / "no-data"
    empty.mkdir()
    client = make_app(data_dir=empty).test_client()
    for suffix in ("features", "recommendations"):
        response = client.get(f"/api/users/1/{suffix}", headers=auth_headers)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        error = response.get_json()["error"]
        assert error["code"] == "unavailable"
        assert "database is unavailable" in error["message"], error["message"]


def test_scores_of_a_users_segment_list_are_that_users_ratings_at_the_next_ingest(
    make_app: Any, auth_headers: dict, synthetic_data: Any, synthetic_data_dir: Any
) -> None:
    """GET /api/users/<id>/recommendations names the user in its path; when the serving model
    does not know them (a cold-start champion, or a user newer than the model) the list is the
    segment's, but a score on it is still that user's rating. The request was logged without
    the user id, so ingest turned the score into a new anonymous feedback user."""
    from app.pipeline.ingest import ingest

    app = make_app()  # the session bundle's served model has no user tables
    client = app.test_client()
    uid = int(synthetic_data.users.iloc[5]["user_id"])
    body = client.get(f"/api/users/{uid}/recommendations", headers=auth_headers).get_json()
    assert body["strategy"] == "segment"
    movie = body["items"][0]
    score = {"id": body["id"], "movie": movie["title"], "score": 5}
    assert client.post("/api/recommend/score", json=score, headers=auth_headers).status_code == 200
    services = app.extensions["movierec"]
    services.recommendations.feedback.drain()
    ingested = ingest(synthetic_data_dir, services.db)
    assert ingested.stats()["feedback_users"] == 0, "the score became an anonymous feedback user"
    ratings = ingested.data.ratings
    mine = ratings[(ratings["user_id"] == uid) & (ratings["movie_id"] == movie["movie_id"])]
    assert mine["rating"].tolist() == [5.0]


def test_a_feedback_user_is_404_saying_why_not_that_the_snapshot_lacks_them(
    app: Any, client: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    """Feedback users (ids from 1,000,001) are in the snapshot's ``users`` table (`movierec sql`)
    but never loaded for the API; the 404 said they were missing from the latest snapshot."""
    replace_user_features(app.extensions["movierec"].db, _rows(synthetic_data, keep=10), snapshot_id="snap-1")
    for path in ("/api/users/1000001/features", "/api/users/1000001/recommendations"):
        response = client.get(path, headers=auth_headers)
        assert response.status_code == 404
        message = response.get_json()["error"]["message"]
        assert "feedback user" in message and "not served" in message, message


def test_an_id_above_the_feedback_base_is_not_said_to_be_a_feedback_user(
    app: Any, client: Any, auth_headers: dict, synthetic_data: Any
) -> None:
    """The 404 for any id above 1,000,000 said "ids above 1000000 are feedback users", for
    2147483647 too, which no build ever numbered: the range is theirs, the user may not exist."""
    replace_user_features(app.extensions["movierec"].db, _rows(synthetic_data, keep=10), snapshot_id="snap-1")
    for path in ("/api/users/2147483647/features", "/api/users/1000001/recommendations"):
        response = client.get(path, headers=auth_headers)
        assert response.status_code == 404
        message = response.get_json()["error"]["message"]
        assert "are feedback users" not in message, message
        assert "reserved for feedback users" in message and "not served" in message, message
        assert "if one exists" in message and "movierec sql" in message, message


def test_a_computed_answer_given_while_the_table_is_being_built_has_its_time(
    app: Any, synthetic_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The computed table was published before its time: a request answered between the two
    (no lock on that path) got ``"as_of": null`` next to ``"source": "computed"``."""
    import threading

    import app.services.user_features as module

    service = app.extensions["movierec"].user_features
    uid = int(synthetic_data.users.iloc[3]["user_id"])
    answers: list[dict[str, Any]] = []
    others: list[threading.Thread] = []
    real = module.datetime

    class Clock:  # the time is read as the table is finished: another request comes in then
        @staticmethod
        def now(tz: Any = None) -> Any:
            other = threading.Thread(target=lambda: answers.append(service.features(uid)))
            other.start()
            other.join(0.5)  # answered at once from the table, or waits for it to be finished
            others.append(other)
            return real.now(tz)

    monkeypatch.setattr(module, "datetime", Clock)
    answers.append(service.features(uid))
    for other in others:
        other.join(5)
    assert len(answers) == 2
    assert all(answer["source"] == "computed" and answer["as_of"] for answer in answers), answers


def _score_and_ask_again(app: Any, client: Any, headers: dict, uid: int) -> tuple[dict, dict]:
    first = client.get(f"/api/users/{uid}/recommendations?max_recs=5", headers=headers).get_json()
    score = {"id": first["id"], "movie": first["recommendations"][0], "score": 2}
    assert client.post("/api/recommend/score", json=score, headers=headers).status_code == 200
    app.extensions["movierec"].recommendations.feedback.drain()  # in the feedback table (~0.1 s later)
    again = client.get(f"/api/users/{uid}/recommendations?max_recs=5", headers=headers).get_json()
    return first, again


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_movie_the_user_scored_is_not_recommended_to_them_again(
    make_app: Any,
    personal_model_store: Any,
    auth_headers: dict,
    synthetic_data: Any,
    request: pytest.FixtureRequest,
    database: str,
) -> None:
    """A score on a list served under the user's id is their rating of the movie (it is one at the
    next ingest), but the next list recommended it again, first, until a pipeline run: API.md
    promises a known user never a movie they already rated."""
    from datetime import UTC, datetime, timedelta

    from app.storage.user_features import scored_movies

    url = {"database_url": request.getfixturevalue("postgres_url")} if database == "postgresql" else {}
    app = make_app(model_path=personal_model_store, model_dir=personal_model_store, **url)
    client = app.test_client()
    uid, other = (int(u) for u in app.extensions["movierec"].models.require().tables.user_ids[:2])
    others = f"/api/users/{other}/recommendations?max_recs=100"
    before = client.get(others, headers=auth_headers).get_json()["recommendations"]
    first, again = _score_and_ask_again(app, client, auth_headers, uid)
    assert first["features_source"] == "computed" and again["strategy"] == "personal"
    assert first["recommendations"][0] not in again["recommendations"]
    assert again["recommendations"] == first["recommendations"][1:5] + again["recommendations"][4:]
    # from a loaded snapshot (which knows only what was scored before it), the same
    replace_user_features(app.extensions["movierec"].db, _rows(synthetic_data, keep=120), snapshot_id="s")
    first, again = _score_and_ask_again(app, client, auth_headers, uid)
    assert first["features_source"] == "feature_store"
    assert first["recommendations"][0] not in again["recommendations"]
    # another user's list is not theirs: what the first user scored is still recommended to them
    assert client.get(others, headers=auth_headers).get_json()["recommendations"] == before
    # the read is bounded by the time of the scores (the snapshot's load, less a day)
    db, now = app.extensions["movierec"].db, datetime.now(UTC)
    assert len(scored_movies(db, uid, now - timedelta(hours=1))) == 2
    assert scored_movies(db, uid, now + timedelta(hours=1)) == frozenset()


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_users_scores_are_read_from_their_own_lists(
    tmp_path: Any, request: pytest.FixtureRequest, database: str
) -> None:
    """``scored_movies`` read every score stored since the user's snapshot, all users' (tens of
    millions a day at ~1,000 scores/s), and for computed features the whole request table, on each
    request: it now starts from the user's own lists (an index, migration 0008). A list served
    long before ``since`` and scored after it still counts: a list can be scored at any time."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import event, text

    from app.storage.db import Database, FeedbackRecord
    from app.storage.user_features import scored_movies, scored_movies_of
    from tests.helpers import sqlalchemy_url

    url = sqlalchemy_url(request.getfixturevalue("postgres_url")) if database == "postgresql" else ""
    db = Database(url or f"sqlite:///{tmp_path / 'scores.db'}")
    now = datetime.now(UTC)
    month_ago = (now - timedelta(days=30)).timestamp()
    # 20,000 lists over a month, 3% served under one of 200 user ids
    rows = [
        {"id": f"r{n}", "created_at": month_ago + n * 120, "user_id": 1 + n % 200 if n % 33 == 0 else None,
         "age": 30, "gender": "M", "occupation": "programmer", "max_recs": 2, "model_version": "v1",
         "strategy": "segment", "items": [{"movie_id": 1, "title": "Movie 1", "score": 0.9}]}
        for n in range(20_000)
    ]  # fmt: skip

    def score(request_id: str, movie: int, at: datetime) -> FeedbackRecord:
        return FeedbackRecord(request_id, movie, f"Movie {movie}", 4.0, None, "v1", at)

    # a tenth of the lists scored, each a minute after it was served
    scored = [score(row["id"], 1, datetime.fromtimestamp(row["created_at"] + 60, UTC)) for row in rows[::10]]
    rows.append({**rows[0], "id": "old-list", "user_id": 7001})  # served a month ago
    rows.append({**rows[0], "id": "other-user", "user_id": 7002})
    scored += [score("old-list", 11, now - timedelta(days=29)), score("old-list", 12, now)]  # 12: today
    scored.append(score("other-user", 13, now))
    statements: list[tuple[str, Any]] = []
    try:
        db.upgrade()
        db.save_requests(rows)
        db.save_feedbacks(scored)
        with db.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
        event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append((a[2], a[3])))
        assert scored_movies(db, 7001, now - timedelta(hours=1)) == {12}
        assert scored_movies(db, 7001) == {11, 12}
        assert scored_movies(db, 7003) == frozenset()
        # several users at once (a batch naming them), each with their own bound: one read
        since = {7001: now - timedelta(hours=1), 7002: None, 7003: None, 1: now - timedelta(hours=1)}
        assert scored_movies_of(db, since) == {7001: {12}, 7002: {13}}
        assert scored_movies_of(db, {7001: None, 7002: now + timedelta(hours=1)}) == {7001: {11, 12}}
        explain = "EXPLAIN " if database == "postgresql" else "EXPLAIN QUERY PLAN "
        plans = []
        with db.engine.connect() as connection:
            for statement, params in statements[:4]:
                plan = connection.exec_driver_sql(explain + statement, params).all()
                plans.append("\n".join(str(line[-1]) for line in plan))
    finally:
        db.dispose()
    assert len(plans) == 4 and all("feedback" in statement for statement, _ in statements[:4])
    for plan in plans:  # the user's lists by the index, their scores by their lists' ids
        assert "ix_recommendation_requests_user_id" in plan, plan
        assert "Seq Scan" not in plan and "SCAN " not in plan, plan


def test_scores_are_left_out_only_while_the_database_answers(
    app: Any, client: Any, auth_headers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the user's scores needs the database; without it the list is still served, leaving
    out what their features say they rated."""
    import app.services.user_features as service
    from app.storage.db import DatabaseUnavailableError

    def down(*_args: Any) -> Any:
        raise DatabaseUnavailableError("connection refused")

    uid = int(app.extensions["movierec"].models.require().tables.user_ids[0])
    monkeypatch.setattr(service, "scored_movies", down)
    response = client.get(f"/api/users/{uid}/recommendations", headers=auth_headers)
    assert response.status_code == 200 and response.get_json()["strategy"] == "personal"
    # the features themselves answered without the database: the scores are not asked for then
    calls: list[int] = []
    monkeypatch.setattr(service, "get_user_features", down)
    monkeypatch.setattr(service, "scored_movies", lambda *args: calls.append(1) or frozenset())
    response = client.get(f"/api/users/{uid}/recommendations", headers=auth_headers)
    assert response.status_code == 200 and response.get_json()["features_source"] == "computed"
    assert calls == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_features_are_served_exactly_as_the_snapshot_holds_them(
    make_app: Any,
    personal_model_store: Any,
    synthetic_data_dir: Any,
    tmp_path: Any,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    """The features API and the warehouse (`movierec sql` over the snapshot's users.parquet) give
    one user the same numbers, from either database. The genre shares were rounded to 6 decimals
    on the way to the API (0.517241 for the snapshot's 0.5172413793103449), computed or stored,
    where every other feature was served to its last digit."""
    import math

    from app.pipeline.features_store import FeatureStore, feature_tables
    from app.pipeline.ingest import ingest
    from tests.helpers import login, sqlalchemy_url

    database = {
        "sqlite": lambda: None,
        "postgresql": lambda: sqlalchemy_url(request.getfixturevalue("postgres_url")),
    }
    url = database[backend]()
    overrides = {"database_url": url} if url else {}
    app = make_app(model_path=personal_model_store, model_dir=personal_model_store, **overrides)
    client = app.test_client()
    auth_headers = login(client)
    db = app.extensions["movierec"].db
    store = FeatureStore(tmp_path / "features")
    ingested = ingest(synthetic_data_dir, db)

    def expected(record: dict[str, Any]) -> dict[str, Any]:
        plain = {
            name: None if value is pd.NA or (isinstance(value, float) and math.isnan(value)) else value
            for name, value in record.items()
        }
        features = {name: plain[name] for name in ("age", "age_group", "gender", "occupation", "n_ratings",
                                                    "n_liked", "liked_share", "mean_rating", "std_rating",
                                                    "first_ts", "last_ts")}  # fmt: skip
        for prefix, key in (("share_", "genre_share"), ("liked_share_", "liked_genre_share")):
            features[key] = {g: plain[f"{prefix}{g}"] for g in GENRE_SLUGS}
        return features

    computed = {
        int(record["user_id"]): client.get(
            f"/api/users/{int(record['user_id'])}/features", headers=auth_headers
        )
        for record in feature_tables(ingested)["users"].head(20).to_dict("records")
    }
    snapshot, _ = store.load_into(db, ingested, keep=0)
    users = store.sql("select * from users where source = 'movielens' order by user_id limit 20")
    assert len(users) == 20
    for record in users.to_dict("records"):
        uid = int(record["user_id"])
        stored = client.get(f"/api/users/{uid}/features", headers=auth_headers).get_json()
        assert stored["source"] == "feature_store" and stored["snapshot_id"] == snapshot.id
        assert stored["features"] == expected(record), uid
        assert computed[uid].get_json()["features"] == expected(record), uid
