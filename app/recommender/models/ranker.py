"""A learned cold-start ranker: gradient-boosted trees on segment x movie features (LightGBM).

Each training example is (training user, candidate movie), labelled 1 when the user liked
the movie. The user is described only by what a cold-start request carries — gender, age
bucket and occupation — so training sees exactly what serving will see. Features:

* segment-level evidence about the movie: the demographic-kernel share (kernel.py) and the
  like shares of the user's gender, age bucket, occupation, gender x bucket and full
  segment (shrunk towards the global share), with those groups' sizes;
* the movie: global like share, number of ratings, smoothed mean rating, year, genres;
* the demographics themselves (categorical), so trees can learn genre x demographic effects.

The segment-level features of a training user are computed *out of fold* (from the other
folds' users only), otherwise a user's own likes would leak into their features and the
model would learn to trust small, noisy groups. At serving time the same features come from
all training users. Only the ``n_candidates`` most-liked movies are scored by the trees; the
rest of the catalogue keeps the global most-liked order below them (no top-10 list on
ml-100k reaches that far down).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from scipy import sparse

from app.recommender.data import GENRES
from app.recommender.models.base import Recommender
from app.recommender.models.kernel import like_matrix, segment_weights
from app.recommender.models.popularity import popularity_scores
from app.recommender.segments import GENDERS, OCCUPATIONS, Segment, age_bucket, all_segments, segment_index

# Group levels for like shares: which of (gender, bucket, occupation) define the group.
_LEVELS: tuple[tuple[str, ...], ...] = (("g",), ("b",), ("o",), ("g", "b"), ("g", "b", "o"))
_SHRINK = 5.0  # pseudo-users of global share added to each group share


def _segment_codes() -> pd.DataFrame:
    segments = all_segments()
    return pd.DataFrame(
        {
            "g": [s.gender for s in segments],
            "b": [s.age_bucket for s in segments],
            "o": [s.occupation for s in segments],
        }
    )


def segment_evidence(
    profile: pd.DataFrame, likes: sparse.csr_matrix, kernel: tuple[float, float, float]
) -> np.ndarray:
    """(441 segments, n items, n features) like-share features from the users in ``profile``.

    ``profile`` has columns age, gender, occupation aligned with the rows of ``likes``.
    """
    n_users, n_items = likes.shape
    segments = _segment_codes()
    users = pd.DataFrame(
        {
            "g": profile["gender"].to_numpy(),
            "b": [age_bucket(int(a)) for a in profile["age"]],
            "o": profile["occupation"].to_numpy(),
        }
    )
    global_share = np.asarray(likes.mean(axis=0)).ravel()
    features = []
    for level in _LEVELS:
        keys = pd.MultiIndex.from_frame(users[list(level)])
        groups, codes = np.unique(keys.to_flat_index().astype(str), return_inverse=True)
        membership = sparse.csr_matrix(
            (np.ones(n_users), (codes.ravel(), np.arange(n_users))), shape=(len(groups), n_users)
        )
        counts = np.asarray((membership @ likes).todense())
        sizes = np.asarray(membership.sum(axis=1)).ravel()
        shares = (counts + _SHRINK * global_share) / (sizes[:, None] + _SHRINK)
        segment_keys = pd.MultiIndex.from_frame(segments[list(level)]).to_flat_index().astype(str)
        row = pd.Index(groups).get_indexer(segment_keys)
        # Gender "O" (no such users in ml-100k) and empty groups fall back to the global share.
        found = row >= 0
        level_share = np.tile(global_share, (len(segments), 1))
        level_share[found] = shares[row[found]]
        level_size = np.zeros(len(segments))
        level_size[found] = sizes[row[found]]
        features += [level_share, np.repeat(level_size[:, None], n_items, axis=1)]
    weights = segment_weights(
        profile["age"].to_numpy(), profile["gender"].to_numpy(), profile["occupation"].to_numpy(), *kernel
    )
    kernel_share = np.asarray((likes.T @ weights.T).T) / weights.sum(axis=1, keepdims=True)
    features += [kernel_share, np.tile(global_share, (len(segments), 1))]
    return np.stack(features, axis=-1)


class GradientBoostedRanker(Recommender):
    """LightGBM relevance model on segment x movie features, for cold-start segments."""

    name: ClassVar[str] = "lgbm_ranker"

    def __init__(
        self,
        n_candidates: int = 300,
        n_folds: int = 4,
        n_estimators: int = 80,
        learning_rate: float = 0.1,
        negative_share: float = 0.3,
        num_leaves: int = 31,
        min_child_samples: int = 50,
        kernel: tuple[float, float, float] = (5.0, 0.5, 0.5),
        random_state: int = 0,
    ) -> None:
        self.n_candidates = n_candidates
        self.n_folds = n_folds
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.negative_share = negative_share
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        age_scale, gender_weight, occupation_weight = kernel
        self.kernel = (float(age_scale), float(gender_weight), float(occupation_weight))
        self.random_state = random_state

    def _movie_features(self, ratings: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
        positions = self.item_positions(ratings["movie_id"])
        n_items = len(self.item_ids)
        counts = np.bincount(positions[positions >= 0], minlength=n_items).astype(np.float64)
        sums = np.bincount(positions[positions >= 0], ratings["rating"].to_numpy()[positions >= 0], n_items)
        prior = float(ratings["rating"].mean())
        mean_rating = (sums + 10.0 * prior) / (counts + 10.0)
        year = pd.to_numeric(items["year"], errors="coerce").astype(float).to_numpy()
        genres = np.array(
            [[g in str(s).split("|") for g in GENRES] for s in items["genres"]], dtype=np.float64
        )
        return np.column_stack([counts, mean_rating, year, genres])

    @staticmethod
    def _demographics(segment_rows: np.ndarray) -> np.ndarray:
        codes = _segment_codes()
        return np.column_stack(
            [
                codes["g"].map({g: i for i, g in enumerate(GENDERS)}).to_numpy()[segment_rows],
                codes["b"].to_numpy()[segment_rows],
                codes["o"].map({o: i for i, o in enumerate(OCCUPATIONS)}).to_numpy()[segment_rows],
            ]
        ).astype(np.float64)

    def _rows(self, evidence: np.ndarray, segment_rows: np.ndarray) -> np.ndarray:
        """Feature rows for (segment, candidate) pairs: one block of n_candidates per segment."""
        n_cand = len(self.candidates_)
        blocks = evidence[segment_rows][:, self.candidates_, :].reshape(-1, evidence.shape[-1])
        movie = np.tile(self.movie_features_[self.candidates_], (len(segment_rows), 1))
        demo = np.repeat(self._demographics(segment_rows), n_cand, axis=0)
        return np.hstack([blocks, movie, demo])

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        import lightgbm as lgb

        self._set_catalogue(items)
        profile = users.set_index("user_id")
        user_ids = np.intersect1d(ratings["user_id"].unique(), profile.index.to_numpy())
        profile = profile.loc[user_ids, ["age", "gender", "occupation"]].reset_index(drop=True)
        likes = like_matrix(ratings, user_ids, self.item_positions(ratings["movie_id"]), len(self.item_ids))
        self.global_ = popularity_scores(ratings, self.item_ids, liked_only=True)
        order = np.argsort(-self.global_, kind="stable")
        self.candidates_ = order[: min(self.n_candidates, len(order))]
        self.movie_features_ = self._movie_features(ratings, items)

        index = segment_index()
        user_segment = np.array(
            [
                index[Segment.of(int(a), g, o).key]
                for a, g, o in zip(profile["age"], profile["gender"], profile["occupation"], strict=True)
            ]
        )
        rng = np.random.default_rng(self.random_state)
        folds = rng.permutation(len(user_ids)) % max(2, self.n_folds)
        features, labels = [], []
        for fold in np.unique(folds):
            inside = folds == fold
            evidence = segment_evidence(profile[~inside].reset_index(drop=True), likes[~inside], self.kernel)
            rows = np.flatnonzero(inside)
            features.append(self._rows(evidence, user_segment[rows]))
            labels.append(likes[rows][:, self.candidates_].toarray().ravel())
        x, y = np.vstack(features), np.concatenate(labels)
        # Negatives are plentiful and cheap to learn from: a seeded sample of them keeps the fit
        # fast; subsampling one class rescales the odds, which leaves the ranking unchanged.
        keep = (y > 0) | (rng.random(len(y)) < self.negative_share)
        n_demo = 3
        n_features = x.shape[1]
        self.model_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            max_bin=63,
            random_state=self.random_state,
            n_jobs=1,  # deterministic, and no OpenMP spinning against the flow's other workers
            verbose=-1,
        ).fit(
            x[keep],
            y[keep],
            categorical_feature=[n_features - n_demo, n_features - 1],
        )
        self.evidence_ = segment_evidence(profile, likes, self.kernel)
        self.row_ = index
        return self

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        rows = np.array([self.row_[s.key] for s in segments], dtype=np.int64)
        # Non-candidates keep the global most-liked order, strictly below every candidate.
        scores = np.tile(self.global_ / (self.global_.max() + 1.0) - 2.0, (len(rows), 1))
        if len(rows):
            probability = np.asarray(self.model_.predict_proba(self._rows(self.evidence_, rows)))[:, 1]
            scores[:, self.candidates_] = probability.reshape(len(rows), -1)
        return scores

    def params(self) -> dict[str, Any]:
        return {
            "n_candidates": self.n_candidates,
            "n_folds": self.n_folds,
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "negative_share": self.negative_share,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "kernel": list(self.kernel),
            "random_state": self.random_state,
        }
