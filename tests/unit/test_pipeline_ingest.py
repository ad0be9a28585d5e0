"""Feedback becomes training data: mapping to users, synthetic feedback users, the data hash."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.pipeline.ingest import (
    FEEDBACK_COLUMNS,
    FEEDBACK_USER_BASE,
    feedback_to_ratings,
    ingest,
    merge_feedback,
    read_feedback,
)
from app.storage.db import Database, FeedbackRecord

pytestmark = pytest.mark.unit

STAMP = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _row(fid: int, request: str, movie: int, score: float, user_id: Any = None, profile: Any = None) -> dict:
    age, gender, occupation = profile or (None, None, None)
    return dict(
        zip(
            FEEDBACK_COLUMNS,
            (fid, request, movie, score, STAMP, STAMP, user_id, age, gender, occupation),
            strict=True,
        )
    )


def test_known_user_feedback_maps_to_that_user_and_replaces_the_older_rating(synthetic_data: Any) -> None:
    user = int(synthetic_data.users["user_id"].iloc[0])
    rated = synthetic_data.ratings[synthetic_data.ratings["user_id"] == user].iloc[0]
    movie, old = int(rated["movie_id"]), float(rated["rating"])
    new_score = 1.0 if old >= 3 else 5.0
    feedback = pd.DataFrame([_row(1, "r1", movie, new_score, user_id=user, profile=(30, "M", "programmer"))])

    ratings, users, dropped = feedback_to_ratings(
        feedback, synthetic_data.users["user_id"].to_numpy(), synthetic_data.items["movie_id"].to_numpy()
    )
    assert (dropped, len(users)) == (0, 0)
    assert ratings[["user_id", "movie_id", "rating", "mapped_to"]].values.tolist() == [
        [user, movie, new_score, "user"]
    ]
    assert ratings["timestamp"].tolist() == [int(STAMP.timestamp())]

    merged = merge_feedback(synthetic_data, ratings, users)
    pair = merged.ratings[(merged.ratings["user_id"] == user) & (merged.ratings["movie_id"] == movie)]
    assert pair["rating"].tolist() == [new_score]  # one row: feedback won
    assert len(merged.ratings) == len(synthetic_data.ratings)
    assert merged.fingerprint() != synthetic_data.fingerprint()


def test_anonymous_requests_become_one_feedback_user_each_with_the_request_demographics(
    synthetic_data: Any,
) -> None:
    movies = synthetic_data.items["movie_id"].to_numpy()
    feedback = pd.DataFrame(
        [
            _row(1, "req-b", int(movies[0]), 5.0, profile=(23, "F", "artist")),
            _row(2, "req-a", int(movies[1]), 4.0, profile=(61, "M", "retired")),
            _row(3, "req-b", int(movies[2]), 2.0, profile=(23, "F", "artist")),
            _row(
                4, "req-c", int(movies[3]), 4.5, user_id=99_999, profile=(40, "O", "doctor")
            ),  # unknown user id
        ]
    )
    ratings, users, dropped = feedback_to_ratings(
        feedback, synthetic_data.users["user_id"].to_numpy(), movies
    )
    assert dropped == 0
    # Numbered in order of each request's first feedback row.
    assert users[["user_id", "age", "gender", "occupation"]].values.tolist() == [
        [FEEDBACK_USER_BASE + 1, 23, "F", "artist"],
        [FEEDBACK_USER_BASE + 2, 61, "M", "retired"],
        [FEEDBACK_USER_BASE + 3, 40, "O", "doctor"],
    ]
    assert (ratings["user_id"] - FEEDBACK_USER_BASE).tolist() == [1, 2, 1, 3]
    assert set(ratings["mapped_to"]) == {"profile"}

    merged = merge_feedback(synthetic_data, ratings, users)
    assert len(merged.users) == len(synthetic_data.users) + 3
    assert len(merged.ratings) == len(synthetic_data.ratings) + 4
    assert merged.users["user_id"].is_monotonic_increasing


def test_ids_of_existing_feedback_users_do_not_change_when_more_feedback_arrives(synthetic_data: Any) -> None:
    movies = synthetic_data.items["movie_id"].to_numpy()
    known = synthetic_data.users["user_id"].to_numpy()
    first = pd.DataFrame([_row(1, "req-1", int(movies[0]), 5.0, profile=(30, "M", "writer"))])
    more = pd.concat(
        [first, pd.DataFrame([_row(2, "req-2", int(movies[1]), 3.0, profile=(30, "M", "writer"))])]
    )
    _, users_before, _ = feedback_to_ratings(first, known, movies)
    _, users_after, _ = feedback_to_ratings(more, known, movies)
    assert users_after.iloc[: len(users_before)].equals(users_before)


def test_unattributable_feedback_is_dropped_and_counted(synthetic_data: Any) -> None:
    movies = synthetic_data.items["movie_id"].to_numpy()
    feedback = pd.DataFrame(
        [
            _row(1, "r1", 10_000_000, 4.0, profile=(30, "M", "writer")),  # movie not in the catalogue
            _row(2, "r2", int(movies[0]), 4.0, user_id=99_999),  # unknown user, no profile
            _row(3, "r3", int(movies[0]), 4.0, profile=(30, "M", "astronaut")),  # invalid occupation
            _row(4, "r4", int(movies[0]), 4.0, profile=(30, "M", "writer")),  # usable
        ]
    )
    ratings, users, dropped = feedback_to_ratings(
        feedback, synthetic_data.users["user_id"].to_numpy(), movies
    )
    assert dropped == 3
    assert len(ratings) == 1 and len(users) == 1


def test_no_feedback_leaves_the_data_and_its_hash_unchanged(synthetic_data: Any) -> None:
    empty = pd.DataFrame(columns=FEEDBACK_COLUMNS)
    ratings, users, dropped = feedback_to_ratings(empty, np.array([1]), np.array([1]))
    assert (len(ratings), len(users), dropped) == (0, 0, 0)
    assert merge_feedback(synthetic_data, ratings, users).fingerprint() == synthetic_data.fingerprint()


def test_feedback_rows_in_the_service_database_appear_in_the_next_training_set(
    tmp_path: Path, synthetic_data_dir: Path, synthetic_data: Any
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'service.db'}")
    db.upgrade()
    try:
        before = ingest(synthetic_data_dir, db)
        assert before.stats()["feedback_ratings"] == 0
        assert before.data_hash == synthetic_data.fingerprint()

        known_user = int(synthetic_data.users["user_id"].iloc[3])
        catalogue = synthetic_data.items.set_index("movie_id")["title"]
        anonymous, personal = str(uuid.uuid4()), str(uuid.uuid4())
        db.save_requests(
            [
                {"id": anonymous, "age": 33, "gender": "F", "occupation": "lawyer", "user_id": None,
                 "max_recs": 2, "model_version": "v", "strategy": "segment", "items": []},
                {"id": personal, "age": None, "gender": None, "occupation": None, "user_id": known_user,
                 "max_recs": 2, "model_version": "v", "strategy": "personal", "items": []},
            ]
        )  # fmt: skip
        for request_id, movie, score in ((anonymous, 7, 5.0), (anonymous, 8, 1.5), (personal, 9, 4.0)):
            db.save_feedback(FeedbackRecord(request_id, movie, catalogue[movie], score, None, "v"))
        assert len(read_feedback(db)) == 3

        after = ingest(synthetic_data_dir, db)
        stats = after.stats()
        assert stats["feedback_ratings"] == 3
        assert stats["feedback_to_known_users"] == 1
        assert stats["feedback_users"] == 1
        assert after.data_hash != before.data_hash
        training = after.data.ratings
        synthetic_user = FEEDBACK_USER_BASE + 1
        assert training[training["user_id"] == synthetic_user][["movie_id", "rating"]].values.tolist() == [
            [7, 5.0],
            [8, 1.5],
        ]
        assert training[(training["user_id"] == known_user) & (training["movie_id"] == 9)][
            "rating"
        ].tolist() == [4.0]
        profile = after.data.users.set_index("user_id").loc[synthetic_user]
        assert (profile["age"], profile["gender"], profile["occupation"]) == (33, "F", "lawyer")
        # Same feedback, same hash: the scheduler can tell "nothing new" apart from "new feedback".
        assert ingest(synthetic_data_dir, db).data_hash == after.data_hash
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def test_the_feedback_read_goes_by_chunks_and_looks_whether_to_stop_after_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backend: str
) -> None:
    """The launcher's ingest (``pipeline run --if-changed``, a scheduler tick) must stop soon after
    a SIGTERM or Ctrl-C: the read, most of its time on a large table, looks between chunks."""
    import app.pipeline.ingest as ingest_module

    url = (
        request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 's.db'}"
    )
    db = Database(url)
    db.upgrade()
    try:
        rid = str(uuid.uuid4())
        profile = {"age": 33, "gender": "F", "occupation": "lawyer", "user_id": None}
        db.save_requests(
            [{"id": rid, **profile, "max_recs": 5, "model_version": "v", "strategy": "segment", "items": []}]
        )
        for movie in range(1, 6):
            db.save_feedback(FeedbackRecord(rid, movie, f"Movie {movie}", float(movie), None, "v"))
        monkeypatch.setattr(ingest_module, "FEEDBACK_CHUNK_ROWS", 2)
        checks: list[int] = []
        assert read_feedback(db, lambda: checks.append(1))["movie_id"].tolist() == [1, 2, 3, 4, 5]
        assert len(checks) == 3  # after each chunk of 2, 2 and 1 rows

        class Stop(Exception):
            pass

        def stop_at_the_second() -> None:
            checks.append(1)
            if len(checks) == 2:
                raise Stop

        checks.clear()
        with pytest.raises(Stop):
            read_feedback(db, stop_at_the_second)
        assert len(checks) == 2  # no chunk read after the stop
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def test_a_retried_score_leaves_the_data_hash_alone_and_a_changed_one_changes_it(
    tmp_path: Path,
    synthetic_data_dir: Path,
    synthetic_data: Any,
    request: pytest.FixtureRequest,
    backend: str,
) -> None:
    """A client that retries a score after a timeout sends the same score again, with a newer
    acknowledgement time: the hash moved with it, so every scheduler tick after a retry trained
    on the same ratings. The acknowledgement time still decides which score is the newest."""
    url = (
        request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 's.db'}"
    )
    db = Database(url)
    db.upgrade()
    try:
        user = int(synthetic_data.users["user_id"].iloc[0])
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        db.save_requests(
            [
                {"id": rid, "age": None, "gender": None, "occupation": None, "user_id": user, "max_recs": 2,
                 "model_version": "v", "strategy": "personal", "items": []}
                for rid in (first, second)
            ]
        )  # fmt: skip

        def score(request_id: str, value: float, hour: int) -> None:
            at = datetime(2026, 1, 2, hour, tzinfo=UTC)
            db.save_feedback(FeedbackRecord(request_id, 7, "Movie 7", value, None, "v", at=at))

        def rating() -> tuple[str, float]:
            ingested = ingest(synthetic_data_dir, db)
            ratings = ingested.data.ratings
            pair = ratings[(ratings["user_id"] == user) & (ratings["movie_id"] == 7)]
            return ingested.data_hash, float(pair["rating"].item())

        score(first, 3.0, 1)
        stored, value = rating()
        assert value == 3.0
        score(first, 3.0, 2)  # the client's retry
        score(first, 3.0, 3)
        assert rating() == (stored, 3.0)
        score(first, 4.0, 4)  # a changed score
        changed, value = rating()
        assert (changed != stored, value) == (True, 4.0)
        score(second, 2.0, 5)  # the same movie under another request: the newest wins
        assert rating()[1] == 2.0
        score(first, 4.0, 6)  # the first request's score again, acknowledged last: it wins again
        assert rating() == (changed, 4.0)
    finally:
        db.dispose()


def test_a_user_id_the_raw_data_does_not_know_is_one_feedback_user_across_its_lists(
    sqlite_database: Database, synthetic_data_dir: Path, synthetic_data: Any
) -> None:
    """A caller who names a user id the raw data lacks (a user newer than ml-100k, answered for
    their profile) and scores from several lists is one person: each of their requests was a
    feedback user of its own, so a movie they scored on one list and scored again, changed, on
    another trained as two ratings, the one they took back included. Requests that name no
    user id stay one feedback user each (two of one profile may be two people)."""
    db = sqlite_database
    newcomer, profile = 99_999, {"age": 40, "gender": "F", "occupation": "writer"}
    assert newcomer not in set(synthetic_data.users["user_id"])
    lists = {name: str(uuid.uuid4()) for name in ("first", "second", "anon-1", "anon-2")}
    db.save_requests(
        [
            {"id": lists[name], **profile, "user_id": newcomer if name in ("first", "second") else None,
             "max_recs": 2, "model_version": "v", "strategy": "segment", "items": []}
            for name in ("first", "second", "anon-1", "anon-2")
        ]
    )  # fmt: skip

    def score(name: str, movie: int, value: float, hour: int) -> None:
        at = datetime(2026, 1, 2, hour, tzinfo=UTC)
        db.save_feedback(FeedbackRecord(lists[name], movie, f"Movie {movie}", value, None, "v", at=at))

    score("first", 7, 5.0, 1)
    score("anon-1", 7, 5.0, 1)
    score("second", 7, 1.0, 2)  # the newcomer changed their mind on another list
    score("second", 8, 4.0, 2)
    score("anon-2", 7, 2.0, 3)

    ingested = ingest(synthetic_data_dir, db)
    feedback_users = ingested.data.users[ingested.data.users["user_id"] > FEEDBACK_USER_BASE]
    ratings = ingested.data.ratings[ingested.data.ratings["user_id"] > FEEDBACK_USER_BASE]
    # numbered in order of first feedback: the newcomer, then each anonymous request
    assert feedback_users["user_id"].tolist() == [FEEDBACK_USER_BASE + n for n in (1, 2, 3)]
    assert ratings[["user_id", "movie_id", "rating"]].values.tolist() == [
        [FEEDBACK_USER_BASE + 2, 7, 5.0],
        [FEEDBACK_USER_BASE + 1, 7, 1.0],
        [FEEDBACK_USER_BASE + 1, 8, 4.0],
        [FEEDBACK_USER_BASE + 3, 7, 2.0],
    ]
    assert ingested.stats()["feedback_users"] == 3
    assert ingested.stats()["feedback_ratings"] == 4
