"""Segment most-liked: what users like you (gender × age bucket × occupation) liked.

Small segments are noisy, so a segment with fewer than ``min_users`` training users backs
off to a coarser one: drop the occupation, then the age bucket, then everything (global).
Gender "O" has no training users in ml-100k and acts as "any gender".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from app.recommender.models.base import Recommender, liked
from app.recommender.models.popularity import popularity_scores
from app.recommender.segments import Segment, age_bucket


class SegmentMostLiked(Recommender):
    name: ClassVar[str] = "segment_most_liked"

    def __init__(self, min_users: int = 10) -> None:
        self.min_users = min_users

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        self._set_catalogue(items)
        profile = users.set_index("user_id").loc[:, ["age", "gender", "occupation"]].copy()
        profile["bucket"] = [age_bucket(int(a)) for a in profile["age"]]
        active = profile.loc[profile.index.intersection(ratings["user_id"].unique())]
        likes = liked(ratings).join(active, on="user_id", how="inner")
        positions = self.item_positions(likes["movie_id"])
        likes = likes.assign(col=positions)[positions >= 0]
        n_items = len(self.item_ids)
        self.global_ = popularity_scores(ratings, self.item_ids, liked_only=True)
        tiebreak = self.global_ / (self.global_.max() + 1.0)

        self.tables_: dict[tuple[str, ...], tuple[int, np.ndarray]] = {}
        levels = {
            "gbo": ["gender", "bucket", "occupation"],
            "gb": ["gender", "bucket"],
            "bo": ["bucket", "occupation"],
            "g": ["gender"],
            "b": ["bucket"],
        }
        for level, columns in levels.items():
            user_counts = active.groupby(columns).size()
            for key, group in likes.groupby(columns):
                key_tuple = key if isinstance(key, tuple) else (key,)
                counts = np.bincount(group["col"].to_numpy(), minlength=n_items).astype(np.float64)
                n_users = int(user_counts.loc[key])
                self.tables_[(level, *map(str, key_tuple))] = (n_users, counts + tiebreak)
        return self

    def _chain(self, segment: Segment) -> list[tuple[str, ...]]:
        b = str(segment.age_bucket)
        if segment.gender == "O":
            return [("bo", b, segment.occupation), ("b", b)]
        g = segment.gender
        return [("gbo", g, b, segment.occupation), ("gb", g, b), ("g", g)]

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        rows = []
        for segment in segments:
            for key in self._chain(segment):
                entry = self.tables_.get(key)
                if entry is not None and entry[0] >= self.min_users:
                    rows.append(entry[1])
                    break
            else:
                rows.append(self.global_)
        return np.vstack(rows)

    def params(self) -> dict[str, Any]:
        return {"min_users": self.min_users}
