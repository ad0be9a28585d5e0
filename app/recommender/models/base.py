"""The one contract every movierec model implements.

Like LensKit's algorithms: ``fit`` on interactions plus side information, then score. A
model scores the whole catalogue (``item_ids``, fixed at fit time) for

* cold-start segments (:meth:`Recommender.score_segments`) — every model;
* known users (:meth:`Recommender.score_users`) — models with ``supports_users``;

and rating models also predict ratings (:meth:`Recommender.predict_ratings`) for RMSE and the
online-quality monitor. Higher score = better. Ranking and exclusion of already-rated movies
live in :mod:`app.recommender.ranking`, not in the models.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from app.recommender.segments import Segment


class NotSupportedError(NotImplementedError):
    """The model cannot answer this kind of request (e.g. known users for a cold-start model)."""


class Recommender(ABC):
    """Base class: subclasses set ``name`` and implement ``fit`` and ``score_segments``."""

    name: ClassVar[str]
    supports_users: ClassVar[bool] = False
    predicts_ratings: ClassVar[bool] = False  # ``predict_ratings`` works (offline RMSE)
    # ``predict_records`` serves /api/predict/* (records as the API takes them); the seed's
    # forest predicts ratings but not from such records
    serves_records: ClassVar[bool] = False
    # ``rated_positions`` works: the model keeps what each known user rated in training, so a
    # lone model.pkl (no data set beside it) can still leave those movies out of their lists
    keeps_ratings: ClassVar[bool] = False

    item_ids: np.ndarray

    def _set_catalogue(self, items: pd.DataFrame) -> None:
        self.item_ids = items["movie_id"].to_numpy(dtype=np.int64)
        self._item_pos = pd.Index(self.item_ids)

    def item_positions(self, movie_ids: Sequence[int] | np.ndarray | pd.Series) -> np.ndarray:
        """Column of each movie id in the score matrices (-1 when not in the catalogue)."""
        return self._item_pos.get_indexer(np.asarray(movie_ids))

    @abstractmethod
    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        """Learn from ``ratings`` (user_id, movie_id, rating, timestamp), ``users`` and ``items``."""

    @abstractmethod
    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        """Scores, shape (len(segments), len(item_ids))."""

    def score_users(self, user_ids: Sequence[int]) -> np.ndarray:
        """Scores for users seen in training, shape (len(user_ids), len(item_ids))."""
        raise NotSupportedError(f"{self.name} does not score known users")

    def known_users(self) -> np.ndarray:
        """Ids of the users :meth:`score_users` can answer for."""
        return np.empty(0, dtype=np.int64)

    def rated_positions(self, user_ids: Sequence[int]) -> list[np.ndarray]:
        """Catalogue positions each known user rated in training (models with ``keeps_ratings``)."""
        raise NotSupportedError(f"{self.name} does not keep its training ratings")

    def predict_ratings(self, requests: pd.DataFrame) -> np.ndarray:
        """Predicted ratings for rows with age, gender, occupation, movie_id (and user_id)."""
        raise NotSupportedError(f"{self.name} does not predict ratings")

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Predicted ratings of records as /api/predict/* takes them (models with ``serves_records``)."""
        raise NotSupportedError(f"{self.name} does not predict ratings of request records")

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, recorded in the bundle manifest and the registry."""
        return {}


def liked(ratings: pd.DataFrame, threshold: float = 4.0) -> pd.DataFrame:
    """Ratings that count as a like (the relevance definition of EVALUATION.md)."""
    return ratings[ratings["rating"] >= threshold]
