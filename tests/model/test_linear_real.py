"""Model tier: the linear rating model on real ml-100k, protocol A with split seed 42.

Prints RMSE on the unseen test users beside the two baselines of EVALUATION.md (global
mean, smoothed per-movie mean), and checks the serving path against the evaluation path on
real records. The data comes from ``MOVIEREC_DATA_DIR`` (default ``data``), fetched into it
on first use.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest

from app.recommender.data import load_movielens
from app.recommender.evaluation import REFERENCE_SEED, split_ratings, split_users
from app.recommender.models.linear import LinearRatingModel

pytestmark = pytest.mark.model


def _rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted) - truth) ** 2)))


@pytest.fixture(scope="module")
def protocol_a() -> dict[str, Any]:
    data = load_movielens(os.environ.get("MOVIEREC_DATA_DIR", "data"))
    train_ids, test_ids = split_users(data.users["user_id"], REFERENCE_SEED)
    train = data.ratings[data.ratings["user_id"].isin(train_ids)]
    test = data.ratings[data.ratings["user_id"].isin(test_ids)]
    train_users = data.users[data.users["user_id"].isin(train_ids)]
    started = time.perf_counter()
    model = LinearRatingModel().fit(train, train_users, data.items)
    fit_seconds = time.perf_counter() - started
    rows = test.join(data.users.set_index("user_id")[["age", "gender", "occupation"]], on="user_id")
    return {"data": data, "model": model, "train": train, "rows": rows, "fit_seconds": fit_seconds}


def test_linear_rating_model_beats_the_global_mean_on_unseen_users(protocol_a: dict[str, Any]) -> None:
    model, train, rows = protocol_a["model"], protocol_a["train"], protocol_a["rows"]
    truth = rows["rating"].to_numpy()
    predicted = model.predict_ratings(rows)  # the test users' ids are unknown to the model: cold
    global_mean = float(train["rating"].mean())
    stats = train.groupby("movie_id")["rating"].agg(["sum", "count"])
    smoothed = ((stats["sum"] + 10 * global_mean) / (stats["count"] + 10)).reindex(rows["movie_id"])
    smoothed = smoothed.fillna(global_mean).to_numpy()

    ours, baseline, movie_mean = _rmse(predicted, truth), _rmse(global_mean, truth), _rmse(smoothed, truth)
    print(
        f"\nprotocol A, seed {REFERENCE_SEED}, {len(rows)} test ratings: RMSE linear_rating {ours:.4f} | "
        f"global mean {baseline:.4f} | smoothed movie mean {movie_mean:.4f} | "
        f"fit {protocol_a['fit_seconds']:.1f} s, {model.regressor_.n_epochs_} epochs"
    )
    assert ours < baseline - 0.05
    assert ours <= movie_mean + 0.01  # demographics must not make it worse than the movie's mean


def test_serving_path_matches_the_evaluation_path_on_real_records(protocol_a: dict[str, Any]) -> None:
    model, rows = protocol_a["model"], protocol_a["rows"]
    sample = rows.sample(1000, random_state=0)
    records = [
        {"age": int(a), "gender": str(g), "occupation": str(o), "movie_id": int(m), "user_id": int(u)}
        for a, g, o, m, u in zip(
            sample["age"],
            sample["gender"],
            sample["occupation"],
            sample["movie_id"],
            sample["user_id"],
            strict=True,
        )
    ]
    np.testing.assert_array_equal(model.predict_records(records), model.predict_ratings(sample))
    single = np.array([model.predict_records([record])[0] for record in records[:100]])
    np.testing.assert_array_equal(single, model.predict_records(records)[:100])


def test_known_users_are_predicted_better_than_cold(protocol_a: dict[str, Any]) -> None:
    """Protocol B split: held-out ratings of users seen in training, with and without their user_id."""
    data = protocol_a["data"]
    train, held_out = split_ratings(data.ratings, REFERENCE_SEED)
    model = LinearRatingModel().fit(train, data.users, data.items)
    rows = held_out.join(data.users.set_index("user_id")[["age", "gender", "occupation"]], on="user_id")
    truth = rows["rating"].to_numpy()
    known = _rmse(model.predict_ratings(rows), truth)
    cold = _rmse(model.predict_ratings(rows.drop(columns="user_id")), truth)
    print(
        f"\nprotocol B split, seed {REFERENCE_SEED}: RMSE with user_id {known:.4f} "
        f"vs demographics only {cold:.4f}"
    )
    assert known < cold - 0.03
