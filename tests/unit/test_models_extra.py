"""Hand-checkable behaviour of the candidate models: kernel, EASE, item-kNN, LightGBM ranker.

Tiny matrices where the answer can be computed by hand (or by a slower, obviously correct
formula), and the shared synthetic data (tests/synthetic.py) where women like odd movies
and men like even ones, to check that each model finds a planted preference.
"""

from __future__ import annotations

import io
import math

import joblib
import numpy as np
import pandas as pd
import pytest

from app.recommender.models import CANDIDATES, DEFAULT_CANDIDATES, make_model
from app.recommender.models.ease import EASE, ease_weights
from app.recommender.models.hybrid import UnknownUserError, interaction_matrix
from app.recommender.models.itemknn import ItemKNN, top_k_cosine
from app.recommender.models.kernel import DemographicKernel, segment_weights
from app.recommender.models.ranker import GradientBoostedRanker
from app.recommender.ranking import top_n
from app.recommender.segments import Segment, all_segments, segment_index
from tests.synthetic import TWIN_IDS

pytestmark = pytest.mark.unit


def _tiny(ratings: list[tuple[int, int, float]], users: list[tuple[int, int, str, str]], n_items: int):
    frame = pd.DataFrame(ratings, columns=["user_id", "movie_id", "rating"]).assign(timestamp=0)
    people = pd.DataFrame(users, columns=["user_id", "age", "gender", "occupation"]).assign(zip_code="0")
    items = pd.DataFrame(
        {"movie_id": range(1, n_items + 1), "title": [f"m{i}" for i in range(1, n_items + 1)], "year": 1990}
    ).assign(genres="Drama")
    return frame, people, items


# --------------------------------------------------------------------------- registry


def test_new_candidates_are_registered_and_the_old_ones_kept() -> None:
    for name in ("most_rated", "most_liked", "segment_most_liked", "seed_random_forest"):
        assert name in CANDIDATES
    for name in ("demographic_kernel", "lgbm_ranker", "ease", "item_knn"):
        assert make_model(name).name == name
    assert set(DEFAULT_CANDIDATES) <= set(CANDIDATES)
    # The hybrid comes before the models it ties with on protocol A (selection keeps the first).
    assert DEFAULT_CANDIDATES.index("ease") < DEFAULT_CANDIDATES.index("demographic_kernel")


# --------------------------------------------------------------------------- kernel


def test_segment_weights_by_hand() -> None:
    # Two users aged 30 (bucket 25-34 holds only age 30), one F engineer, one M artist.
    weights = segment_weights(
        np.array([30, 30]), np.array(["F", "M"]), np.array(["engineer", "artist"]), 5.0, 0.5, 0.25
    )
    index = segment_index()
    row = weights[index[Segment.of(30, "F", "engineer").key]]
    np.testing.assert_allclose(row, [1.0, 0.5 * 0.25])
    # Gender "O" matches every gender; age bucket 35-44 holds no user: its centre (39.5) is used.
    row = weights[index[Segment.of(40, "O", "artist").key]]
    np.testing.assert_allclose(row, [math.exp(-9.5 / 5) * 0.25, math.exp(-9.5 / 5)])
    assert weights.shape == (len(all_segments()), 2)


def test_kernel_with_zero_cross_weights_is_the_exact_segment_share() -> None:
    ratings, users, items = _tiny(
        [(1, 1, 5), (2, 1, 4), (2, 2, 5), (3, 2, 5), (3, 3, 2)],
        [(1, 30, "F", "engineer"), (2, 31, "F", "engineer"), (3, 30, "M", "engineer")],
        3,
    )
    model = DemographicKernel(bandwidth=1e-3, gender_weight=0.0, occupation_weight=0.0).fit(
        ratings, users, items
    )
    women = model.score_segments([Segment.of(30, "F", "engineer")])[0]
    # Bucket 25-34 holds ages 30, 30, 31, so a narrow age kernel gives the 30-year-old woman
    # weight 2/3 and the 31-year-old 1/3: both liked movie 1, only the 31-year-old movie 2,
    # nobody liked movie 3 (the man rated it 2).
    np.testing.assert_allclose(women, [1.0, 1 / 3, 0.0], atol=1e-6)
    men = model.score_segments([Segment.of(30, "M", "engineer")])[0]
    np.testing.assert_allclose(men, [0.0, 1.0, 0.0], atol=1e-6)


def test_kernel_finds_the_planted_gender_taste(synthetic_data) -> None:
    model = DemographicKernel().fit(synthetic_data.ratings, synthetic_data.users, synthetic_data.items)
    women, men = model.score_segments([Segment.of(30, "F", "artist"), Segment.of(30, "M", "artist")])
    # Popularity dominates both lists, but every popular odd (Romance) movie scores higher for
    # women than for men, and every popular even (Action) movie the other way round. (The merged
    # twin, movie 59, mixes an odd and an even movie's ratings, so it carries no planted taste.)
    popular = np.argsort(-(women + men), kind="stable")[:20]
    popular = popular[~np.isin(model.item_ids[popular], TWIN_IDS)]
    odd = model.item_ids[popular] % 2 == 1
    assert ((women[popular] > men[popular]) == odd).all()


def test_kernel_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        DemographicKernel(bandwidth=0)
    with pytest.raises(ValueError, match="weight"):
        DemographicKernel(gender_weight=1.5)


# --------------------------------------------------------------------------- interactions


def test_interaction_weights_follow_the_rating() -> None:
    ratings = pd.DataFrame(
        {"user_id": [1, 1, 2, 2], "movie_id": [1, 2, 1, 3], "rating": [4.0, 3.5, 1.0, 5.0]}
    )
    matrix = interaction_matrix(ratings, np.array([1, 2]), np.array([0, 1, 0, 2]), 3).toarray()
    np.testing.assert_allclose(matrix, [[2.0, 1.5, 0.0], [0.5, 0.0, 2.5]])
    with pytest.raises(ValueError, match="one weight per star"):
        interaction_matrix(ratings, np.array([1, 2]), np.array([0, 1, 0, 2]), 3, rating_weights=(1, 2))


# --------------------------------------------------------------------------- EASE


def test_ease_weights_solve_the_constrained_ridge_column_by_column() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((12, 5)) < 0.5).astype(np.float64)
    l2 = 2.0
    weights = ease_weights(x.T @ x, l2)
    assert np.allclose(np.diag(weights), 0.0)
    # Setting the derivative of ||x_j - X b||^2 + l2 ||b||^2 over the free entries (b_j = 0) to
    # zero gives ridge regression of column j on the other columns.
    for j in range(5):
        others = [i for i in range(5) if i != j]
        a = x[:, others]
        expected = np.linalg.solve(a.T @ a + l2 * np.eye(4), a.T @ x[:, j])
        np.testing.assert_allclose(weights[others, j], expected, rtol=1e-4, atol=1e-5)


def test_ease_rejects_a_non_positive_penalty() -> None:
    with pytest.raises(ValueError, match="l2"):
        ease_weights(np.eye(2), 0.0)


def test_ease_recommends_what_co_occurs_and_refuses_unknown_users() -> None:
    # Users 1-4 rated movies 1 and 2 together; user 5 rated only movie 1 -> movie 2 beats movie 3.
    rows = [(u, m, 5) for u in range(1, 5) for m in (1, 2)] + [(5, 1, 5), (6, 3, 5), (7, 3, 5)]
    people = [(u, 30, "F", "artist") for u in range(1, 8)]
    ratings, users, items = _tiny(rows, people, 3)
    model = EASE(l2=1.0).fit(ratings, users, items)
    scores = model.score_users([5])[0]
    assert scores[1] > scores[2]
    assert list(model.known_users()) == list(range(1, 8))
    with pytest.raises(UnknownUserError, match="not seen in training"):
        model.score_users([99])
    # Segments are answered by the cold-start component, over the whole catalogue.
    assert model.score_segments(all_segments()).shape == (441, 3)
    assert model.params()["cold_start"]["name"] == "demographic_kernel"


def test_known_user_models_find_the_planted_taste_and_survive_pickling(synthetic_data) -> None:
    data = synthetic_data
    for model in (EASE(l2=50.0), ItemKNN(k=10)):
        model.fit(data.ratings, data.users, data.items)
        women = data.users.loc[data.users["gender"] == "F", "user_id"].to_numpy()[:20]
        rated = data.ratings.groupby("user_id")["movie_id"].apply(np.asarray)
        exclude = [model.item_positions(rated[u]) for u in women]
        best = top_n(model.score_users(women.tolist()), 5, exclude)
        picked = model.item_ids[best[best >= 0]]
        assert (picked % 2 == 1).mean() >= 0.7, model.name
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        buffer.seek(0)
        again = joblib.load(buffer)
        np.testing.assert_array_equal(again.score_users(women.tolist()), model.score_users(women.tolist()))


# --------------------------------------------------------------------------- item-kNN


def test_top_k_cosine_by_hand() -> None:
    x = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    from scipy import sparse

    full = top_k_cosine(sparse.csr_matrix(x), k=2)
    # cos(item0, item1) = 1 / (sqrt2 * sqrt2) = 0.5; cos(item0, item2) = 1 / sqrt2; cos(item1, item2) = 0.
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(full, [[0, 0.5, r], [0.5, 0, 0], [r, 0, 0]], atol=1e-12)
    # With k = 1 each column keeps its single best neighbour: item 0 loses item 1 and keeps item 2.
    one = top_k_cosine(sparse.csr_matrix(x), k=1)
    np.testing.assert_allclose(one, [[0, 0.5, r], [0, 0, 0], [r, 0, 0]], atol=1e-12)
    with pytest.raises(ValueError, match="k must"):
        top_k_cosine(sparse.csr_matrix(x), k=0)


# --------------------------------------------------------------------------- LightGBM ranker


def test_ranker_learns_the_planted_preference_and_is_reproducible(synthetic_data) -> None:
    data = synthetic_data
    model = GradientBoostedRanker(n_candidates=40, n_estimators=30, min_child_samples=5, negative_share=1.0)
    model.fit(data.ratings, data.users, data.items)
    segments = [Segment.of(30, "F", "artist"), Segment.of(30, "M", "artist")]
    scores = model.score_segments(segments)
    assert scores.shape == (2, len(data.items))
    best = model.item_ids[top_n(scores, 10)]
    assert (best[0] % 2 == 1).mean() >= 0.7
    assert (best[1] % 2 == 0).mean() >= 0.7
    # Movies outside the candidate set stay strictly below every candidate.
    outside = np.setdiff1d(np.arange(len(model.item_ids)), model.candidates_)
    if len(outside):
        assert scores[:, outside].max() < scores[:, model.candidates_].min()
    again = GradientBoostedRanker(n_candidates=40, n_estimators=30, min_child_samples=5, negative_share=1.0)
    again.fit(data.ratings, data.users, data.items)
    np.testing.assert_allclose(again.score_segments(segments), scores)
