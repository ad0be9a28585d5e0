"""The accuracy test must be able to fail for a model that should fail, even on its own test data.

``expected_score`` is the bundle's own score, so a bundle reproduces it by construction: before
``floor_score`` a model ranking worse than any popularity baseline passed its own accuracy test
(and so the docker build, whose default test data is the bundle's own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest

from app.recommender.accuracy import run_accuracy_test
from app.recommender.bundle import build_tables, write_bundle
from app.recommender.models import make_model
from app.recommender.models.popularity import GlobalPopularity
from app.recommender.training import _in_memory, accuracy_test_data

pytestmark = pytest.mark.unit


class LeastRated(GlobalPopularity):
    """A regressed ranker: the least-rated movies first."""

    name: ClassVar[str] = "least_rated"

    def fit(self, ratings, users, items):  # type: ignore[no-untyped-def]
        super().fit(ratings, users, items)
        self.scores_ = -self.scores_
        return self


def _bundle_with_own_test_data(model, data, store: Path) -> Path:  # type: ignore[no-untyped-def]
    model.fit(data.ratings, data.users, data.items)
    tables = build_tables(model, data.ratings)
    test_data = accuracy_test_data(data, _in_memory(model, tables, data))
    manifest = {"served_model": model.name, "version": model.name}
    return write_bundle(store, model, data.items, tables, manifest, test_data, set_latest=False)


def test_a_regressed_model_fails_its_own_accuracy_test(synthetic_data, tmp_path: Path) -> None:
    bundle = _bundle_with_own_test_data(LeastRated(liked_only=False), synthetic_data, tmp_path)
    result = run_accuracy_test(bundle, bundle / "test_data.json")
    assert result.score == pytest.approx(result.expected)  # it reproduces itself...
    assert result.below_floor and not result.passed  # ...but ranks below global most-rated


@pytest.mark.parametrize("name", ["most_rated", "most_liked", "segment_most_liked"])
def test_popularity_and_better_models_pass_their_own(synthetic_data, tmp_path: Path, name: str) -> None:
    bundle = _bundle_with_own_test_data(make_model(name), synthetic_data, tmp_path)
    result = run_accuracy_test(bundle, bundle / "test_data.json")
    assert result.passed, (result.score, result.floor)


def test_the_test_data_says_its_scores_are_in_sample(synthetic_data, tmp_path: Path) -> None:
    bundle = _bundle_with_own_test_data(make_model("most_liked"), synthetic_data, tmp_path)
    payload = json.loads((bundle / "test_data.json").read_text())
    assert "in-sample" in payload["description"]
    assert payload["floor_score"] <= payload["expected_score"]


def test_test_data_without_a_floor_keeps_the_seed_rule(synthetic_data, tmp_path: Path) -> None:
    bundle = _bundle_with_own_test_data(LeastRated(liked_only=False), synthetic_data, tmp_path)
    payload = json.loads((bundle / "test_data.json").read_text())
    del payload["floor_score"]
    seed_style = tmp_path / "seed_style.json"
    seed_style.write_text(json.dumps(payload))
    assert run_accuracy_test(bundle, seed_style).passed
