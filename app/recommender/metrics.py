"""Ranking and rating metrics as pure functions (EVALUATION.md definitions).

NDCG uses binary gains and a log2 discount; the ideal DCG places min(k, #relevant) hits at
the top. Lists may contain -1 padding (fewer eligible movies than k), which never hits; a
movie repeated in a list counts at its first rank only.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Sequence

import numpy as np

_DISCOUNT = 1.0 / np.log2(np.arange(2, 1002))


def _discount(n: int) -> np.ndarray:
    """The log2 discounts of ranks 1..n (beyond the precomputed 1000 they are computed: the
    table alone raised an IndexError for a longer list and cut a larger ideal DCG short)."""
    return _DISCOUNT[:n] if n <= len(_DISCOUNT) else 1.0 / np.log2(np.arange(2, n + 2))


def _check_k(k: int) -> None:
    """k = 0 divided by zero, and a negative k sliced the list from its end."""
    if k < 1:
        raise ValueError(f"k must be a positive integer, not {k}")


def _hits(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int) -> np.ndarray:
    """Per rank of the top k: True where a relevant movie appears *for the first time*.

    A list that repeats a liked movie found it once: counting each repeat as a hit gave NDCG
    above 1 and inflated precision and recall for a model (or a bundle) that repeats movies.
    """
    _check_k(k)
    seen: set[Hashable] = set()
    flags = []
    for item in list(ranked)[:k]:
        flags.append(item in relevant and item not in seen)
        seen.add(item)
    return np.array(flags, dtype=bool)


def ndcg_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int = 10) -> float:
    """Normalised discounted cumulative gain of one ranked list."""
    _check_k(k)
    if not relevant:
        return 0.0
    hits = _hits(ranked, relevant, k)
    dcg = float(_discount(len(hits))[hits].sum())
    ideal = float(_discount(min(k, len(relevant))).sum())
    return dcg / ideal


def precision_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int = 10) -> float:
    """Share of the k slots that hold a relevant movie (a short list still divides by k)."""
    return float(_hits(ranked, relevant, k).sum()) / k


def recall_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int = 10) -> float:
    """Share of the relevant movies found in the top k."""
    _check_k(k)
    if not relevant:
        return 0.0
    return float(_hits(ranked, relevant, k).sum()) / len(relevant)


def hit_rate_at_k(ranked: Sequence[Hashable], relevant: Collection[Hashable], k: int = 10) -> float:
    """1.0 when at least one relevant movie is in the top k."""
    return float(_hits(ranked, relevant, k).any())


def _is_padding(item: Hashable) -> bool:
    return bool(isinstance(item, int | np.integer) and item < 0)


def coverage(lists: Iterable[Sequence[Hashable]], catalogue_size: int, k: int = 10) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    _check_k(k)
    if catalogue_size <= 0:
        raise ValueError("catalogue_size must be positive")
    seen = {item for ranked in lists for item in list(ranked)[:k] if not _is_padding(item)}
    return len(seen) / catalogue_size


def rmse(predicted: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray) -> float:
    """Root mean squared error."""
    predicted = np.asarray(predicted, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if predicted.shape != actual.shape or predicted.size == 0:
        raise ValueError("predicted and actual must be non-empty and of the same shape")
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def ranking_metrics(
    lists: Sequence[Sequence[Hashable]],
    relevant: Sequence[Collection[Hashable]],
    catalogue_size: int,
    k: int = 10,
) -> dict[str, float]:
    """Mean NDCG / precision / recall / hit rate over users, plus coverage of the lists."""
    if len(lists) != len(relevant):
        raise ValueError("one relevant set per ranked list is required")
    if not lists:
        raise ValueError("no users to evaluate")
    return {
        f"ndcg@{k}": float(np.mean([ndcg_at_k(r, rel, k) for r, rel in zip(lists, relevant, strict=True)])),
        f"precision@{k}": float(
            np.mean([precision_at_k(r, rel, k) for r, rel in zip(lists, relevant, strict=True)])
        ),
        f"recall@{k}": float(
            np.mean([recall_at_k(r, rel, k) for r, rel in zip(lists, relevant, strict=True)])
        ),
        f"hit_rate@{k}": float(
            np.mean([hit_rate_at_k(r, rel, k) for r, rel in zip(lists, relevant, strict=True)])
        ),
        f"coverage@{k}": coverage(lists, catalogue_size, k),
    }
