"""The shared skeleton of known-user models: personal scores for users, a cold-start delegate for segments.

Every served model must answer every cold-start segment, but collaborative models (EASE,
item-kNN) know nothing about demographics. So each one owns a cold-start component (by
default the :class:`DemographicKernel`) fitted on the same data, and answers segments
through it: one model then serves the best known-user scorer *and* the best cold-start
scorer, and the promotion gate's protocol-A check measures exactly what it will serve.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from scipy import sparse

from app.recommender.models.base import Recommender
from app.recommender.models.kernel import DemographicKernel
from app.recommender.segments import Segment

# Confidence of an interaction by its rating 1..5: a like (≥ 4) says more than a mere
# "watched", and a low rating still says "watched". Interpolated for half stars.
DEFAULT_RATING_WEIGHTS: tuple[float, float, float, float, float] = (0.5, 0.75, 1.0, 2.0, 2.5)


class UnknownUserError(KeyError):
    """A user id the model was not trained on (serving falls back to the cold-start path)."""


def interaction_matrix(
    ratings: pd.DataFrame,
    user_ids: np.ndarray,
    positions: np.ndarray,
    n_items: int,
    rating_weights: Sequence[float] = DEFAULT_RATING_WEIGHTS,
) -> sparse.csr_matrix:
    """Users x catalogue matrix; each rated cell holds the weight of its rating (0 = not rated)."""
    if len(rating_weights) != 5:
        raise ValueError("rating_weights needs one weight per star, 1 to 5")
    values = np.interp(ratings["rating"].to_numpy(dtype=np.float64), [1, 2, 3, 4, 5], rating_weights)
    rows = pd.Index(user_ids).get_indexer(ratings["user_id"].to_numpy())
    keep = (rows >= 0) & (positions >= 0)
    matrix = sparse.csr_matrix((values[keep], (rows[keep], positions[keep])), shape=(len(user_ids), n_items))
    matrix.sum_duplicates()
    return matrix


class KnownUserRecommender(Recommender):
    """Base of collaborative models: subclasses implement ``_fit_items`` and ``_score_rows``."""

    supports_users: ClassVar[bool] = True
    keeps_ratings: ClassVar[bool] = True  # the interaction matrix's stored cells

    def __init__(
        self,
        rating_weights: Sequence[float] = DEFAULT_RATING_WEIGHTS,
        cold_start: Callable[[], Recommender] = DemographicKernel,
    ) -> None:
        self.rating_weights = tuple(float(w) for w in rating_weights)
        self.cold_start = cold_start

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        self._set_catalogue(items)
        self.user_ids_ = np.unique(ratings["user_id"].to_numpy()).astype(np.int64)
        self._user_pos = pd.Index(self.user_ids_)
        self.interactions_ = interaction_matrix(
            ratings,
            self.user_ids_,
            self.item_positions(ratings["movie_id"]),
            len(self.item_ids),
            self.rating_weights,
        )
        self._fit_items(self.interactions_)
        self.cold_start_ = self.cold_start().fit(ratings, users, items)
        return self

    @abstractmethod
    def _fit_items(self, interactions: sparse.csr_matrix) -> None:
        """Learn the item model from the weighted users x items matrix."""

    @abstractmethod
    def _score_rows(self, interactions: sparse.csr_matrix) -> np.ndarray:
        """Scores (n rows, n items) for users given as interaction rows."""

    def _rows(self, user_ids: Sequence[int]) -> np.ndarray:
        rows = self._user_pos.get_indexer(np.asarray(user_ids, dtype=np.int64))
        if (rows < 0).any():
            unknown = np.asarray(user_ids)[rows < 0]
            raise UnknownUserError(f"{len(unknown)} user id(s) not seen in training, e.g. {int(unknown[0])}")
        return rows

    def score_users(self, user_ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self._score_rows(self.interactions_[self._rows(user_ids)]), dtype=np.float64)

    def rated_positions(self, user_ids: Sequence[int]) -> list[np.ndarray]:
        matrix = self.interactions_
        return [matrix.indices[matrix.indptr[row] : matrix.indptr[row + 1]] for row in self._rows(user_ids)]

    def known_users(self) -> np.ndarray:
        return self.user_ids_

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        return self.cold_start_.score_segments(segments)

    def params(self) -> dict[str, Any]:
        probe = self.cold_start()
        return {
            "rating_weights": list(self.rating_weights),
            "cold_start": {"name": probe.name, **probe.params()},
        }
