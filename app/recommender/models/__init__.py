"""Every candidate model, by name. Training, evaluation and the pipeline look them up here."""

from __future__ import annotations

from collections.abc import Callable

from app.recommender.models.base import NotSupportedError, Recommender
from app.recommender.models.ease import EASE
from app.recommender.models.forest import SeedRandomForest
from app.recommender.models.itemknn import ItemKNN
from app.recommender.models.kernel import DemographicKernel
from app.recommender.models.popularity import GlobalPopularity
from app.recommender.models.ranker import GradientBoostedRanker
from app.recommender.models.segment import SegmentMostLiked

CANDIDATES: dict[str, Callable[[], Recommender]] = {
    "most_rated": lambda: GlobalPopularity(liked_only=False),
    "most_liked": lambda: GlobalPopularity(liked_only=True),
    "segment_most_liked": SegmentMostLiked,
    "seed_random_forest": SeedRandomForest,
    # Cold start only.
    "demographic_kernel": DemographicKernel,
    "lgbm_ranker": GradientBoostedRanker,
    # Known users, with the demographic kernel answering cold-start segments (hybrid.py).
    "ease": EASE,
    "item_knn": ItemKNN,
}

# What `movierec train` trains when no --models is given. "ease" comes first on purpose: it
# answers segments through the same kernel as "demographic_kernel" and "item_knn", so the three
# tie exactly on protocol A, and selection keeps the first listed — the one that is also best
# on protocol B (docs/models.md).
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "ease",
    "demographic_kernel",
    "item_knn",
    "lgbm_ranker",
    "most_rated",
    "most_liked",
    "segment_most_liked",
    "seed_random_forest",
)


def make_model(name: str) -> Recommender:
    """A fresh, unfitted model; ValueError names the known ones."""
    try:
        factory = CANDIDATES[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(CANDIDATES))}") from None
    return factory()


__all__ = ["CANDIDATES", "DEFAULT_CANDIDATES", "NotSupportedError", "Recommender", "make_model"]
