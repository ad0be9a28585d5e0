"""EASE (Steck, 2019): a closed-form item-item model for known users.

``B = argmin ‖X - XB‖² + λ‖B‖²`` subject to ``diag(B) = 0`` has the closed form
``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` (column-wise), ``diag(B) = 0``; a user's scores
are their interaction row times ``B``. One symmetric positive-definite inverse of
catalogue size (≈1,700² on ml-100k) is the whole fit: well under a second.

Two choices beyond the paper, both measured on protocol B (docs/models.md): the input is
rating-weighted (a like counts more than a low rating, see ``DEFAULT_RATING_WEIGHTS``),
and λ is larger than the binary-input optimum because the weights scale ``XᵀX`` up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from scipy import linalg, sparse

from app.recommender.models.base import Recommender
from app.recommender.models.hybrid import DEFAULT_RATING_WEIGHTS, KnownUserRecommender
from app.recommender.models.kernel import DemographicKernel


def ease_weights(gram: np.ndarray, l2: float) -> np.ndarray:
    """The EASE item-item matrix from a Gram matrix ``XᵀX`` (not modified)."""
    if l2 <= 0:
        raise ValueError("l2 must be positive")
    regularised = np.array(gram, dtype=np.float32, copy=True)
    regularised[np.diag_indices_from(regularised)] += np.float32(l2)
    # Cholesky-based inverse of the SPD matrix in single precision: several times faster than a
    # general double-precision inverse, and λ keeps it well conditioned (relative error ~1e-6).
    factor, info = linalg.lapack.spotrf(regularised, lower=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"Gram matrix is not positive definite (spotrf info={info})")
    inverse, info = linalg.lapack.spotri(factor, lower=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverse failed (spotri info={info})")
    inverse = np.triu(inverse) + np.triu(inverse, 1).T  # spotri fills the upper triangle only
    weights = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


class EASE(KnownUserRecommender):
    """EASE for known users; cold-start segments go to the demographic kernel."""

    name: ClassVar[str] = "ease"

    def __init__(
        self,
        l2: float = 1000.0,
        rating_weights: Sequence[float] = DEFAULT_RATING_WEIGHTS,
        cold_start: Callable[[], Recommender] = DemographicKernel,
    ) -> None:
        super().__init__(rating_weights, cold_start)
        self.l2 = l2

    def _fit_items(self, interactions: sparse.csr_matrix) -> None:
        gram = (interactions.T @ interactions).toarray()
        self.weights_ = ease_weights(gram, self.l2)

    def _score_rows(self, interactions: sparse.csr_matrix) -> np.ndarray:
        return np.asarray(interactions.astype(np.float32) @ self.weights_, dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"l2": self.l2, **super().params()}
