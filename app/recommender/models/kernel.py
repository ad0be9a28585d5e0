"""Demographic-similarity kernel: what people *like* the requester liked, smoothly weighted.

A segment's score for a movie is a weighted share of training users who liked it (rated it
≥ 4). A training user's weight is the product of three similarities to the segment:

* age: a Laplace kernel ``exp(-|Δage| / bandwidth)`` averaged over the ages of the training
  users *inside the segment's age bucket* — the request's exact age is not part of the key,
  so the kernel integrates over the ages the bucket actually holds (measured slightly better
  than using the bucket's centre, and as good as the exact age: docs/models.md);
* gender: 1 when equal, ``gender_weight`` otherwise (gender "O" matches everyone);
* occupation: 1 when equal, ``occupation_weight`` otherwise.

Why this shape: for one shared list per segment, NDCG is maximised by sorting movies by the
segment's expected gain, i.e. the share of its members who like each movie. Hard segments
(gender x bucket x occupation) are too small to estimate that share — most hold a handful of
users — so every training user contributes, discounted by how different they are. The whole
441 x catalogue table is computed at fit time (one matrix product), so scoring is a lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from scipy import sparse

from app.recommender.models.base import Recommender
from app.recommender.models.popularity import popularity_scores
from app.recommender.segments import (
    AGE_BUCKET_CENTRE,
    GENDERS,
    OCCUPATIONS,
    Segment,
    age_bucket,
    segment_index,
)


def like_matrix(
    ratings: pd.DataFrame, user_ids: np.ndarray, positions: np.ndarray, n_items: int, threshold: float = 4.0
) -> sparse.csr_matrix:
    """Binary users x catalogue matrix of likes; ``positions`` are the ratings' catalogue columns."""
    mask = (ratings["rating"].to_numpy() >= threshold) & (positions >= 0)
    rows = pd.Index(user_ids).get_indexer(ratings["user_id"].to_numpy()[mask])
    keep = rows >= 0
    data = np.ones(int(keep.sum()), dtype=np.float64)
    matrix = sparse.csr_matrix((data, (rows[keep], positions[mask][keep])), shape=(len(user_ids), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def segment_weights(
    ages: np.ndarray,
    genders: np.ndarray,
    occupations: np.ndarray,
    bandwidth: float,
    gender_weight: float,
    occupation_weight: float,
) -> np.ndarray:
    """Kernel weights, shape (441 segments in :func:`all_segments` order, n users).

    Built as an outer product of per-bucket age weights, per-gender and per-occupation
    weights, so all 441 rows cost three small arrays and one broadcast.
    """
    ages = np.asarray(ages, dtype=np.float64)
    genders = np.asarray(genders)
    occupations = np.asarray(occupations)
    buckets = np.array([age_bucket(int(a)) for a in ages], dtype=np.int64)
    age_part = np.empty((len(AGE_BUCKET_CENTRE), len(ages)))
    for bucket, centre in enumerate(AGE_BUCKET_CENTRE):
        inside = ages[buckets == bucket]
        reference = (
            np.unique(inside, return_counts=True) if len(inside) else (np.array([centre]), np.array([1]))
        )
        values, counts = reference
        kernel = np.exp(-np.abs(ages[:, None] - values[None, :]) / bandwidth)
        age_part[bucket] = kernel @ counts / counts.sum()
    gender_part = np.empty((len(GENDERS), len(ages)))
    for index, gender in enumerate(GENDERS):
        gender_part[index] = 1.0 if gender == "O" else np.where(genders == gender, 1.0, gender_weight)
    occupation_part = np.stack([np.where(occupations == o, 1.0, occupation_weight) for o in OCCUPATIONS])
    weights = gender_part[:, None, None, :] * age_part[None, :, None, :] * occupation_part[None, None, :, :]
    return weights.reshape(-1, len(ages))


class DemographicKernel(Recommender):
    """Cold-start scorer: kernel-weighted share of similar training users who liked each movie."""

    name: ClassVar[str] = "demographic_kernel"

    def __init__(
        self, bandwidth: float = 5.0, gender_weight: float = 0.5, occupation_weight: float = 0.5
    ) -> None:
        if bandwidth <= 0:
            raise ValueError("bandwidth must be positive")
        if not (0.0 <= gender_weight <= 1.0 and 0.0 <= occupation_weight <= 1.0):
            raise ValueError("gender_weight and occupation_weight must be in [0, 1]")
        self.bandwidth = bandwidth
        self.gender_weight = gender_weight
        self.occupation_weight = occupation_weight

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        self._set_catalogue(items)
        profile = users.set_index("user_id")
        user_ids = np.intersect1d(ratings["user_id"].unique(), profile.index.to_numpy())
        likes = like_matrix(ratings, user_ids, self.item_positions(ratings["movie_id"]), len(self.item_ids))
        known = profile.loc[user_ids]
        weights = segment_weights(
            known["age"].to_numpy(),
            known["gender"].to_numpy(),
            known["occupation"].to_numpy(),
            self.bandwidth,
            self.gender_weight,
            self.occupation_weight,
        )
        mass = weights.sum(axis=1, keepdims=True)
        shares = np.asarray((likes.T @ weights.T).T) / np.where(mass > 0, mass, 1.0)
        # Ties (movies nobody similar liked) fall back to global most-liked order.
        global_scores = popularity_scores(ratings, self.item_ids, liked_only=True)
        self.table_ = (shares + 1e-9 * global_scores / (global_scores.max() + 1.0)).astype(np.float64)
        self.row_ = segment_index()
        self.n_users_ = len(user_ids)
        return self

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        rows = [self.row_[segment.key] for segment in segments]
        return self.table_[rows].copy()

    def params(self) -> dict[str, Any]:
        return {
            "bandwidth": self.bandwidth,
            "gender_weight": self.gender_weight,
            "occupation_weight": self.occupation_weight,
        }
