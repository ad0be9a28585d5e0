"""User features for the features API (seed 001) and the predictions API built on them.

Where the features come from, in order:

1. the ``user_features`` **table** the training pipeline loads with the latest feature-store
   snapshot (app/storage/user_features.py); a user missing from a loaded snapshot is a 404;
2. while that table is empty (no pipeline run yet) or the database is down, they are
   **computed** from the local MovieLens files under the data root with
   :func:`app.recommender.features.user_features` — the very function the pipeline snapshots —
   once per process, then served from memory. The response says which (``source``), so a
   client can tell a stored snapshot from a computed one. With the database down and no local
   data either, the answer is the database's 503, not "no feature snapshot".

Either way a request is one primary-key read or a dictionary lookup; ``/recommendations``
also reads the movies the user scored since (:meth:`UserFeatureService.rated`). The recommend
endpoints that name a user read what each rated in two reads for all of them
(:meth:`UserFeatureService.rated_by`), from the stored table and the scores only.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.errors import NotFound, Unavailable
from app.recommender.data import FEEDBACK_USER_BASE, DataUnavailableError, find_local, is_feedback_user
from app.storage.db import Database, DatabaseUnavailableError
from app.storage.models import as_utc
from app.storage.user_features import (
    get_user_features,
    rated_in_snapshot,
    scored_movies,
    scored_movies_of,
    user_features_snapshot,
)

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON-safe scalar: NumPy → Python, NaN/NA → None."""
    if hasattr(value, "item"):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


_PLAIN = (
    "age", "age_group", "gender", "occupation", "n_ratings", "n_liked", "liked_share",
    "mean_rating", "std_rating", "first_ts", "last_ts",
)  # fmt: skip


SCORES_SLACK = timedelta(days=1)
"""How far before a stored snapshot was loaded :meth:`UserFeatureService.rated` still reads the
user's scores: the snapshot's ingest read the feedback table earlier than it was loaded (in the same
flow run), and a score acknowledged during a database outage reaches the table later than its time."""


def _scores_since(computed_at: datetime | None) -> datetime | None:
    """From when the scores of a user whose stored features were loaded at ``computed_at`` may be
    missing from them (:data:`SCORES_SLACK` before it); None (any score) without a time."""
    return as_utc(computed_at) - SCORES_SLACK if computed_at else None


@dataclass(frozen=True)
class UserProfile:
    """A user's features as the features API answers them, and the movies they rated."""

    answer: dict[str, Any]  # {"user_id", "features", "source", "snapshot_id", "as_of"}
    rated: frozenset[int]  # empty for rows stored before the table had ``rated_movies``
    # scores from this time on may be missing from ``rated``; None: any score may be (computed
    # from the local files, which hold no feedback)
    scores_since: datetime | None = None
    database_down: bool = False  # answered without the database: its scores are not read either


class UserFeatureService:
    def __init__(self, db: Database, data_dir: Path | None) -> None:
        self.db = db
        self.data_dir = data_dir
        # the computed table and when it was computed, set together: a request answered from the
        # table without the lock (the table set first, its time next) said "as_of": null
        self._computed: tuple[dict[int, tuple[dict[str, Any], frozenset[int]]], str] | None = None
        self._lock = threading.Lock()

    def features(self, user_id: int) -> dict[str, Any]:
        """``{"user_id", "features", "source", "snapshot_id", "as_of"}``; 404 for a user without features."""
        return self.profile(user_id).answer

    def profile(self, user_id: int) -> UserProfile:
        """The user's features and rated movies, from one read; 404 for a user without features."""
        down: DatabaseUnavailableError | None = None
        try:
            row = get_user_features(self.db, user_id)
            stored = row is not None or user_features_snapshot(self.db)[1] > 0
        except DatabaseUnavailableError as exc:
            row, stored, down = None, False, exc  # the database is down: answer from local data if we can
        if row is not None:
            features = {name: _plain(getattr(row, name)) for name in _PLAIN}
            features["genre_share"] = dict(row.genre_share or {})
            features["liked_genre_share"] = dict(row.liked_genre_share or {})
            answer = {
                "user_id": user_id,
                "features": features,
                "source": "feature_store",
                "snapshot_id": row.snapshot_id,
                # in UTC with its offset, as a computed answer's (SQLite gives back a naive time)
                "as_of": as_utc(row.computed_at).isoformat(timespec="seconds") if row.computed_at else None,
            }
            rated = frozenset(int(m) for m in row.rated_movies or ())
            return UserProfile(answer, rated, _scores_since(row.computed_at))
        if stored:
            if is_feedback_user(user_id):  # in the snapshot's users table, never loaded for the API
                # Said "ids above ... are feedback users" for any id, 2147483647 too: the range is
                # theirs, but a build numbers only as many as there were anonymous scored requests.
                raise NotFound(
                    f"no features for user {user_id}: ids above {FEEDBACK_USER_BASE} are reserved for "
                    "feedback users (one per anonymous request scored, numbered from "
                    f"{FEEDBACK_USER_BASE + 1} by each build); the features of the one with this id, "
                    "if one exists, are kept in the features store (`movierec sql`), not served by this API"
                )
            raise NotFound(f"no features for user {user_id} in the latest feature snapshot")
        try:
            table, computed_at = self._computed_table()
        except Unavailable as exc:
            if down is not None:  # the database's 503 (it may hold a snapshot), not "no snapshot"
                raise down from exc
            raise
        computed = table.get(user_id)
        if computed is None:
            raise NotFound(f"no features for user {user_id}")
        features, rated = computed
        answer = {
            "user_id": user_id,
            "features": features,
            "source": "computed",
            "snapshot_id": None,
            "as_of": computed_at,
        }
        return UserProfile(answer, rated, database_down=down is not None)

    def rated(self, user_id: int, profile: UserProfile) -> frozenset[int]:
        """What ``user_id`` has rated: the movies of their features (``profile``) and those they
        scored since (a score on a list served under their id is their rating; their features know
        it only from the next pipeline run). With the database down, the features' alone: its
        scores cannot be read, and new ones wait in the feedback journal.
        """
        if profile.database_down:  # found down a moment ago: not a second wait for it
            return profile.rated
        try:
            scored = scored_movies(self.db, user_id, profile.scores_since)
        except DatabaseUnavailableError:
            return profile.rated
        return profile.rated | scored if scored else profile.rated

    def rated_by(self, user_ids: Collection[int]) -> dict[int, frozenset[int]]:
        """What each of ``user_ids`` has rated, as :meth:`rated` reads it, for the recommendations
        naming a user without asking for their features (/api/recommend, each item of a batch, the
        web form): two reads however many users, and never an error. A user the loaded snapshot
        does not have (or every user, before the first snapshot: features are not computed from
        the local files here, a request stays a lookup) gets every movie they scored on lists
        served under their id; with the database down, nothing: the model's own exclusion answers
        alone, not a 503.
        """
        users = sorted(set(user_ids))
        try:
            stored = rated_in_snapshot(self.db, users)
        except DatabaseUnavailableError:
            return {}
        rated = {user: stored[user][0] if user in stored else frozenset() for user in users}
        since = {user: _scores_since(stored[user][1]) if user in stored else None for user in users}
        try:
            scored = scored_movies_of(self.db, since)
        except DatabaseUnavailableError:
            return rated
        return {user: movies | scored[user] if user in scored else movies for user, movies in rated.items()}

    def _computed_table(self) -> tuple[dict[int, tuple[dict[str, Any], frozenset[int]]], str]:
        """The computed table and the time it was computed (ISO 8601, UTC)."""
        computed = self._computed
        if computed is not None:
            return computed
        with self._lock:
            if self._computed is None:
                table = self._compute()
                self._computed = (table, datetime.now(UTC).isoformat(timespec="seconds"))
            return self._computed

    def _compute(self) -> dict[int, tuple[dict[str, Any], frozenset[int]]]:
        """The same features and shape as the stored table, from the local data set."""
        from app.recommender.features import GENRE_SLUGS, rated_movies, user_features

        try:
            data = find_local(self.data_dir) if self.data_dir is not None else None
        except DataUnavailableError as exc:  # malformed local files: a 503 that says why, not a 500
            raise Unavailable(  # in its words without the server's paths
                f"user features are not available: the local data set is unusable: {exc.public}"
            ) from exc
        if data is None:
            raise Unavailable("user features are not available: no feature snapshot and no local data set")
        frame = user_features(data.ratings, data.users, data.items)
        rated = {user_id: frozenset(movies) for user_id, movies in rated_movies(data.ratings).items()}
        table: dict[int, tuple[dict[str, Any], frozenset[int]]] = {}
        for record in frame.to_dict(orient="records"):
            features = {name: _plain(record[name]) for name in _PLAIN}
            # unrounded, as the stored table's (app.pipeline.features_store.db_rows)
            features["genre_share"] = {g: float(record[f"share_{g}"]) for g in GENRE_SLUGS}
            features["liked_genre_share"] = {g: float(record[f"liked_share_{g}"]) for g in GENRE_SLUGS}
            user_id = int(record["user_id"])
            table[user_id] = (features, rated.get(user_id, frozenset()))
        log.info("user features computed from local data", extra={"users": len(table)})
        return table
