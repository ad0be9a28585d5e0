"""Ingest: the raw MovieLens files plus the feedback the API collected, as one training set.

Feedback closes the loop. A score posted to ``/api/recommend/score`` is a rating of a movie
by the person who made the request, so it becomes a training rating:

* for the **known user** the request named (``user_id`` present in the raw users), the score
  is that user's rating of the movie and replaces an older rating of the same movie;
* a request that named a user id the raw data does not know (a user newer than the data set,
  answered for their profile) is that person's: every request naming the id is one synthetic
  **feedback user** (id ``FEEDBACK_USER_BASE + n``) with the first such request's age, gender
  and occupation, so a movie they scored again on another list is one rating, the newest;
* otherwise the person is anonymous and only their demographics are known, so each request
  becomes one synthetic feedback user with the request's age, gender and occupation. A request
  is the only identity an anonymous caller has: two requests with the same profile may be two
  different people, so they are not merged.

Synthetic ids are numbered in the order of each caller's first feedback row, which never
changes as feedback grows, so the data hash of unchanged feedback is stable and the
scheduler can skip a run when nothing changed. For the same reason a feedback rating's
timestamp is when its (request, movie) was first scored (``created_at``), not when its score
was last acknowledged (``updated_at``): a client retrying a score after a timeout sends the
same score with a newer acknowledgement time, and every retry was new data to the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
from sqlalchemy import select

from app.recommender.data import (
    FEEDBACK_USER_BASE,
    RATING_COLUMNS,
    USER_COLUMNS,
    MovieLens,
    is_feedback_user,
    load_movielens,
)
from app.recommender.segments import GENDERS, MAX_AGE, MIN_AGE, OCCUPATIONS
from app.storage.db import Database
from app.storage.models import Feedback, RecommendationRequest

log = logging.getLogger(__name__)

FEEDBACK_COLUMNS: Final = [
    "feedback_id", "request_id", "movie_id", "score", "created_at", "updated_at",
    "user_id", "age", "gender", "occupation",
]  # fmt: skip
"""A feedback row as :func:`read_feedback` returns it. ``created_at`` is when the (request, movie)
was first scored, the rating's timestamp; ``updated_at`` when its score was last acknowledged,
which decides the newest of several scores (a retry of the same score moves it too)."""


@dataclass(frozen=True)
class Ingested:
    """The training set of one run and where its rows came from."""

    data: MovieLens
    feedback: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=[*RATING_COLUMNS, "mapped_to"])
    )
    dropped_feedback: int = 0

    @property
    def data_hash(self) -> str:
        """Content hash of ratings (feedback included), users and movies."""
        return self.data.fingerprint()

    @property
    def feedback_user_ids(self) -> np.ndarray:
        ids = self.data.users["user_id"].to_numpy()
        return ids[is_feedback_user(ids)]

    def stats(self) -> dict[str, int]:
        mapped = self.feedback["mapped_to"] if len(self.feedback) else pd.Series(dtype=str)
        return {
            "n_ratings": len(self.data.ratings),
            "n_users": len(self.data.users),
            "n_movies": len(self.data.items),
            "feedback_ratings": len(self.feedback),
            "feedback_to_known_users": int((mapped == "user").sum()),
            "feedback_users": len(self.feedback_user_ids),
            "feedback_dropped": self.dropped_feedback,
        }


FEEDBACK_CHUNK_ROWS: Final = 10_000
"""Feedback rows fetched at a time: between two chunks the read looks whether to stop."""


def _go_on() -> None:
    """The default stop check: never stop."""


def read_feedback(db: Database, check_stop: Callable[[], None] = _go_on) -> pd.DataFrame:
    """Every feedback row joined with the request it scores, in feedback-id order.

    Fetched :data:`FEEDBACK_CHUNK_ROWS` at a time, ``check_stop`` called after each chunk (it
    raises to stop): on a large table the read is most of the ingest's time.
    """
    query = (
        select(
            Feedback.id.label("feedback_id"),
            Feedback.request_id,
            Feedback.movie_id,
            Feedback.score,
            Feedback.created_at,
            Feedback.updated_at,
            RecommendationRequest.user_id,
            RecommendationRequest.age,
            RecommendationRequest.gender,
            RecommendationRequest.occupation,
        )
        .join(RecommendationRequest, RecommendationRequest.id == Feedback.request_id)
        .order_by(Feedback.id)
    )
    rows: list[Any] = []
    with db.session() as session:
        result = session.execute(query.execution_options(yield_per=FEEDBACK_CHUNK_ROWS))
        for chunk in result.partitions():
            rows.extend(chunk)
            check_stop()
    return pd.DataFrame([tuple(row) for row in rows], columns=FEEDBACK_COLUMNS)


def _epoch_seconds(values: pd.Series) -> np.ndarray:
    """Whole seconds since the epoch, whatever the datetime resolution (pandas 3 may use µs)."""
    stamps = pd.to_datetime(values, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)


def feedback_to_ratings(
    feedback: pd.DataFrame, known_user_ids: np.ndarray, movie_ids: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(ratings, synthetic users, number of rows dropped) for feedback rows.

    Rows are dropped when their movie left the catalogue or when the request has neither a
    known user nor a complete, valid profile (nothing to attribute the score to). A known user,
    or a user id the raw data lacks (one feedback user, :func:`_caller`), who scored one movie
    under several requests gets one rating, the score acknowledged last (``updated_at``). A
    rating's timestamp is its row's ``created_at``, which a score sent again (a retry) or
    changed does not move: the score is the rating's content, and a retry that changes nothing
    leaves the data hash as it was.
    """
    empty_ratings = pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
        ("user_id", "int64"), ("movie_id", "int64"), ("rating", "float64"), ("timestamp", "int64"),
        ("mapped_to", "object"),
    )})  # fmt: skip
    empty_users = pd.DataFrame(columns=USER_COLUMNS)
    if feedback.empty:
        return empty_ratings, empty_users, 0
    frame = feedback.sort_values("feedback_id").reset_index(drop=True)
    in_catalogue = frame["movie_id"].isin(movie_ids)
    user_ids = pd.to_numeric(frame["user_id"], errors="coerce")
    known = user_ids.isin(known_user_ids)
    ages = pd.to_numeric(frame["age"], errors="coerce")
    profiled = (
        ages.between(MIN_AGE, MAX_AGE) & frame["gender"].isin(GENDERS) & frame["occupation"].isin(OCCUPATIONS)
    )
    usable = in_catalogue & (known | profiled)
    dropped = int((~usable).sum())
    frame, known, user_ids = frame[usable], known[usable], user_ids[usable]
    if frame.empty:
        return empty_ratings, empty_users, dropped

    anonymous = frame[~known]
    caller = _caller(anonymous)
    order = caller.drop_duplicates().tolist()  # first-feedback order
    synthetic_id = {key: FEEDBACK_USER_BASE + n for n, key in enumerate(order, start=1)}
    mapped_user = np.where(known, user_ids.fillna(0), caller.reindex(frame.index).map(synthetic_id).fillna(0))
    ratings = pd.DataFrame(
        {
            "user_id": mapped_user.astype(np.int64),
            "movie_id": frame["movie_id"].to_numpy(dtype=np.int64),
            "rating": frame["score"].to_numpy(dtype=np.float64),
            "timestamp": _epoch_seconds(frame["created_at"]),
            "mapped_to": np.where(known, "user", "profile"),
        }
    )
    # A user (known, or named by an id the raw data lacks) can score one movie under several
    # requests, and re-scoring updates the request's row in place (its feedback id stays old):
    # the newest score must win, not the highest feedback id. By the acknowledgement time itself,
    # not the rating's whole seconds: two scores of one second went to the higher id. Rows keep
    # their feedback-id order, so the data hash is unchanged whenever no pair is scored twice.
    stamps = pd.to_datetime(frame["updated_at"], utc=True).to_numpy()
    newest = (
        ratings.assign(_at=stamps)
        .sort_values("_at", kind="stable")
        .drop_duplicates(["user_id", "movie_id"], keep="last")
    )
    ratings = ratings[ratings.index.isin(newest.index)].reset_index(drop=True)
    first = anonymous[~caller.duplicated()]
    users = pd.DataFrame(
        {
            "user_id": caller[first.index].map(synthetic_id).to_numpy(dtype=np.int64),
            "age": pd.to_numeric(first["age"]).to_numpy(dtype=np.int64),
            "gender": first["gender"].to_numpy(dtype=object),
            "occupation": first["occupation"].to_numpy(dtype=object),
            "zip_code": "",
        }
    )
    return ratings, users, dropped


def _caller(anonymous: pd.DataFrame) -> pd.Series:
    """Who scored each feedback row that no raw user is attributed: the user id its request
    named (``user:<id>``, a user the raw data does not know, answered for their profile), else
    the request itself (``request:<id>``), the only identity a caller who named none has."""
    user_ids = pd.to_numeric(anonymous["user_id"], errors="coerce")
    named = user_ids.notna()
    by_user = "user:" + user_ids[named].astype(np.int64).astype(str)
    by_request = "request:" + anonymous.loc[~named, "request_id"].astype(str)
    return pd.concat([by_user, by_request]).reindex(anonymous.index)


def merge_feedback(data: MovieLens, ratings: pd.DataFrame, users: pd.DataFrame) -> MovieLens:
    """Raw data plus feedback ratings (one per user and movie: :func:`feedback_to_ratings`); a
    feedback score replaces an older rating of the same pair."""
    if ratings.empty:
        return data
    combined = pd.concat([data.ratings, ratings[RATING_COLUMNS]], ignore_index=True)
    combined = combined.drop_duplicates(["user_id", "movie_id"], keep="last").reset_index(drop=True)
    combined = combined.astype(
        {"user_id": np.int64, "movie_id": np.int64, "rating": np.float64, "timestamp": np.int64}
    )
    all_users = pd.concat([data.users, users[USER_COLUMNS]], ignore_index=True)
    all_users = (
        all_users.astype({"user_id": np.int64, "age": np.int64}).sort_values("user_id").reset_index(drop=True)
    )
    return MovieLens(ratings=combined, users=all_users, items=data.items)


def ingest(data_dir: Path | str, db: Database | None, check_stop: Callable[[], None] = _go_on) -> Ingested:
    """Load the raw files (fetching them when missing) and add the service's feedback.

    ``db`` None means "raw data only". A database that cannot be reached raises: training
    silently without the feedback would publish a model that ignores it.

    ``check_stop`` is called between the phases and between chunks of the feedback read, and
    raises to stop the ingest there (the launcher asked to stop: app/pipeline/schedule.py,
    current_fingerprint); never inside a phase, so a fetched ml-100k being published into the
    data directory or a schema upgrade is not cut halfway.
    """
    raw = load_movielens(data_dir)  # refuses raw user ids in the feedback users' range
    if db is None:
        return Ingested(raw)
    check_stop()
    db.upgrade()
    check_stop()
    feedback = read_feedback(db, check_stop)
    ratings, users, dropped = feedback_to_ratings(
        feedback, raw.users["user_id"].to_numpy(), raw.items["movie_id"].to_numpy()
    )
    check_stop()
    if dropped:
        log.warning("feedback rows dropped (movie not in catalogue or no user/profile): %d", dropped)
    data = merge_feedback(raw, ratings, users)
    log.info(
        "ingested %d ratings (%d from feedback), %d users", len(data.ratings), len(ratings), len(data.users)
    )
    return Ingested(data, ratings.reset_index(drop=True), dropped)
