"""No test interaction reaches what a model is fitted on, and protocol B ranks what it should.

A spy model records what ``fit`` receives and answers with an "oracle" that would score 1.0 if
anything of the test users leaked: it ranks first the movies liked in the ratings it was given
by users it is later asked about.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from app.recommender.evaluation import protocol_a, protocol_b, split_ratings, split_users
from app.recommender.models.base import Recommender
from app.recommender.segments import Segment

pytestmark = pytest.mark.unit


class Spy(Recommender):
    name: ClassVar[str] = "spy"
    supports_users: ClassVar[bool] = True

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Spy:
        self._set_catalogue(items)
        self.ratings, self.users = ratings.copy(), users.copy()
        return self

    def _likes_of(self, user_ids: Sequence[int]) -> np.ndarray:
        liked = self.ratings[(self.ratings["rating"] >= 4) & self.ratings["user_id"].isin(user_ids)]
        scores = np.zeros(len(self.item_ids))
        cols = self.item_positions(liked["movie_id"])
        np.add.at(scores, cols[cols >= 0], 1.0)
        return scores

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        return np.tile(self._likes_of(self.users["user_id"].tolist()), (len(segments), 1))

    def score_users(self, user_ids: Sequence[int]) -> np.ndarray:
        # every held-out movie scores highest if it leaked; training-rated ones are excluded by the protocol
        return np.vstack([self._likes_of([u]) + self._held_bonus(u) for u in user_ids])

    def _held_bonus(self, user_id: int) -> np.ndarray:
        return np.zeros(len(self.item_ids))


def test_protocol_a_fits_on_training_users_only(synthetic_data) -> None:
    spy = Spy()
    protocol_a(spy, synthetic_data, seed=0)
    _, test_ids = split_users(synthetic_data.users["user_id"], 0)
    assert not spy.ratings["user_id"].isin(test_ids).any()
    assert not spy.users["user_id"].isin(test_ids).any()  # no profile either: age-bucket stats, segment sizes


def test_protocol_b_fits_without_held_out_ratings_and_excludes_only_training_ones(synthetic_data) -> None:
    spy = Spy()
    result = protocol_b(spy, synthetic_data, seed=0)
    train, held = split_ratings(synthetic_data.ratings, 0)
    keys = ["user_id", "movie_id"]
    seen = spy.ratings[keys].merge(held[keys], on=keys)
    assert seen.empty and len(spy.ratings) == len(train)
    # The spy ranks a user's own training likes first: excluded, so they never reach a list and
    # cannot hit; a leak of the held-out likes would instead give NDCG 1.
    assert result["ndcg@10"] < 0.9


def test_protocol_b_would_score_a_leak_perfectly(synthetic_data) -> None:
    """The guard above can fail: a spy that is handed the held-out likes scores ~1."""
    _, held = split_ratings(synthetic_data.ratings, 0)
    liked_held = held[held["rating"] >= 4]

    class Leaky(Spy):
        def _held_bonus(self, user_id: int) -> np.ndarray:
            bonus = np.zeros(len(self.item_ids))
            cols = self.item_positions(liked_held.loc[liked_held["user_id"] == user_id, "movie_id"])
            bonus[cols[cols >= 0]] = 1e6
            return bonus

    assert protocol_b(Leaky(), synthetic_data, seed=0)["ndcg@10"] == pytest.approx(1.0)
