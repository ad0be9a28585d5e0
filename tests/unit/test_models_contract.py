"""One contract test for every registered model (LensKit style)."""

from __future__ import annotations

import numpy as np
import pytest

from app.recommender.models import CANDIDATES, NotSupportedError, make_model
from app.recommender.segments import Segment, all_segments

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fitted(synthetic_data):
    models = {}
    for name in CANDIDATES:
        models[name] = make_model(name).fit(
            synthetic_data.ratings, synthetic_data.users, synthetic_data.items
        )
    return models


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_scores_every_segment_over_the_whole_catalogue(name, fitted, synthetic_data) -> None:
    model = fitted[name]
    assert list(model.item_ids) == synthetic_data.items["movie_id"].tolist()
    segments = all_segments()
    scores = model.score_segments(segments)
    assert scores.shape == (len(segments), len(synthetic_data.items))
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_scoring_is_deterministic_and_row_independent(name, fitted) -> None:
    model = fitted[name]
    segment = Segment.of(30, "F", "engineer")
    alone = model.score_segments([segment])
    together = model.score_segments([Segment.of(70, "M", "retired"), segment])
    np.testing.assert_allclose(alone[0], together[1], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_known_users_contract(name, fitted, synthetic_data) -> None:
    model = fitted[name]
    if not model.supports_users:
        with pytest.raises(NotSupportedError):
            model.score_users([1])
        return
    known = model.known_users()
    assert set(known) <= set(synthetic_data.users["user_id"])
    scores = model.score_users(list(known[:5]))
    assert scores.shape == (min(5, len(known)), len(model.item_ids))


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_rating_models_predict_in_range(name, fitted, synthetic_data) -> None:
    model = fitted[name]
    rows = synthetic_data.ratings.head(50).join(
        synthetic_data.users.set_index("user_id")[["age", "gender", "occupation"]], on="user_id"
    )
    if not model.predicts_ratings:
        with pytest.raises(NotSupportedError):
            model.predict_ratings(rows)
        return
    predicted = model.predict_ratings(rows)
    assert predicted.shape == (50,)
    assert np.all((predicted > 0) & (predicted < 6))


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="most_liked"):
        make_model("no_such_model")
