"""No real model learns anything of a split's test part (tests/unit/test_evaluation_leakage.py
checks the harness with a spy; these check every candidate as it is, through the protocols).

Two data sets share every training interaction and differ only in what a split tests: the test
users (protocol A) or the held-out ratings (protocol B) rate a *test-only movie* 5, which no
training interaction names, and their other test ratings are flipped (1 <-> 5). The splits
depend only on user ids and each user's number of ratings, so both data sets split alike, and
each model fitted through a protocol must score every segment and every evaluated user
identically on the two: any statistic taken from a test interaction (a popularity count, an item
mean, a segment's like share, EASE's Gram matrix, a kNN similarity, the ranker's movie features,
the rating model's encoder or standardisation) would tell them apart. Fitted on all the data
instead, every model does tell them apart: the check can fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.recommender.data import MovieLens
from app.recommender.evaluation import protocol_a, protocol_b, split_ratings, split_users
from app.recommender.models import Recommender, make_model
from app.recommender.models.ease import EASE
from app.recommender.models.forest import SeedRandomForest
from app.recommender.models.itemknn import ItemKNN
from app.recommender.models.linear import LinearRatingModel
from app.recommender.models.ranker import GradientBoostedRanker
from app.recommender.segments import all_segments

pytestmark = pytest.mark.unit

SEED = 0
TEST_ONLY = 10_001  # a catalogue movie only the test part rates

# Every candidate (small where fitting is slow) and the rating model /api/predict serves.
MODELS: dict[str, Any] = {
    "most_rated": lambda: make_model("most_rated"),
    "most_liked": lambda: make_model("most_liked"),
    "segment_most_liked": lambda: make_model("segment_most_liked"),
    "seed_random_forest": lambda: SeedRandomForest(n_estimators=5),
    "demographic_kernel": lambda: make_model("demographic_kernel"),
    "lgbm_ranker": lambda: GradientBoostedRanker(n_estimators=10, n_candidates=40, min_child_samples=5),
    "ease": lambda: EASE(l2=10.0),
    "item_knn": lambda: ItemKNN(k=10),
    "linear_rating": lambda: LinearRatingModel(epochs=3),
}
KNOWN_USER_MODELS = [name for name in MODELS if MODELS[name]().supports_users]


def _with_test_only_movie(data: MovieLens) -> MovieLens:
    extra = pd.DataFrame(
        {"movie_id": [TEST_ONLY], "title": ["Only Tested (1999)"], "year": [1999], "genres": ["Drama"]}
    ).astype(data.items.dtypes.to_dict())
    return MovieLens(data.ratings, data.users, pd.concat([data.items, extra], ignore_index=True))


def _perturbed(data: MovieLens, tested: np.ndarray) -> MovieLens:
    """``data`` with the rows where ``tested`` is True changed: ratings flipped, and each user's
    first such row moved to the test-only movie, rated 5 (one per user: no repeated pair)."""
    ratings = data.ratings.copy()
    ratings.loc[tested, "rating"] = 6.0 - ratings.loc[tested, "rating"]
    first = ratings[tested].groupby("user_id").head(1).index
    ratings.loc[first, ["movie_id", "rating"]] = [TEST_ONLY, 5.0]
    return MovieLens(ratings, data.users, data.items)


@pytest.fixture(scope="module")
def base(synthetic_data: MovieLens) -> MovieLens:
    return _with_test_only_movie(synthetic_data)


@pytest.fixture(scope="module")
def changed_a(base: MovieLens) -> MovieLens:
    _, test_ids = split_users(base.users["user_id"], SEED)
    return _perturbed(base, base.ratings["user_id"].isin(test_ids).to_numpy())


@pytest.fixture(scope="module")
def changed_b(base: MovieLens) -> MovieLens:
    _, held = split_ratings(base.ratings, SEED)
    return _perturbed(base, base.ratings.index.isin(held.index))


def _same(actual: np.ndarray, desired: np.ndarray) -> None:
    """Equal but for the order of a float sum (the forest's trees are summed by parallel jobs)."""
    np.testing.assert_allclose(actual, desired, rtol=1e-12, atol=0.0)


def _segments(model: Recommender) -> np.ndarray:
    return model.score_segments(all_segments())


@pytest.mark.parametrize("name", list(MODELS))
def test_protocol_a_models_learn_nothing_of_the_test_users(
    name: str, base: MovieLens, changed_a: MovieLens
) -> None:
    first, second = MODELS[name](), MODELS[name]()
    protocol_a(first, base, SEED)
    protocol_a(second, changed_a, SEED)
    column = int(first.item_positions([TEST_ONLY])[0])
    _same(_segments(first)[:, column], _segments(second)[:, column])
    _same(_segments(first), _segments(second))
    if first.predicts_ratings:
        probe = changed_a.ratings.join(changed_a.users.set_index("user_id"), on="user_id").drop(
            columns="user_id"
        )
        _same(first.predict_ratings(probe), second.predict_ratings(probe))


@pytest.mark.parametrize("name", KNOWN_USER_MODELS)
def test_protocol_b_models_learn_nothing_of_the_held_out_ratings(
    name: str, base: MovieLens, changed_b: MovieLens
) -> None:
    first, second = MODELS[name](), MODELS[name]()
    protocol_b(first, base, SEED)
    protocol_b(second, changed_b, SEED)
    users = sorted(set(first.known_users().tolist()))
    _same(first.score_users(users), second.score_users(users))
    _same(_segments(first), _segments(second))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_perturbation_is_visible_to_a_model_fitted_on_everything(
    name: str, base: MovieLens, changed_a: MovieLens, changed_b: MovieLens
) -> None:
    """What the two tests above hold equal differs as soon as the test part is trained on."""
    for changed in (changed_a, changed_b):
        first = MODELS[name]().fit(base.ratings, base.users, base.items)
        second = MODELS[name]().fit(changed.ratings, changed.users, changed.items)
        assert not np.allclose(_segments(first), _segments(second), rtol=1e-12, atol=0.0)
