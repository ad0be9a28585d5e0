"""Synthetic feedback users (one per scored anonymous request, ids above FEEDBACK_USER_BASE) in
the offline protocols.

They are no MovieLens users and no caller is one of them (bundles give them no list), so they
are never evaluated: they were split with the MovieLens users, so some of them were protocol-A
test users (and the accuracy test's profiles), their scores protocol B's held-out likes, and
every new scored request reshuffled which MovieLens users were tested. Their ratings still train
the models, in every split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.pipeline.ingest import FEEDBACK_COLUMNS, feedback_to_ratings, merge_feedback
from app.recommender.data import FEEDBACK_USER_BASE, MovieLens
from app.recommender.evaluation import protocol_a, protocol_b, split_ratings, split_users
from app.recommender.training import make_test_data
from tests.unit.test_evaluation_leakage import Spy

pytestmark = pytest.mark.unit

N_REQUESTS = 40
STAMP = pd.Timestamp("2024-01-01", tz="UTC")


def with_feedback_users(data: MovieLens) -> MovieLens:
    """``data`` plus N_REQUESTS anonymous scored requests, merged as the training flow's ingest does."""
    movies = data.items["movie_id"].to_numpy()
    rows = []
    for request in range(1, N_REQUESTS + 1):
        gender = "F" if request % 2 else "M"
        for n in range(5):
            movie = int(movies[(request * 7 + n * 3) % len(movies)])
            rows.append(
                (len(rows) + 1, request, movie, 5.0, STAMP, STAMP, None, 20 + request, gender, "artist")
            )
    feedback = pd.DataFrame(rows, columns=FEEDBACK_COLUMNS)
    ratings, users, dropped = feedback_to_ratings(feedback, data.users["user_id"].to_numpy(), movies)
    assert dropped == 0 and len(users) == N_REQUESTS
    return merge_feedback(data, ratings, users)


@pytest.fixture(scope="module")
def mixed(synthetic_data: MovieLens) -> MovieLens:
    return with_feedback_users(synthetic_data)


def _synthetic(ids: Any) -> np.ndarray:
    return np.asarray(ids) > FEEDBACK_USER_BASE


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 42])
def test_protocol_a_tests_the_movielens_users_it_tests_without_feedback(
    synthetic_data: MovieLens, mixed: MovieLens, seed: int
) -> None:
    train, test = split_users(mixed.users["user_id"], seed)
    raw_train, raw_test = split_users(synthetic_data.users["user_id"], seed)
    assert not _synthetic(test).any()
    assert test.tolist() == raw_test.tolist()  # the documented split of the MovieLens ids alone
    assert _synthetic(train).sum() == N_REQUESTS  # every feedback user trains
    assert train[~_synthetic(train)].tolist() == raw_train.tolist()


def test_protocol_a_trains_on_feedback_users_and_evaluates_only_movielens_ones(
    synthetic_data: MovieLens, mixed: MovieLens
) -> None:
    spy = Spy()
    result = protocol_a(spy, mixed, seed=0)
    feedback_ids = mixed.users.loc[_synthetic(mixed.users["user_id"]), "user_id"]
    assert feedback_ids.isin(spy.users["user_id"]).all()
    feedback_ratings = mixed.ratings[_synthetic(mixed.ratings["user_id"])]
    assert len(spy.ratings[_synthetic(spy.ratings["user_id"])]) == len(feedback_ratings)
    assert result["n_users"] == protocol_a(Spy(), synthetic_data, seed=0)["n_users"]


def test_protocol_b_holds_out_and_evaluates_only_movielens_users(
    synthetic_data: MovieLens, mixed: MovieLens
) -> None:
    train, held = split_ratings(mixed.ratings, 0)
    _, raw_held = split_ratings(synthetic_data.ratings, 0)
    assert not _synthetic(held["user_id"]).any()
    assert held.equals(raw_held)
    assert _synthetic(train["user_id"]).sum() == _synthetic(mixed.ratings["user_id"]).sum()
    assert protocol_b(Spy(), mixed, seed=0)["n_users"] == protocol_b(Spy(), synthetic_data, seed=0)["n_users"]


def test_the_accuracy_test_profiles_are_movielens_test_users(
    synthetic_data: MovieLens, mixed: MovieLens
) -> None:
    assert make_test_data(mixed) == make_test_data(synthetic_data)
