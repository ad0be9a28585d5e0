"""Item-kNN: score a movie by its cosine similarity to what the user rated, top-k neighbours only.

The classic neighbourhood baseline for known users. Similarities are cosines between the
movies' columns of the rating-weighted interaction matrix; each movie keeps only its ``k``
most similar neighbours, which removes the long tail of weak, noisy similarities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from scipy import sparse

from app.recommender.models.base import Recommender
from app.recommender.models.hybrid import DEFAULT_RATING_WEIGHTS, KnownUserRecommender
from app.recommender.models.kernel import DemographicKernel


def top_k_cosine(interactions: sparse.csr_matrix, k: int) -> np.ndarray:
    """Item x item cosine similarity, keeping the ``k`` largest per column (self excluded)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    gram = (interactions.T @ interactions).toarray()
    norms = np.sqrt(np.diag(gram))
    norms[norms == 0] = 1.0
    similarity = gram / norms[:, None] / norms[None, :]
    np.fill_diagonal(similarity, 0.0)
    k = min(k, similarity.shape[0] - 1)
    if k < similarity.shape[0] - 1:
        # Zero everything below each column's k-th largest value (ties kept deterministically).
        cut = np.partition(similarity, -k, axis=0)[-k]
        order = np.argsort(-similarity, axis=0, kind="stable")[:k]
        kept = np.zeros_like(similarity, dtype=bool)
        np.put_along_axis(kept, order, True, axis=0)
        similarity = np.where(kept & (similarity >= cut[None, :]), similarity, 0.0)
    return similarity


class ItemKNN(KnownUserRecommender):
    """Item-based nearest neighbours for known users; cold-start segments go to the demographic kernel."""

    name: ClassVar[str] = "item_knn"

    def __init__(
        self,
        k: int = 50,
        rating_weights: Sequence[float] = DEFAULT_RATING_WEIGHTS,
        cold_start: Callable[[], Recommender] = DemographicKernel,
    ) -> None:
        super().__init__(rating_weights, cold_start)
        self.k = k

    def _fit_items(self, interactions: sparse.csr_matrix) -> None:
        self.similarity_ = sparse.csr_matrix(top_k_cosine(interactions, self.k))

    def _score_rows(self, interactions: sparse.csr_matrix) -> np.ndarray:
        return np.asarray((interactions @ self.similarity_).toarray(), dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"k": self.k, **super().params()}
