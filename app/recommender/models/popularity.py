"""Global popularity: the same ranking for everyone (most-rated or most-liked)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from app.recommender.models.base import Recommender, liked
from app.recommender.segments import Segment


def popularity_scores(ratings: pd.DataFrame, item_ids: np.ndarray, *, liked_only: bool) -> np.ndarray:
    """Count of ratings (or of ratings ≥ 4) per catalogue movie, aligned with ``item_ids``.

    Ties are broken by the total number of ratings, then by movie id (through the stable
    sort in ranking), so the ranking is deterministic.
    """
    source = liked(ratings) if liked_only else ratings
    counts = source["movie_id"].value_counts()
    total = ratings["movie_id"].value_counts()
    primary = counts.reindex(item_ids, fill_value=0).to_numpy(dtype=np.float64)
    secondary = total.reindex(item_ids, fill_value=0).to_numpy(dtype=np.float64)
    return primary + secondary / (secondary.max() + 1.0)


class GlobalPopularity(Recommender):
    """Rank by how many users rated (``liked_only=False``) or liked the movie."""

    name: ClassVar[str] = "most_liked"
    supports_users: ClassVar[bool] = True

    def __init__(self, liked_only: bool = True) -> None:
        self.liked_only = liked_only
        if not liked_only:
            self.name = "most_rated"  # type: ignore[misc]

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        self._set_catalogue(items)
        self.scores_ = popularity_scores(ratings, self.item_ids, liked_only=self.liked_only)
        self.users_ = np.unique(ratings["user_id"].to_numpy())
        return self

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        return np.tile(self.scores_, (len(segments), 1))

    def score_users(self, user_ids: Sequence[int]) -> np.ndarray:
        return np.tile(self.scores_, (len(user_ids), 1))

    def known_users(self) -> np.ndarray:
        return self.users_

    def params(self) -> dict[str, Any]:
        return {"liked_only": self.liked_only}
