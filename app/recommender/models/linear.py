"""Seed 003's hand-written linear regression, and the rating model built on it.

:class:`SimpleLinearRegression` fills the seed's gaps (``__loss``, ``__sgd``, ``__predict``):
mean-squared-error loss, weights and intercept fitted by vectorised (mini-)batch gradient
descent, ``y = Xw + b``. No scikit-learn inside — scikit-learn is only the yardstick in
``bench/benchmark.py`` and the tests.

Three choices differ from the seed and are why it converges in tens of epochs instead of
fifteen thousand iterations: features are standardised inside ``fit`` (the diabetes BMI
column has a standard deviation of 0.05, which makes plain gradient descent crawl; 0/1
columns are only centred), ``y`` is centred so the intercept starts at its optimum, and the
default step is derived from the largest eigenvalue of the standardised Gram matrix (a
power iteration): the classic 1/L step, under which full-batch descent cannot diverge.
Weights are mapped back to the raw feature scale, so ``predict`` is one matrix-vector
product.

:class:`LinearRatingModel` is the same regressor over :class:`~app.recommender.features.PairEncoder`
features: it predicts a rating for (person, movie), ranks a segment's catalogue by it, and
serves ``/api/predict/stream`` and ``/api/predict/batch`` through :meth:`~LinearRatingModel.predict_records`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from operator import itemgetter, methodcaller
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from app.recommender.data import is_feedback_user
from app.recommender.features import MAX_ID, FeatureError, FoldedLinear, PairEncoder, integral
from app.recommender.models.base import Recommender
from app.recommender.segments import Segment

RATING_MIN = 1.0
RATING_MAX = 5.0


class NotFittedError(RuntimeError):
    """``predict`` was called before ``fit``."""


def _as_matrix(X: Any, name: str = "X") -> np.ndarray:
    array = np.asarray(X)
    if array.dtype.kind not in "iuf":  # not bool, text, objects, nor complex (its imaginary part)
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} needs at least one sample and one feature, got shape {array.shape}")
    # A float64 sum is NaN / inf iff an element is (or on overflow, which the exact check clears)
    # and, unlike np.isfinite(X).all(), does not allocate a boolean copy of a serving batch.
    if not np.isfinite(array.sum(dtype=np.float64)) and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    # float32 stays float32 (fast serving matrices); anything else is computed in float64.
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def _as_target(y: Any, n_samples: int) -> np.ndarray:
    target = np.asarray(y, dtype=np.float64)
    if target.ndim == 2 and target.shape[1] == 1:  # the seed passes y as a column
        target = target[:, 0]
    if target.ndim != 1:
        raise ValueError(f"y must be 1-D or a single column, got shape {target.shape}")
    if len(target) != n_samples:
        raise ValueError(f"X has {n_samples} samples but y has {len(target)}")
    if not np.isfinite(target).all():
        raise ValueError("y contains NaN or infinite values")
    return target


def _finite(value: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite: NaN passes every ``< 0`` test."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    """An integer, not a bool (``epochs=True`` is not one epoch) nor a float."""
    return isinstance(value, Integral) and not isinstance(value, bool)


SGD_SETTINGS = ("learning_rate", "epochs", "batch_size", "l2", "decay", "tol", "patience", "random_state")
"""The SGD settings of :class:`SimpleLinearRegression` that :class:`LinearRatingModel` passes on
(``standardize`` aside: the rating model always standardizes)."""


class SimpleLinearRegression:
    """Least-squares line ``y = Xw + b`` fitted by vectorised stochastic gradient descent.

    ``learning_rate``: a float, or ``"auto"`` for 1/L with L the gradient's Lipschitz
    constant on the standardised data (halved for mini-batches, and smaller for small ones:
    :meth:`_step`). ``standardize``: scale non-binary columns to unit variance and centre
    every column while fitting.
    ``batch_size``: ``None`` for full-batch gradient descent (the seed's algorithm), else
    mini-batches of that size, reshuffled every epoch with ``random_state``. ``l2``: ridge
    penalty on the (standardised) weights, not the intercept. ``decay``: the step at epoch
    e is ``learning_rate / (1 + decay·e)``.
    Training stops early when the epoch loss improves by less than ``tol`` (relative) for
    ``patience`` epochs in a row.

    After ``fit``: ``coef_`` (n_features,), ``intercept_``, ``losses_`` (one MSE per epoch,
    measured on the standardised problem, y centred and in units of its largest deviation,
    before that epoch's updates), ``n_epochs_``,
    ``converged_``. ``W`` and ``b`` are the seed's names for the same numbers.
    """

    def __init__(
        self,
        learning_rate: float | str = "auto",
        epochs: int = 1000,
        batch_size: int | None = None,
        l2: float = 0.0,
        decay: float = 0.0,
        tol: float = 1e-9,
        patience: int = 5,
        standardize: bool = True,
        random_state: int = 0,
    ) -> None:
        if isinstance(learning_rate, str) and learning_rate != "auto":
            raise ValueError("learning_rate must be a positive float or 'auto'")
        if not isinstance(learning_rate, str) and not (_finite(learning_rate) and learning_rate > 0):
            raise ValueError("learning_rate must be a positive finite number")
        if not (_whole(epochs) and epochs >= 1):
            raise ValueError("epochs must be an integer of at least 1")
        if batch_size is not None and not (_whole(batch_size) and batch_size >= 1):
            raise ValueError("batch_size must be a positive integer or None")
        if not (_finite(l2) and _finite(decay) and _finite(tol) and min(l2, decay, tol) >= 0):
            raise ValueError("l2, decay and tol must be finite non-negative numbers")
        if not (_whole(patience) and patience >= 1):
            raise ValueError("patience must be an integer of at least 1")
        if not isinstance(standardize, bool | np.bool_):
            raise ValueError("standardize must be True or False")
        if not (_whole(random_state) and random_state >= 0):  # numpy refused the rest only at fit
            raise ValueError("random_state must be a non-negative integer")
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.l2 = l2
        self.decay = decay
        self.tol = tol
        self.patience = patience
        self.standardize = standardize
        self.random_state = random_state

    # ------------------------------------------------------------------ the seed's three gaps

    def __loss(self, y: np.ndarray, y_hat: np.ndarray, w: np.ndarray) -> float:
        """Mean squared error, plus the ridge term when ``l2`` > 0."""
        residual = y_hat - y
        return float(residual @ residual) / len(y) + self.l2 * float(w @ w)

    def __sgd(
        self, X: np.ndarray, y: np.ndarray, y_hat: np.ndarray, w: np.ndarray, b: float, step: float
    ) -> tuple[np.ndarray, float]:
        """One gradient step on a batch: dW = 2/n·Xᵀ(ŷ-y) + 2λw, db = 2/n·Σ(ŷ-y)."""
        residual = (y_hat - y).astype(X.dtype, copy=False)  # no float64 copy of a float32 X
        scale = 2.0 / len(y)
        grad_w = scale * (X.T @ residual) + 2.0 * self.l2 * w
        grad_b = scale * float(residual.sum())
        return w - step * grad_w, b - step * grad_b

    @staticmethod
    def __predict(X: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
        """The line: ŷ = Xw + b, computed in X's dtype.

        ``einsum`` sums each row in a fixed order, whatever the number of rows, so one record
        and the same record inside a 10,000-record batch get bit-identical predictions (a
        BLAS matrix-vector product does not promise that), with no upcast copy of X.
        """
        return np.einsum("ij,j->i", X, w.astype(X.dtype, copy=False)).astype(np.float64) + b

    # ------------------------------------------------------------------ public API

    @property
    def W(self) -> np.ndarray:
        return self._fitted()[0]

    @property
    def b(self) -> float:
        return self._fitted()[1]

    def fit(self, X: Any, y: Any) -> Self:
        X = _as_matrix(X)
        y = _as_target(y, X.shape[0])
        dtype = X.dtype
        n_samples, n_features = X.shape
        if self.standardize:
            lowest = X.min(axis=0).astype(np.float64)
            highest = X.max(axis=0).astype(np.float64)
            # Mean and spread are taken in units of each column's largest magnitude, so neither
            # depends on the column's scale: a feature in units of 1e-14 is not "constant", and
            # one of 1e200 does not overflow its variance (both were fitted as if absent).
            peak = np.maximum(np.abs(lowest), np.abs(highest))
            unit = np.where(peak > 0, peak, 1.0)
            Xs = np.divide(X, unit.astype(dtype), dtype=dtype)
            mean = Xs.mean(axis=0, dtype=np.float64)
            std = Xs.std(axis=0, dtype=np.float64)
            # 0/1 columns are centred, not scaled: a one-hot seen once in 80,000 rows would
            # otherwise become a value of ~280 and blow up any mini-batch that draws it.
            # Within [0, 1], x - x² is 0 exactly for 0 and 1, so the test needs no boolean copy of X.
            sums = X.sum(axis=0, dtype=np.float64)  # exact for 0/1 columns, like the squares
            squares = np.einsum("ij,ij->j", X, X, dtype=np.float64)
            binary = (lowest >= 0) & (highest <= 1) & (sums - squares <= 0)
            # constant: a spread below 1e-12 of the column's magnitude (0 for equal values)
            spread = np.where(binary | (std <= 1e-12), 1.0, std)
            Xs -= mean.astype(dtype)
            Xs /= spread.astype(dtype)
            mean, scale = mean * unit, spread * unit
        else:
            mean, scale, Xs = np.zeros(n_features), np.ones(n_features), X
        # Centring y lets the intercept start at its optimum; y is also fitted in units of its
        # largest deviation (the same iterates, as the step does not depend on y), so squared
        # residuals cannot overflow, nor a float32 copy of y, whatever y's scale.
        y_unit = float(np.abs(y).max()) or 1.0
        y_mean = float((y / y_unit).mean())
        yc = y / y_unit - y_mean
        y_spread = float(np.abs(yc).max()) or 1.0
        yc = (yc / y_spread).astype(dtype)
        y_scale = y_unit * y_spread
        step = self._step(Xs) if self.learning_rate == "auto" else float(self.learning_rate)

        rng = np.random.default_rng(self.random_state)
        w = np.zeros(n_features, dtype=dtype)
        b = 0.0
        batch = n_samples if self.batch_size is None else min(self.batch_size, n_samples)
        full = batch >= n_samples
        # Full-batch descent under a stable step never raises the loss beyond rounding: a loss that
        # rises ``patience`` epochs in a row diverges, slowly as it may (it is not a plateau).
        noise = 100.0 * float(np.finfo(dtype).eps)
        # Loss rises below this are rounding, not divergence: on data on an exact line the loss
        # reaches ~1e-33, where one epoch's rounding is ten times the lowest or rises five epochs
        # in a row (y = 2x + 2 on four points was "diverged; lower learning_rate").
        floor = noise * float(np.mean(np.square(yc, dtype=np.float64)))  # the loss at w = 0, b = 0
        losses: list[float] = []
        stalled = rising = 0
        converged = False
        for epoch in range(self.epochs):
            lr = step / (1.0 + self.decay * epoch)
            if full:
                y_hat = self.__predict(Xs, w, b)
                losses.append(self.__loss(yc, y_hat, w))
                w, b = self.__sgd(Xs, yc, y_hat, w, b, lr)
            else:
                order = rng.permutation(n_samples)
                total = 0.0
                for start in range(0, n_samples, batch):
                    idx = order[start : start + batch]
                    Xb, yb = Xs[idx], yc[idx]
                    y_hat = self.__predict(Xb, w, b)
                    total += self.__loss(yb, y_hat, w) * len(idx)
                    w, b = self.__sgd(Xb, yb, y_hat, w, b, lr)
                losses.append(total / n_samples)
            w = w.astype(dtype, copy=False)
            rising = (
                rising + 1
                if full and len(losses) > 1 and losses[-1] - losses[-2] > noise * losses[-2] + floor
                else 0
            )
            if (
                not np.isfinite(losses[-1])
                or not np.isfinite(w).all()
                or losses[-1] > 10.0 * min(losses) + floor
                or rising >= self.patience
            ):
                how = f"rose {rising} epochs in a row" if rising >= self.patience else f"{losses[-1]:.6g}"
                raise FloatingPointError(
                    f"gradient descent diverged at epoch {epoch} (loss {how}, lowest {min(losses):.6g}); "
                    f"lower learning_rate (now {lr:g})"
                )
            if rising:
                stalled = 0
            elif len(losses) > 1 and losses[-2] - losses[-1] <= self.tol * max(losses[-2], 1e-300):
                stalled += 1
                if stalled >= self.patience:
                    converged = True
                    break
            else:
                stalled = 0

        # Back to the raw scale; a slope beyond float64 (y in 1e200 units over x in 1e-200 ones)
        # overflows here, and was returned as coef_ inf and NaN predictions without a word.
        with np.errstate(over="ignore", invalid="ignore"):
            coef = w.astype(np.float64) * y_scale / scale
            intercept = float(b * y_scale + y_mean * y_unit - coef @ mean)
        if not (np.isfinite(coef).all() and math.isfinite(intercept)):
            raise FloatingPointError(
                "the fitted line is not representable in float64 (a weight or the intercept "
                "overflows on the data's scale); rescale X or y"
            )
        self.coef_ = coef
        self.intercept_ = intercept
        self.losses_ = losses
        self.n_epochs_ = len(losses)
        self.converged_ = converged
        self.step_ = step
        self.n_features_in_ = n_features
        return self

    def predict(self, X: Any) -> np.ndarray:
        coef, intercept = self._fitted()
        X = _as_matrix(X)
        if X.shape[1] != len(coef):
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted on {len(coef)}")
        if X.dtype == np.float64:
            return self.__predict(X, coef, intercept)
        # A float32 matrix is summed in float32 (no float64 copy of a serving batch). A weight beyond
        # float32's range (a slope of 1e40 over features in 1e-30 units), or a row whose terms
        # overflow it, gave inf and NaN where the float64 answer holds the value: those rows, and
        # only those (a row predicts the same alone and in a batch), are summed again in float64.
        with np.errstate(over="ignore", invalid="ignore"):
            predicted = self.__predict(X, coef, intercept)
        overflowed = ~np.isfinite(predicted)
        if overflowed.any():
            predicted[overflowed] = self.__predict(X[overflowed].astype(np.float64), coef, intercept)
        return predicted

    def score(self, X: Any, y: Any) -> float:
        """Coefficient of determination R² = 1 - SS_res / SS_tot (the seed's yardstick)."""
        predicted = self.predict(X)
        target = _as_target(y, len(predicted))
        ss_res = float(((target - predicted) ** 2).sum())
        ss_tot = float(((target - target.mean()) ** 2).sum())
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)

    def params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SGD_SETTINGS} | {"standardize": self.standardize}

    # ------------------------------------------------------------------ internals

    def _fitted(self) -> tuple[np.ndarray, float]:
        if not hasattr(self, "coef_"):
            raise NotFittedError("SimpleLinearRegression is not fitted yet; call fit(X, y) first")
        return self.coef_, self.intercept_

    def _step(self, Xs: np.ndarray, iterations: int = 50) -> float:
        """1/L for the MSE gradient: L = 2·(λ_max(XᵀX/n) + l2), λ_max by power iteration.

        The intercept is fitted on centred data, so its curvature (2) never exceeds the
        bound. A mini-batch's Gram matrix can be sharper than the full one, so mini-batch
        runs take half the step, or less where the batch is small: a batch of b rows drawn from
        n has the expected curvature (n(b-1)·λ_max + (n-b)·R)/(b(n-1)) (Gower et al., "SGD:
        general analysis and improved rates", 2019), R the largest ‖x‖² + 1 of a row and its
        intercept, so one row at a time (classic SGD) steps by 1/(2R). Halving alone diverged
        on batches of up to 16 rows of 50 features, or of heavy-tailed ones.
        """
        n = Xs.shape[0]
        full = Xs
        rng = np.random.default_rng(self.random_state)
        if n > 20_000:  # a random 20,000-row sample estimates the spectrum well enough
            Xs = Xs[rng.choice(n, 20_000, replace=False)]
        rows = Xs
        # A random start: the all-ones vector is blind to columns that cancel out (x and -x, or a
        # complete centred one-hot group), and the step then came out too large to converge.
        start = np.abs(rng.standard_normal(rows.shape[1])) + 0.5
        vector = (start / np.linalg.norm(start)).astype(rows.dtype)
        eigen = 0.0
        for _ in range(iterations):
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below
                product = rows.T @ (rows @ vector) / rows.shape[0]
                previous, eigen = eigen, float(np.linalg.norm(product))
            if math.isinf(eigen) and math.isfinite(peak := float(np.abs(product).max())):
                # the sum of squares overflowed (entries beyond 1e154: features of ~1e80 not
                # standardised) and a step of 0 fitted nothing: the norm in units of the largest entry
                eigen = peak * float(np.linalg.norm(product / peak))
            if eigen == 0.0 or abs(eigen - previous) <= 1e-4 * eigen:
                break
            vector = (product / eigen).astype(rows.dtype, copy=False)
        if not math.isfinite(eigen):
            raise FloatingPointError(
                "the features' curvature (the largest eigenvalue of XᵀX/n) is beyond float range, so "
                "no step can be derived; fit with standardize=True or rescale X"
            )
        lipschitz = 2.0 * (max(eigen * 1.05, 1.0) + self.l2)  # 5 % margin for the estimate
        step = 1.0 / lipschitz
        if self.batch_size is None or self.batch_size >= n:
            return step
        b = self.batch_size
        with np.errstate(over="ignore"):  # a row beyond float range: no step but 0, refused below
            widest = float(np.einsum("ij,ij->i", full, full, dtype=np.float64).max()) + 1.0
        curvature = (n * (b - 1) * max(eigen, 1.0) + (n - b) * widest) / (b * (n - 1))
        if not math.isfinite(curvature):
            raise FloatingPointError(
                "a row's squared norm is beyond float range, so no mini-batch step can be derived; "
                "fit with standardize=True or rescale X"
            )
        return min(step / 2.0, 1.0 / (2.0 * (curvature * 1.05 + self.l2)))


class InvalidRecordError(ValueError):
    """A prediction record is malformed: ``index`` is its position, ``field`` the culprit,
    ``missing`` whether the field is absent rather than wrong."""

    def __init__(self, index: int, field: str, message: str, missing: bool = False) -> None:
        super().__init__(f"record {index}: {message}")
        self.index = index
        self.field = field
        self.reason = message
        self.missing = missing


_RECORD_FIELDS = ("age", "gender", "occupation", "movie_id")
_INT: frozenset[type] = frozenset({int})
_INT_OR_NONE: frozenset[type] = frozenset({int, type(None)})


class LinearRatingModel(Recommender):
    """Rating regressor: :class:`SimpleLinearRegression` over :class:`PairEncoder` features.

    Ranks by predicted rating, like the seed's forest, but with features that carry what a
    linear model can use (movie quality, genre tastes by demographic, group offsets).
    A random ``cold_fraction`` of the training users is encoded as if unknown, so one
    model answers both cold-start rows (demographics only) and known users (``user_id``).
    """

    name: ClassVar[str] = "linear_rating"
    supports_users: ClassVar[bool] = True
    predicts_ratings: ClassVar[bool] = True
    serves_records: ClassVar[bool] = True

    def __init__(
        self,
        learning_rate: float | str = "auto",
        epochs: int = 40,
        batch_size: int | None = 1024,
        l2: float = 1e-4,
        decay: float = 0.1,
        tol: float = 1e-4,
        patience: int = 3,
        cold_fraction: float = 0.5,
        prior_weight: float = 10.0,
        group_prior_weight: float = 25.0,
        user_prior_weight: float = 5.0,
        interactions: Sequence[str] = ("gender", "age_bucket"),
        clip: bool = True,
        chunk_rows: int = 65_536,
        random_state: int = 0,
    ) -> None:
        if not 0.0 <= cold_fraction <= 1.0:
            raise ValueError("cold_fraction must be within [0, 1]")
        # checked here, not by the fit after the encoding: a prior weight of 0 gave "X contains NaN"
        # (0/0 for a group without ratings), and a chunk_rows of 0 failed every ranking after training
        for name, weight in (
            ("prior_weight", prior_weight), ("group_prior_weight", group_prior_weight),
            ("user_prior_weight", user_prior_weight),
        ):  # fmt: skip
            if not (_finite(weight) and weight > 0):
                raise ValueError(f"{name} must be a positive finite number")
        if not (_whole(chunk_rows) and chunk_rows >= 1):
            raise ValueError("chunk_rows must be an integer of at least 1")
        if not isinstance(clip, bool | np.bool_):
            raise ValueError("clip must be True or False")
        PairEncoder(interactions=interactions)  # its own checks (the interactions' names)
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.l2 = l2
        self.decay = decay
        self.tol = tol
        self.patience = patience
        self.cold_fraction = cold_fraction
        self.prior_weight = prior_weight
        self.group_prior_weight = group_prior_weight
        self.user_prior_weight = user_prior_weight
        self.interactions = tuple(interactions)
        self.clip = clip
        self.chunk_rows = chunk_rows
        self.random_state = random_state
        SimpleLinearRegression(**self._sgd_params())  # the regression's hyper-parameters, checked now

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        self._set_catalogue(items)
        self.encoder_ = PairEncoder(
            prior_weight=self.prior_weight,
            group_prior_weight=self.group_prior_weight,
            user_prior_weight=self.user_prior_weight,
            interactions=self.interactions,
        )
        rng = np.random.default_rng(self.random_state)
        ids = np.unique(ratings["user_id"].to_numpy(dtype=np.int64))
        cold = rng.choice(ids, size=round(self.cold_fraction * len(ids)), replace=False)
        X, y = self.encoder_.fit_transform(ratings, users, items, cold_users=cold)
        self.regressor_ = SimpleLinearRegression(**self._sgd_params()).fit(X, y)
        known = users[users["user_id"].isin(self.encoder_.known_user_ids())]
        self.users_ = known.set_index("user_id")[["age", "gender", "occupation"]].sort_index()
        return self

    # ------------------------------------------------------------------ predictions

    def predict_ratings(self, requests: pd.DataFrame) -> np.ndarray:
        """Predicted ratings for rows of age, gender, occupation, movie_id (and user_id)."""
        if len(requests) == 0:
            return np.empty(0, dtype=np.float64)
        parts = [
            self._predict_chunk(requests.iloc[start : start + self.chunk_rows])
            for start in range(0, len(requests), self.chunk_rows)
        ]
        return np.concatenate(parts)

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Serving entry point: a list of dicts → predicted ratings, in one vectorised call.

        Each record has ``age``, ``gender``, ``occupation``, ``movie_id`` and optionally
        ``user_id`` (a known user's own statistics are then used; an unknown id is cold, and so
        is a synthetic feedback user's, above ``FEEDBACK_USER_BASE``).
        Raises :class:`InvalidRecordError` naming the first bad record and field.
        """
        if len(records) == 0:
            return np.empty(0, dtype=np.float64)
        frame = self.record_columns(records)
        try:
            return self._predict_chunk(frame)
        except FeatureError as exc:
            index = exc.rows[0] if exc.rows else 0
            raise InvalidRecordError(index, exc.field, str(exc)) from exc

    @classmethod
    def record_columns(cls, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """The records as the encoder's columns, their fields and integer types checked.

        Raises :class:`InvalidRecordError` naming the first bad record and field; the values
        themselves (ranges, vocabularies, the catalogue) are checked by the encoder.
        """
        # Columns and type checks at C speed (map, set); the slow paths only name the culprit.
        try:
            columns = {field: list(map(itemgetter(field), records)) for field in _RECORD_FIELDS}
            columns["user_id"] = list(map(methodcaller("get", "user_id"), records))
        except (KeyError, TypeError, AttributeError):
            columns = cls._columns_slowly(records)  # finds and names the bad record
        for field in ("age", "movie_id", "user_id"):
            allowed = _INT_OR_NONE if field == "user_id" else _INT
            # JSON integers arrive as int; integral floats (30.0) are integers too, as for one
            # record (app/api/schemas.py); bool is an int subclass and is refused explicitly.
            if not set(map(type, columns[field])) <= allowed:
                columns[field] = values = list(map(integral, columns[field]))
                for index, value in enumerate(values):
                    if (value is None and field == "user_id") or (
                        isinstance(value, int | np.integer) and not isinstance(value, bool)
                    ):
                        continue
                    raise InvalidRecordError(index, field, f"{field} must be an integer")
        ids = {
            "movie_id": np.asarray(columns["movie_id"], dtype=np.float64),
            "user_id": np.array([np.nan if v is None else v for v in columns["user_id"]], dtype=np.float64),
        }
        for field, array in ids.items():  # ids are 1..MAX_ID everywhere; NaN (no user) passes
            outside = (array < 1) | (array > MAX_ID)
            if outside.any():
                index = int(np.flatnonzero(outside)[0])
                raise InvalidRecordError(index, field, f"{field} must be an id between 1 and {MAX_ID}")
        # A synthetic feedback user (one per anonymous request scored) is nobody a caller can be:
        # such an id is predicted from the demographics alone, as any id the model does not know.
        # It answered with the ratings a stranger gave in that request.
        ids["user_id"][is_feedback_user(ids["user_id"])] = np.nan
        return {
            "age": np.asarray(columns["age"], dtype=np.float64),
            "gender": columns["gender"],
            "occupation": columns["occupation"],
            **ids,
        }

    @staticmethod
    def _columns_slowly(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {field: [] for field in (*_RECORD_FIELDS, "user_id")}
        for index, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise InvalidRecordError(index, "record", "must be an object")
            for field in _RECORD_FIELDS:
                if field not in record:
                    raise InvalidRecordError(index, field, f"{field} is required", missing=True)
                columns[field].append(record[field])
            columns["user_id"].append(record.get("user_id"))
        return columns

    def score_segments(self, segments: Sequence[Segment]) -> np.ndarray:
        n_items = len(self.item_ids)
        if not segments:
            return np.empty((0, n_items))
        frame = pd.DataFrame(
            {
                "age": np.repeat([s.age for s in segments], n_items),  # the bucket's centre
                "gender": np.repeat(np.asarray([s.gender for s in segments], dtype=object), n_items),
                "occupation": np.repeat(np.asarray([s.occupation for s in segments], dtype=object), n_items),
                "movie_id": np.tile(self.item_ids, len(segments)),
            }
        )
        return self.predict_ratings(frame).reshape(len(segments), n_items)

    def score_users(self, user_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(user_ids, dtype=np.int64)
        missing = ids[~np.isin(ids, self.users_.index.to_numpy())]
        if len(missing):
            raise KeyError(f"users not seen in training: {missing[:10].tolist()}")
        n_items = len(self.item_ids)
        demo = self.users_.loc[ids]
        frame = pd.DataFrame(
            {
                "user_id": np.repeat(ids, n_items),
                "age": np.repeat(demo["age"].to_numpy(), n_items),
                "gender": np.repeat(demo["gender"].to_numpy(dtype=object), n_items),
                "occupation": np.repeat(demo["occupation"].to_numpy(dtype=object), n_items),
                "movie_id": np.tile(self.item_ids, len(ids)),
            }
        )
        return self.predict_ratings(frame).reshape(len(ids), n_items)

    def known_users(self) -> np.ndarray:
        return self.users_.index.to_numpy(dtype=np.int64)

    def _sgd_params(self) -> dict[str, Any]:
        """The SimpleLinearRegression settings this model fits with (one list for fit and params)."""
        return {name: getattr(self, name) for name in SGD_SETTINGS}

    def params(self) -> dict[str, Any]:
        return {
            **self._sgd_params(),
            "cold_fraction": self.cold_fraction,
            "prior_weight": self.prior_weight,
            "group_prior_weight": self.group_prior_weight,
            "user_prior_weight": self.user_prior_weight,
            "interactions": list(self.interactions),
            "clip": self.clip,
        }

    def _predict_chunk(self, requests: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        predicted = self.folded().predict(requests)
        return np.clip(predicted, RATING_MIN, RATING_MAX) if self.clip else predicted

    def folded(self) -> FoldedLinear:
        """The fitted regression as lookup tables (built on first use, not pickled).

        Predictions are ``regressor_.predict(encoder_.transform(requests))`` without the design
        matrix: over HTTP a 1,000-record /api/predict/batch spent about a third of its time building it
        (docs/performance.md). Tests hold the two equal.
        """
        # what it was built from: a refit (new encoder, new regressor or new weights) rebuilds it
        source = (self.encoder_, self.regressor_, self.regressor_.coef_, self.regressor_.intercept_)
        cached: tuple[tuple[Any, ...], FoldedLinear] | None = self.__dict__.get("_folded")
        if cached is None or any(a is not b for a, b in zip(cached[0], source, strict=True)):
            cached = (source, self.encoder_.linear(self.regressor_.coef_, self.regressor_.intercept_))
            self._folded = cached
        return cached[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_folded", None)  # derived from the fitted state, rebuilt after loading
        return state
