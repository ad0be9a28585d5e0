"""SimpleLinearRegression (seed 003) and the linear rating model built on it."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from app.recommender.models.linear import (
    InvalidRecordError,
    LinearRatingModel,
    NotFittedError,
    SimpleLinearRegression,
)
from app.recommender.segments import Segment

pytestmark = pytest.mark.unit


def seed_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The challenge's ``generate_data``: the BMI column; the last 20 patients are the test set."""
    X, y = load_diabetes(return_X_y=True)
    X = X[:, np.newaxis, 2]
    return X[:-20], y[:-20].reshape(-1, 1), X[-20:], y[-20:].reshape(-1, 1)


def closed_form(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with an intercept column: [w..., b]."""
    design = np.column_stack([X, np.ones(len(X))])
    return np.linalg.lstsq(design, y, rcond=None)[0]


def synthetic_regression(n: int = 2000, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    # deliberately different scales and a correlated pair
    X = rng.normal(size=(n, 5)) * np.array([1.0, 10.0, 0.01, 3.0, 1.0])
    X[:, 4] = 0.8 * X[:, 0] + 0.2 * X[:, 4]
    w = np.array([1.5, -0.2, 40.0, 0.7, -2.0])
    b = 3.0
    y = X @ w + b + rng.normal(scale=0.1, size=n)
    return X, y, w, b


# --------------------------------------------------------------------------- the seed's benchmark


def test_diabetes_bmi_reaches_the_seeds_coefficient_of_determination() -> None:
    X_train, y_train, X_test, y_test = seed_split()
    assert (len(X_train), len(X_test)) == (422, 20)
    model = SimpleLinearRegression().fit(X_train, y_train)
    r2 = model.score(X_test, y_test)
    assert r2 >= 0.42
    # it is the least-squares line: the same slope and intercept as the closed form
    slope, intercept = closed_form(X_train, y_train.ravel())
    assert model.W[0] == pytest.approx(slope, rel=1e-4)
    assert model.b == pytest.approx(intercept, rel=1e-4)
    assert model.converged_ and model.n_epochs_ < model.epochs


def test_the_seeds_own_hyper_parameters_also_pass() -> None:
    X_train, y_train, X_test, y_test = seed_split()
    model = SimpleLinearRegression(learning_rate=0.1, epochs=15000).fit(X_train, y_train)
    assert model.score(X_test, y_test) >= 0.42


def test_score_is_the_coefficient_of_determination() -> None:
    X_train, y_train, X_test, y_test = seed_split()
    model = SimpleLinearRegression().fit(X_train, y_train)
    predicted = model.predict(X_test)
    truth = y_test.ravel()
    expected = 1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert model.score(X_test, y_test) == pytest.approx(expected)
    assert predicted.shape == (20,)


# --------------------------------------------------------------------------- convergence


def test_full_batch_gradient_descent_reaches_the_closed_form() -> None:
    X, y, _, _ = synthetic_regression()
    model = SimpleLinearRegression(epochs=20_000, tol=1e-12).fit(X, y)
    expected = closed_form(X, y)
    np.testing.assert_allclose(model.coef_, expected[:-1], rtol=1e-4, atol=1e-4)
    assert model.intercept_ == pytest.approx(expected[-1], abs=1e-4)
    # full-batch losses never go up with the 1/L step
    assert np.all(np.diff(model.losses_) <= 1e-12)


def test_mini_batch_sgd_gets_close_to_the_closed_form_and_is_seeded() -> None:
    X, y, _, _ = synthetic_regression()
    kwargs: dict[str, Any] = {
        "batch_size": 64,
        "epochs": 100,
        "decay": 0.05,
        "patience": 1000,
        "random_state": 1,
    }
    model = SimpleLinearRegression(**kwargs).fit(X, y)
    assert model.n_epochs_ == 100
    expected = closed_form(X, y)
    # compared per standard deviation of each feature: the 0.01-scale column has a slope of 40
    scale = X.std(axis=0)
    np.testing.assert_allclose(model.coef_ * scale, expected[:-1] * scale, rtol=0, atol=0.01)
    assert model.intercept_ == pytest.approx(expected[-1], abs=0.01)
    again = SimpleLinearRegression(**kwargs).fit(X, y)
    np.testing.assert_array_equal(again.coef_, model.coef_)
    other = SimpleLinearRegression(**{**kwargs, "random_state": 2}).fit(X, y)
    assert not np.array_equal(other.coef_, model.coef_)


def test_l2_matches_closed_form_ridge_on_the_standardised_features() -> None:
    X, y, _, _ = synthetic_regression(n=500)
    lam = 0.5
    model = SimpleLinearRegression(l2=lam, epochs=20_000, tol=1e-14).fit(X, y)
    mean, std = X.mean(axis=0), X.std(axis=0)
    Z = (X - mean) / std
    ridge = np.linalg.solve(Z.T @ Z / len(Z) + lam * np.eye(Z.shape[1]), Z.T @ (y - y.mean()) / len(Z))
    np.testing.assert_allclose(model.coef_, ridge / std, rtol=1e-4, atol=1e-6)
    plain = SimpleLinearRegression().fit(X, y)
    assert np.linalg.norm(model.coef_ * std) < np.linalg.norm(plain.coef_ * std)


def test_early_stopping_on_a_plateau() -> None:
    X, y, _, _ = synthetic_regression(n=300)
    model = SimpleLinearRegression(epochs=50_000, tol=1e-6, patience=3).fit(X, y)
    assert model.converged_
    assert model.n_epochs_ < 50_000
    capped = SimpleLinearRegression(epochs=2, tol=0.0).fit(X, y)
    assert not capped.converged_ and capped.n_epochs_ == 2


def test_a_too_large_learning_rate_is_reported_not_returned() -> None:
    X, y, _, _ = synthetic_regression(n=200)
    with pytest.raises(FloatingPointError, match="diverged"):
        SimpleLinearRegression(learning_rate=50.0, epochs=200).fit(X, y)


@pytest.mark.parametrize("epochs", [40, 1000])
def test_a_learning_rate_just_past_the_limit_is_reported_not_called_converged(epochs: int) -> None:
    """Just above 2/L full-batch descent diverges slowly: each epoch's loss a little above the last.
    Those rises counted as a plateau, so fit stopped "converged" (converged_ True) with weights
    worse than none at all (R² below 0) instead of reporting the divergence."""
    X, y, _, _ = synthetic_regression(n=500)
    limit = 2.1 * SimpleLinearRegression().fit(X, y).step_  # the auto step is 1 / (1.05 L)
    stable = SimpleLinearRegression(learning_rate=0.95 * limit, epochs=epochs).fit(X, y)
    assert stable.score(X, y) > 0.99
    with pytest.raises(FloatingPointError, match="diverged"):
        SimpleLinearRegression(learning_rate=1.03 * limit, epochs=epochs).fit(X, y)


def test_the_auto_step_sees_the_curvature_of_columns_that_cancel_out() -> None:
    """The step's power iteration started from the all-ones vector, which columns summing to zero
    (x, x, -x, -x) leave unseen: it found no curvature, took too large a step and "diverged" with
    learning_rate="auto", the setting documented as unable to diverge."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    X = np.column_stack([x, x, -x, -x])
    y = 2 * x + 1 + rng.normal(scale=0.1, size=500)
    for batch_size in (None, 64):
        model = SimpleLinearRegression(batch_size=batch_size).fit(X, y)
        assert model.score(X, y) > 0.99
        assert model.coef_ @ [1, 1, -1, -1] == pytest.approx(2.0, abs=0.02)


@pytest.mark.parametrize("batch_size", [1, 2, 8, 16])
@pytest.mark.parametrize("tails", ["normal", "heavy"])
def test_the_auto_step_does_not_diverge_on_small_mini_batches(batch_size: int, tails: str) -> None:
    """The auto step for mini-batches was the full batch's 1/L halved, but a small batch's curvature
    is that of its few rows: up to the largest ‖x‖², tens of times the full batch's on 50 features
    or heavy-tailed ones. Classic SGD (batch_size=1) and batches up to 16 "diverged; lower
    learning_rate" with the setting documented to pick a step that works."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, 50)) if tails == "normal" else rng.standard_t(2, size=(3000, 5))
    w = rng.normal(size=X.shape[1])
    y = X @ w + 1.0 + rng.normal(scale=0.1, size=len(X))
    model = SimpleLinearRegression(batch_size=batch_size, epochs=20, decay=0.5).fit(X, y)
    assert np.isfinite(model.coef_).all()
    assert model.score(X, y) > 0.99


def test_float32_inputs_give_the_same_line() -> None:
    X, y, _, _ = synthetic_regression(n=1000)
    wide = SimpleLinearRegression(epochs=5000, tol=1e-12).fit(X, y)
    narrow = SimpleLinearRegression(epochs=5000, tol=1e-12).fit(X.astype(np.float32), y)
    np.testing.assert_allclose(narrow.predict(X.astype(np.float32)), wide.predict(X), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize(("x_unit", "y_unit"), [(1e-30, 1e10), (1e-20, 1e20), (1e18, 1e38)])
def test_float32_features_predict_as_float64_where_float32_overflows(x_unit: float, y_unit: float) -> None:
    """A float32 matrix is predicted in float32: a model fitted on float32 features in tiny units
    (a slope of ~1e40, beyond float32) predicted NaN and inf for its own training rows, and its
    score was NaN; so did rows whose terms overflow float32 (3e38 x 2) while the answer, a
    float64, holds them. Those rows are predicted in float64; the others stay float32 sums."""
    X, y, _, _ = synthetic_regression(n=400)
    reference = SimpleLinearRegression().fit(X, y)
    narrow = (X * x_unit).astype(np.float32)
    model = SimpleLinearRegression().fit(narrow, y * y_unit)
    predicted = model.predict(narrow)
    np.testing.assert_allclose(predicted, reference.predict(X) * y_unit, rtol=1e-3, atol=1e-3 * y_unit)
    assert model.score(narrow, y * y_unit) == pytest.approx(reference.score(X, y), abs=1e-3)
    # alone or among rows that overflow, a row gets the same prediction
    for index in (0, 7, 399):
        assert model.predict(narrow[index : index + 1])[0] == predicted[index]


def test_constant_and_one_hot_columns_are_handled() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    rare = (rng.random(n) < 0.001).astype(float)  # a one-hot seen a handful of times
    X = np.column_stack([rng.normal(size=n), np.ones(n), rare])
    y = 2 * X[:, 0] + 1 + 0.5 * rare + rng.normal(scale=0.01, size=n)
    model = SimpleLinearRegression(batch_size=128, epochs=30, decay=0.1).fit(X, y)
    assert np.isfinite(model.coef_).all()
    assert model.coef_[0] == pytest.approx(2.0, abs=0.02)
    assert model.coef_[1] == 0.0  # a constant column carries nothing


@pytest.mark.parametrize("unit", [1e-14, 1e-150, 1e-200, 1e150, 1e200])
def test_features_on_any_scale_give_the_same_predictions(unit: float) -> None:
    """A column's scale is not its information: features in 1e-14 or 1e200 units are fitted like
    the same features in units of one (they were taken for constant columns, or their variance
    overflowed, and the fit returned the mean of y, converged, with R² 0)."""
    X, y, _, _ = synthetic_regression(n=400)
    reference = SimpleLinearRegression().fit(X, y)
    scaled = SimpleLinearRegression().fit(X * unit, y)
    np.testing.assert_allclose(scaled.predict(X * unit), reference.predict(X), rtol=1e-6, atol=1e-6)
    assert scaled.score(X * unit, y) == pytest.approx(reference.score(X, y), abs=1e-9)
    np.testing.assert_allclose(scaled.coef_ * unit, reference.coef_, rtol=1e-6)


@pytest.mark.parametrize(("unit", "dtype"), [(1e160, np.float64), (1e200, np.float64), (1e20, np.float32)])
def test_targets_on_any_scale_are_fitted_not_reported_as_divergence(unit: float, dtype: type) -> None:
    """y in huge units is the same line: it was a FloatingPointError "diverged; lower learning_rate"
    at the first epoch (the squared residuals overflowed, in float32 already for y ~ 1e20), advice
    that could not help."""
    X, y, _, _ = synthetic_regression(n=400)
    reference = SimpleLinearRegression().fit(X.astype(dtype), y)
    scaled = SimpleLinearRegression().fit(X.astype(dtype), y * unit)
    np.testing.assert_allclose(
        scaled.predict(X.astype(dtype)), reference.predict(X.astype(dtype)) * unit, rtol=1e-5
    )
    np.testing.assert_allclose(scaled.coef_, reference.coef_ * unit, rtol=1e-5)


@pytest.mark.parametrize(("x_unit", "y_unit"), [(1e-315, 1.0), (1e-200, 1e200), (1e-310, 1e10)])
def test_a_line_whose_slope_overflows_is_refused_not_returned_as_inf(x_unit: float, y_unit: float) -> None:
    """y = x / x_unit · y_unit has a slope beyond float64 (1e315, 1e400, 1e320): the fit returned
    coef_ [inf], intercept_ -inf and NaN for every prediction, without a word."""
    X = np.arange(10.0)[:, None] * x_unit
    y = np.arange(10.0) * y_unit
    with pytest.raises(FloatingPointError, match="not representable"):
        SimpleLinearRegression().fit(X, y)


@pytest.mark.parametrize(
    ("X", "y", "kwargs"),
    [
        ([[3.0], [1.0], [2.0], [3.0]], [8.0, 4.0, 6.0, 8.0], {}),
        ([[0.0, 3.0], [2.0, 0.0], [-2.0, -1.0]], [2.0, 1.0, -4.0], {}),
        ([[0, 1, 0], [1, 0, 1], [0, 0, 1], [0, 0, 1]], [-1.0, 0.0, -0.5, -0.5], {}),
        ([[0, 1, 0], [1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0]], [-1, 1, -1, 0, 1], {"standardize": False}),
        ([[-2.0], [3.0], [2.0], [-3.0], [3.0], [3.0]], [3.0, -2.0, -1.0, 4.0, -2.0, -2.0], {"batch_size": 1}),
        ([[-2.0], [3.0], [2.0], [-3.0], [3.0], [3.0]], [3.0, -2.0, -1.0, 4.0, -2.0, -2.0], {"batch_size": 2}),
    ],
)  # fmt: skip
def test_data_on_an_exact_line_is_fitted_not_reported_as_divergence(X: Any, y: Any, kwargs: dict) -> None:
    """Noise-free data: the loss reaches rounding level (~1e-33), where one epoch's rounding is
    ten times the lowest or rises five epochs in a row; that was FloatingPointError "gradient
    descent diverged; lower learning_rate" for y = 2x + 2 on four points."""
    model = SimpleLinearRegression(**kwargs).fit(np.asarray(X, dtype=float), y)
    np.testing.assert_allclose(model.predict(np.asarray(X, dtype=float)), y, atol=1e-6)


def test_without_standardising_huge_features_are_fitted_or_refused_not_returned_as_zero() -> None:
    """standardize=False: the power iteration's norm overflowed for features of ~1e80 (the step's
    curvature estimate came out inf, the step 0), so no weight ever moved and the fit returned
    coef_ 0, "converged", R² 0; where the curvature itself is beyond float64 it is now refused."""
    y = np.arange(10.0)
    reference = SimpleLinearRegression(standardize=False).fit(np.arange(10.0)[:, None] * 1e3, y)
    model = SimpleLinearRegression(standardize=False).fit(np.arange(10.0)[:, None] * 1e100, y)
    assert model.step_ > 0.0
    assert model.score(np.arange(10.0)[:, None] * 1e100, y) == pytest.approx(
        reference.score(np.arange(10.0)[:, None] * 1e3, y), abs=0.05
    )
    with pytest.raises(FloatingPointError, match="standardize"):
        SimpleLinearRegression(standardize=False).fit(np.arange(10.0)[:, None] * 1e160, y)


# --------------------------------------------------------------------------- batch == stream


def test_one_vectorised_call_equals_record_by_record() -> None:
    X, y, _, _ = synthetic_regression(n=400)
    model = SimpleLinearRegression().fit(X, y)
    batch = model.predict(X[:50])
    single = np.array([model.predict(X[i : i + 1])[0] for i in range(50)])
    np.testing.assert_array_equal(batch, single)  # bit-identical, not merely close


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.arange(5.0), np.arange(5.0), "2-D"),
        (np.ones((5, 1, 1)), np.arange(5.0), "2-D"),
        (np.ones((0, 1)), np.ones(0), "at least one sample"),
        (np.ones((5, 0)), np.arange(5.0), "at least one"),
        (np.ones((5, 1)), np.arange(4.0), "samples"),
        (np.ones((5, 1)), np.ones((5, 2)), "single column"),
        (np.array([[1.0], [np.nan]]), np.ones(2), "NaN"),
        (np.ones((2, 1)), np.array([1.0, np.inf]), "NaN"),
        (np.array([["a"], ["b"]]), np.ones(2), "numeric"),
        (np.array([[1 + 1j], [2 + 0j]]), np.ones(2), "numeric"),  # its imaginary part was dropped
    ],
)
def test_bad_shapes_and_values_are_refused(X: Any, y: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimpleLinearRegression().fit(X, y)


def test_predict_checks_fitting_and_width() -> None:
    with pytest.raises(NotFittedError):
        SimpleLinearRegression().predict(np.ones((1, 1)))
    with pytest.raises(NotFittedError):
        _ = SimpleLinearRegression().W
    model = SimpleLinearRegression().fit(np.arange(10.0).reshape(5, 2), np.arange(5.0))
    with pytest.raises(ValueError, match="fitted on 2"):
        model.predict(np.ones((1, 3)))
    with pytest.raises(ValueError, match="2-D"):
        model.predict(np.ones(2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.0},
        {"learning_rate": "fast"},
        {"epochs": 0},
        {"batch_size": 0},
        {"l2": -1.0},
        {"patience": 0},
        # NaN passed every "< 0" check: fit then blamed the learning rate, or (tol) never stopped
        {"l2": float("nan")},
        {"l2": float("inf")},
        {"decay": float("nan")},
        {"tol": float("nan")},
        {"learning_rate": float("inf")},
        {"epochs": 2.5},
        {"epochs": True},
        {"batch_size": 2.5},
        {"patience": 1.5},
        # were taken without a word: a seed only refused at fit (numpy's TypeError, or ValueError
        # for -1), True for seed 1, and any truthy or falsy value for standardize (None: raw X)
        {"random_state": -1},
        {"random_state": 1.5},
        {"random_state": "42"},
        {"random_state": True},
        {"standardize": None},
        {"standardize": "no"},
    ],
)
def test_bad_hyper_parameters_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimpleLinearRegression(**kwargs)


# --------------------------------------------------------------------------- the rating model


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prior_weight": 0.0},  # "X contains NaN or infinite values", after the encoding
        {"group_prior_weight": -1.0},
        {"user_prior_weight": float("nan")},
        {"chunk_rows": 0},  # trained, then every ranking failed: range() arg 3 must not be zero
        {"chunk_rows": 2.5},
        {"clip": "no"},
        {"interactions": ("bogus",)},
        {"epochs": 0},  # the regression's own checks, at construction rather than after the encoding
        {"learning_rate": 0.0},
        {"random_state": -1},
    ],
)
def test_bad_rating_model_settings_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LinearRatingModel(**kwargs)


@pytest.fixture(scope="module")
def rating_model(synthetic_data: Any) -> LinearRatingModel:
    return LinearRatingModel(epochs=30).fit(
        synthetic_data.ratings, synthetic_data.users, synthetic_data.items
    )


def _records(data: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    users = data.users.sample(n, replace=True, random_state=seed)
    movies = rng.choice(data.items["movie_id"].to_numpy(), n)
    records = [
        {"age": int(a), "gender": str(g), "occupation": str(o), "movie_id": int(m)}
        for a, g, o, m in zip(users["age"], users["gender"], users["occupation"], movies, strict=True)
    ]
    for record, user_id in zip(records[::3], users["user_id"][::3], strict=True):
        record["user_id"] = int(user_id)  # every third record is a known user
    return records


def test_rating_model_learns_the_planted_genre_taste(
    rating_model: LinearRatingModel, synthetic_data: Any
) -> None:
    # tests/synthetic.py: women like the Romance (odd) movies, men the Action (even) ones
    scores = rating_model.score_segments([Segment.of(30, "F", "artist"), Segment.of(30, "M", "artist")])
    assert scores.shape == (2, len(rating_model.item_ids))
    romance = rating_model.item_ids % 2 == 1
    twins = np.isin(rating_model.item_ids, [59, 60])
    women, men = scores[0], scores[1]
    assert women[romance & ~twins].mean() > women[~romance & ~twins].mean() + 1.0
    assert men[~romance & ~twins].mean() > men[romance & ~twins].mean() + 1.0
    assert ((scores >= 1.0) & (scores <= 5.0)).all()


def test_rating_model_beats_the_global_mean_on_its_own_data(
    rating_model: LinearRatingModel, synthetic_data: Any
) -> None:
    rows = synthetic_data.ratings.join(
        synthetic_data.users.set_index("user_id")[["age", "gender", "occupation"]], on="user_id"
    )
    truth = rows["rating"].to_numpy()
    cold = rating_model.predict_ratings(rows.drop(columns="user_id"))
    baseline = np.sqrt(np.mean((truth - truth.mean()) ** 2))
    assert np.sqrt(np.mean((truth - cold) ** 2)) < 0.7 * baseline


def test_predict_records_is_one_call_equal_to_record_by_record(
    rating_model: LinearRatingModel, synthetic_data: Any
) -> None:
    records = _records(synthetic_data, 200)
    batch = rating_model.predict_records(records)
    single = np.array([rating_model.predict_records([r])[0] for r in records])
    np.testing.assert_array_equal(batch, single)
    frame = pd.DataFrame(records)
    np.testing.assert_array_equal(rating_model.predict_ratings(frame), batch)
    assert rating_model.predict_records([]).shape == (0,)


def _with_users(data: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every third record under another user's id (demographics need not match), or an id nobody has."""
    ids = data.users["user_id"].to_numpy()
    return [
        {**r, "user_id": int(ids[i % len(ids)]) if i % 5 else 999_999} if i % 3 == 0 else r
        for i, r in enumerate(records)
    ]


def _over_the_design_matrix(model: LinearRatingModel, records: list[dict[str, Any]]) -> tuple[Any, Any]:
    """The records' design matrix, and what predict_records must equal: the regressor over it, clipped."""
    design = model.encoder_.transform(pd.DataFrame(records))
    return design, np.clip(model.regressor_.predict(design), 1.0, 5.0)


def test_predictions_are_the_regression_over_the_design_matrix(
    rating_model: LinearRatingModel, synthetic_data: Any
) -> None:
    # served through lookup tables (LinearRatingModel.folded), never by building the design matrix
    records = _with_users(synthetic_data, _records(synthetic_data, 300, seed=2))
    _, expected = _over_the_design_matrix(rating_model, records)
    np.testing.assert_allclose(rating_model.predict_records(records), expected, rtol=0, atol=1e-5)


def test_a_refitted_model_predicts_with_its_new_weights(synthetic_data: Any) -> None:
    data = synthetic_data
    records = _with_users(data, _records(data, 100, seed=4))
    model = LinearRatingModel(epochs=5).fit(data.ratings, data.users, data.items)
    before = model.predict_records(records)
    model.fit(
        data.ratings.assign(rating=6.0 - data.ratings["rating"]), data.users, data.items
    )  # tastes flipped
    design, expected = _over_the_design_matrix(model, records)
    np.testing.assert_allclose(model.predict_records(records), expected, rtol=0, atol=1e-5)
    assert np.abs(before - expected).mean() > 0.5
    # the regressor refitted in place (same object, new weights)
    model.regressor_.fit(design, np.linspace(1.5, 4.5, len(records)))
    _, refitted = _over_the_design_matrix(model, records)
    np.testing.assert_allclose(model.predict_records(records), refitted, rtol=0, atol=1e-5)
    assert np.abs(refitted - expected).mean() > 0.1


def test_known_users_get_their_own_prediction(rating_model: LinearRatingModel, synthetic_data: Any) -> None:
    user = synthetic_data.users.iloc[0]
    base = {
        "age": int(user["age"]),
        "gender": user["gender"],
        "occupation": user["occupation"],
        "movie_id": 1,
    }
    cold = rating_model.predict_records([base])[0]
    unknown = rating_model.predict_records([{**base, "user_id": 999_999}])[0]
    known = rating_model.predict_records([{**base, "user_id": int(user["user_id"])}])[0]
    assert unknown == cold
    assert known != cold
    user_scores = rating_model.score_users([int(user["user_id"])])
    position = int(rating_model.item_positions([1])[0])
    assert user_scores[0, position] == pytest.approx(known)
    with pytest.raises(KeyError):
        rating_model.score_users([999_999])


def test_a_feedback_users_id_predicts_from_the_demographics_alone(synthetic_data: Any) -> None:
    """The synthetic feedback users (ids above 1,000,000, one per anonymous request scored) train
    the model, but no caller is one of them: /api/predict/stream with user_id 1000001 answered with
    the ratings a stranger gave in that request, as the recommendation tables did before they left
    those users out (app/recommender/bundle.py)."""
    from app.recommender.data import FEEDBACK_USER_BASE

    data = synthetic_data
    stranger = data.users.iloc[[0]].assign(user_id=FEEDBACK_USER_BASE + 1)
    theirs = data.ratings[data.ratings["user_id"] == int(data.users.iloc[0]["user_id"])]
    ratings = pd.concat(
        [data.ratings, theirs.assign(user_id=FEEDBACK_USER_BASE + 1, rating=6.0 - theirs["rating"])],
        ignore_index=True,
    )
    model = LinearRatingModel(epochs=5, cold_fraction=0.0).fit(
        ratings, pd.concat([data.users, stranger], ignore_index=True), data.items
    )
    profile = stranger.iloc[0]
    base = {
        "age": int(profile["age"]),
        "gender": profile["gender"],
        "occupation": profile["occupation"],
        "movie_id": int(theirs["movie_id"].iloc[0]),
    }
    cold = model.predict_records([base])[0]
    assert model.predict_records([{**base, "user_id": FEEDBACK_USER_BASE + 1}])[0] == cold
    assert model.predict_records([{**base, "user_id": int(data.users.iloc[0]["user_id"])}])[0] != cold


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"age": True}, "age"),
        ({"age": "30"}, "age"),
        ({"age": 0}, "age"),
        ({"gender": "X"}, "gender"),
        ({"occupation": "pilot"}, "occupation"),
        ({"movie_id": 10_000}, "movie_id"),
        ({"movie_id": 1.5}, "movie_id"),
        ({"user_id": "7"}, "user_id"),
    ],
)
def test_bad_records_name_the_record_and_the_field(
    rating_model: LinearRatingModel, change: dict[str, Any], field: str
) -> None:
    good = {"age": 30, "gender": "F", "occupation": "artist", "movie_id": 1}
    with pytest.raises(InvalidRecordError) as caught:
        rating_model.predict_records([good, good, {**good, **change}])
    assert (caught.value.index, caught.value.field) == (2, field)


def test_missing_fields_and_non_objects_are_named(rating_model: LinearRatingModel) -> None:
    good = {"age": 30, "gender": "F", "occupation": "artist", "movie_id": 1}
    with pytest.raises(InvalidRecordError) as caught:
        rating_model.predict_records([good, {"age": 30, "gender": "F", "movie_id": 1}])
    assert (caught.value.index, caught.value.field) == (1, "occupation")
    with pytest.raises(InvalidRecordError) as caught:
        rating_model.predict_records([good, [30, "F"]])  # type: ignore[list-item]
    assert caught.value.index == 1


def test_rating_model_survives_pickling(rating_model: LinearRatingModel, synthetic_data: Any) -> None:
    records = _records(synthetic_data, 20, seed=5)
    rating_model.predict_records(records)  # builds its lookup tables, which are not pickled
    clone = pickle.loads(pickle.dumps(rating_model))  # bundles are joblib / pickle files
    assert "_folded" in rating_model.__dict__ and "_folded" not in clone.__dict__
    np.testing.assert_array_equal(clone.predict_records(records), rating_model.predict_records(records))
    assert clone.params()["cold_fraction"] == rating_model.cold_fraction
