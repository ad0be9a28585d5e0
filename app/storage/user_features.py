"""The ``user_features`` table: the latest feature-store snapshot, readable by the service.

The training flow computes features (app/recommender/features.py), keeps every snapshot as
Parquet (app/pipeline/features_store.py) and loads the newest one here, so the features API
answers from the service database without Parquet, DuckDB or the pipeline extras.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, text, union

from app.storage.db import Database
from app.storage.models import Feedback, RecommendationRequest, UserFeatures, utcnow

_COLUMNS = (
    "user_id", "age", "age_group", "gender", "occupation", "n_ratings", "n_liked", "liked_share",
    "mean_rating", "std_rating", "first_ts", "last_ts", "genre_share", "liked_genre_share", "rated_movies",
)  # fmt: skip


def _clean(value: Any) -> Any:
    """NaN / pandas NA become NULL; NumPy scalars become Python numbers."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, dict | list | str):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        if value != value:  # pandas.NA and friends compare unequal to themselves
            return None
    except TypeError:  # pandas.NA raises on truth testing
        return None
    return value


def replace_user_features(
    db: Database, rows: Iterable[Mapping[str, Any]], snapshot_id: str, computed_at: datetime | None = None
) -> int:
    """Replace the whole table with ``rows`` (one per user) in one transaction; return the count.

    Readers see either the previous snapshot or this one, never a mix.
    """
    stamp = computed_at or utcnow()
    values = [
        {
            **{name: _clean(row.get(name)) for name in _COLUMNS},
            "snapshot_id": snapshot_id,
            "computed_at": stamp,
        }
        for row in rows
    ]
    with db.session() as session:
        if db.engine.dialect.name == "postgresql":
            # Two loads at once (`movierec features build` during a flow's features step): the
            # second DELETE would wait for the first load, skip the rows it inserted (not in its
            # snapshot) and its INSERT then hit their keys. EXCLUSIVE mode queues the loads and
            # still lets readers read the previous snapshot. SQLite serialises writers itself.
            session.execute(text("LOCK TABLE user_features IN EXCLUSIVE MODE"))
        session.execute(delete(UserFeatures))
        if values:
            session.execute(insert(UserFeatures), values)
    return len(values)


def get_user_features(db: Database, user_id: int) -> UserFeatures | None:
    """The stored features of one user, or None when the latest snapshot does not have them."""
    with db.session() as session:
        return session.get(UserFeatures, user_id)


def user_features_snapshot(db: Database) -> tuple[str | None, int]:
    """(snapshot id, number of users) currently loaded; (None, 0) when the table is empty."""
    with db.session() as session:
        snapshot, count = session.execute(
            select(func.max(UserFeatures.snapshot_id), func.count(UserFeatures.user_id))
        ).one()
    return snapshot, int(count)


def rated_in_snapshot(
    db: Database, user_ids: Collection[int]
) -> dict[int, tuple[frozenset[int], datetime | None]]:
    """Of those of ``user_ids`` the loaded snapshot has, the movies each rated and the time of the
    snapshot's load: one read, by primary key, whatever the number of ids."""
    query = select(UserFeatures.user_id, UserFeatures.rated_movies, UserFeatures.computed_at).where(
        UserFeatures.user_id.in_(sorted(user_ids))
    )
    with db.session() as session:
        return {
            int(user): (frozenset(int(m) for m in movies or ()), computed_at)
            for user, movies, computed_at in session.execute(query)
        }


def scored_movies(db: Database, user_id: int, since: datetime | None = None) -> frozenset[int]:
    """The movies ``user_id`` scored on lists served under their id (each a rating of theirs from
    the next ingest on), those scored at or after ``since`` only when it is given.

    Read from the user's own lists (the partial index on ``recommendation_requests.user_id``,
    migration 0008) and their scores (``feedback.request_id``): as many rows as the user has lists,
    whatever the other users do. ``since`` bounds the scores, not the lists: a list can be scored at
    any time after it was served, so one served long before ``since`` may hold a score since.
    """
    return scored_movies_of(db, {user_id: since}).get(user_id, frozenset())


def scored_movies_of(db: Database, since: Mapping[int, datetime | None]) -> dict[int, frozenset[int]]:
    """:func:`scored_movies` of each user of ``since`` (user id → their ``since``), in one read;
    a user who scored nothing has no entry."""
    groups: dict[datetime | None, list[int]] = {}
    for user, at in since.items():
        groups.setdefault(at, []).append(user)
    # a part per bound, each the one-user read's shape (the user's lists by the index, their scores by
    # the lists' ids): one for the snapshot's users (every row of a snapshot has its load's time), one
    # for those without; an OR of them in one WHERE had PostgreSQL scan the whole feedback table
    parts = []
    for at, users in groups.items():
        part = (
            select(RecommendationRequest.user_id, Feedback.movie_id)
            .select_from(RecommendationRequest)
            .join(Feedback, Feedback.request_id == RecommendationRequest.id)
            .where(RecommendationRequest.user_id.in_(sorted(users)))
        )
        parts.append(part if at is None else part.where(Feedback.created_at >= at))
    if not parts:
        return {}
    query = parts[0].distinct() if len(parts) == 1 else union(*parts)
    scored: dict[int, set[int]] = {}
    with db.session() as session:
        for scorer, movie in session.execute(query):
            assert scorer is not None  # the lists asked for by their user's id
            scored.setdefault(int(scorer), set()).add(int(movie))
    return {user: frozenset(movies) for user, movies in scored.items()}
