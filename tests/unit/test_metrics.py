"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from app.recommender.metrics import (
    coverage,
    hit_rate_at_k,
    ndcg_at_k,
    precision_at_k,
    ranking_metrics,
    recall_at_k,
    rmse,
)

pytestmark = pytest.mark.unit


def test_ndcg_hand_computed() -> None:
    # hits at ranks 1 and 3 of k=3; 2 relevant in total
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k([10, 20, 30], {10, 30}, 3) == pytest.approx(dcg / ideal)


def test_ndcg_ideal_is_capped_at_k() -> None:
    # 5 relevant but k = 2: a perfect top-2 scores 1
    assert ndcg_at_k([1, 2], {1, 2, 3, 4, 5}, 2) == pytest.approx(1.0)
    assert ndcg_at_k([9, 1], {1}, 2) == pytest.approx((1 / math.log2(3)) / 1.0)


def test_ndcg_ignores_items_after_k_and_padding() -> None:
    assert ndcg_at_k([-1, -1, 7], {7}, 2) == 0.0
    assert ndcg_at_k([], {7}, 10) == 0.0
    assert ndcg_at_k([7], set(), 10) == 0.0


def test_precision_recall_hit_rate() -> None:
    ranked, relevant = [1, 2, 3, 4], {2, 4, 9}
    assert precision_at_k(ranked, relevant, 4) == pytest.approx(0.5)
    assert precision_at_k([2], relevant, 4) == pytest.approx(0.25)  # short lists still divide by k
    assert recall_at_k(ranked, relevant, 4) == pytest.approx(2 / 3)
    assert hit_rate_at_k(ranked, relevant, 1) == 0.0
    assert hit_rate_at_k(ranked, relevant, 2) == 1.0


def test_coverage_and_rmse() -> None:
    assert coverage([[1, 2], [2, 3], [-1]], catalogue_size=10, k=2) == pytest.approx(0.3)
    assert rmse([1.0, 3.0], [2.0, 5.0]) == pytest.approx(math.sqrt((1 + 4) / 2))
    with pytest.raises(ValueError):
        rmse([], [])
    with pytest.raises(ValueError):
        coverage([[1]], 0)


def test_ranking_metrics_means_over_users() -> None:
    result = ranking_metrics([[1, 2], [3, 4]], [{1}, {9}], catalogue_size=4, k=2)
    assert result["ndcg@2"] == pytest.approx(0.5)
    assert result["hit_rate@2"] == pytest.approx(0.5)
    assert result["coverage@2"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ranking_metrics([[1]], [], 4)


def test_a_repeated_movie_counts_once() -> None:
    # A list that repeats a liked movie has found one liked movie, not several: NDCG stays at
    # most 1, and precision / recall / hit rate count the movie once.
    assert ndcg_at_k([7, 7, 7], {7}, 3) == pytest.approx(1.0)
    assert ndcg_at_k([1, 7, 7], {7, 8}, 3) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert precision_at_k([7, 7, 7, 7], {7, 8}, 4) == pytest.approx(0.25)
    assert recall_at_k([7, 7], {7, 8}, 2) == pytest.approx(0.5)
    assert ranking_metrics([["a", "a"]], [{"a", "b"}], catalogue_size=2, k=2)["ndcg@2"] <= 1.0


def test_k_beyond_a_thousand_is_computed_not_cut_off() -> None:
    """The log2 discounts were a table of 1000: a longer list raised an IndexError, and an ideal
    DCG over more than 1000 relevant movies was cut at 1000 (NDCG above its true value)."""
    relevant = set(range(1500))
    assert ndcg_at_k(list(range(1500)), relevant, 1500) == pytest.approx(1.0)
    half = ndcg_at_k(list(range(750)), relevant, 1500)
    expected = sum(1 / math.log2(r + 2) for r in range(750)) / sum(1 / math.log2(r + 2) for r in range(1500))
    assert half == pytest.approx(expected)


@pytest.mark.parametrize("k", [0, -1])
@pytest.mark.parametrize("metric", [ndcg_at_k, precision_at_k, recall_at_k, hit_rate_at_k, coverage])
def test_k_below_one_is_refused(metric: object, k: int) -> None:
    """k = 0 divided by zero; a negative k sliced from the end of the list (precision -1.0)."""
    with pytest.raises(ValueError, match="k must be"):
        metric([5, 1, 2], {1}, k) if metric is not coverage else coverage([[5, 1, 2]], 10, k)  # type: ignore[operator]
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics([[5, 1, 2]], [{1}], 10, k)
