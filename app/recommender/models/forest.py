"""The seed's model, kept as the baseline row: a random-forest rating regressor.

Features are the seed's — age, gender and occupation as numbers, and the movie id as a
number — and movies are ranked by predicted rating. It is a fair rating predictor and a
poor ranker (EVALUATION.md), which is exactly why it stays in the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from app.recommender.models.base import Recommender
from app.recommender.segments import GENDERS, OCCUPATIONS, Segment

_GENDER_CODE = {g: i for i, g in enumerate(GENDERS)}
_OCCUPATION_CODE = {o: i for i, o in enumerate(OCCUPATIONS)}


def seed_features(
    age: np.ndarray, gender: Sequence[str], occupation: Sequence[str], movie_id: np.ndarray
) -> np.ndarray:
    """The seed's feature matrix: [age, gender code, occupation code, movie id]."""
    return np.column_stack(
        [
            np.asarray(age, dtype=np.float64),
            np.fromiter((_GENDER_CODE[g] for g in gender), dtype=np.float64, count=len(gender)),
            np.fromiter((_OCCUPATION_CODE[o] for o in occupation), dtype=np.float64, count=len(occupation)),
            np.asarray(movie_id, dtype=np.float64),
        ]
    )


class SeedRandomForest(Recommender):
    name: ClassVar[str] = "seed_random_forest"
    predicts_ratings: ClassVar[bool] = True

    def __init__(self, n_estimators: int = 100, min_samples_leaf: int = 10, random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        # Imported here, not at module level: every process that imports the models package
        # (each pipeline step, the CLI) would otherwise pay for scikit-learn and SciPy's stats.
        from sklearn.ensemble import RandomForestRegressor

        self._set_catalogue(items)
        rows = ratings.join(users.set_index("user_id")[["age", "gender", "occupation"]], on="user_id")
        features = seed_features(
            rows["age"], rows["gender"].tolist(), rows["occupation"].tolist(), rows["movie_id"]
        )
        self.model_ = RandomForestRegressor(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            n_jobs=-1,
            random_state=self.random_state,
        ).fit(features, rows["rating"].to_numpy())
        return self

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        n_items = len(self.item_ids)
        count = len(segments) * n_items
        features = seed_features(
            np.repeat([s.age for s in segments], n_items),
            [s.gender for s in segments for _ in range(n_items)],
            [s.occupation for s in segments for _ in range(n_items)],
            np.tile(self.item_ids, len(segments)),
        )
        assert features.shape[0] == count
        return self.model_.predict(features).reshape(len(segments), n_items)

    def predict_ratings(self, requests: pd.DataFrame) -> np.ndarray:
        features = seed_features(
            requests["age"],
            requests["gender"].tolist(),
            requests["occupation"].tolist(),
            requests["movie_id"],
        )
        return self.model_.predict(features)

    def params(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "min_samples_leaf": self.min_samples_leaf,
            "random_state": self.random_state,
        }
