"""User and movie features (seed 001), and the pair encoder the rating models consume.

Everything here is a pure function of the frames :func:`app.recommender.data.load_movielens`
returns: no I/O, no database. The feature store writes :func:`user_features` and
:func:`item_features` to Parquet / SQL as they are; :class:`PairEncoder` turns
(person, movie) rows into the dense design matrix of the linear rating model, for one record
or for ten thousand in the same vectorised call.

Two kinds of people reach the encoder:

* **cold** — only (age, gender, occupation) are known: demographic one-hots, the movie's
  features, genre-by-demographic interactions and the movie's rating offset among people of
  the same gender / age bucket / occupation;
* **known** — a ``user_id`` seen in training: the same, plus that user's rating offset,
  activity, spread, per-genre affinity and liked-genre profile.

Statistics learned from ratings are shrunk towards their parent (Bayesian smoothing with a
pseudo-count), and in the training design each row's own rating is left out of every
statistic it feeds (leave-one-out), so the regressor does not learn to trust target
encodings that, at serving time, will not contain the answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any, Final, Self

import numpy as np
import pandas as pd

from app.recommender.data import GENRES
from app.recommender.data import MAX_ID as MAX_ID  # re-exported: ids of requests and of the data
from app.recommender.segments import (
    AGE_BUCKET_LABELS,
    AGE_BUCKET_LOWER,
    GENDERS,
    MAX_AGE,
    MIN_AGE,
    OCCUPATIONS,
)

LIKE_THRESHOLD: Final = 4.0


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower().replace("'", "")).strip("_")


# Column-safe genre names: "Children's" -> "childrens", "Film-Noir" -> "film_noir", "Sci-Fi" -> "sci_fi".
GENRE_SLUGS: Final[tuple[str, ...]] = tuple(_slug(g) for g in GENRES)
N_GENRES: Final = len(GENRES)


class FeatureError(ValueError):
    """A request row cannot be encoded; ``field`` names the column, ``rows`` the offending positions."""

    def __init__(self, field: str, message: str, rows: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.rows = [int(r) for r in rows]


# --------------------------------------------------------------------------- small helpers

_EXACT_FLOAT_INT: Final = 2**53  # floats represent every integer up to here, and no more


def integral(value: Any) -> Any:
    """``value`` as an ``int`` when it is a float with an integral value (``30.0``), else as it is.

    JSON has one number type, and JSON Schema calls ``30.0`` an integer, so every integer field
    of a request takes it. orjson also reads an integer beyond 64 bits as a float (``1e+20``):
    only floats up to 2**53 are converted, as beyond it one float stands for many integers (and
    an ``int`` wider than 64 bits could not be written back in an error body).
    """
    if type(value) is float and value.is_integer() and abs(value) <= _EXACT_FLOAT_INT:
        return int(value)
    return value


def age_buckets(ages: Any) -> np.ndarray:
    """Vectorised :func:`app.recommender.segments.age_bucket` (bucket index 0..6 per age)."""
    values = np.asarray(ages, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < MIN_AGE) | (values > MAX_AGE)
    if bad.any():
        raise FeatureError(
            "age", f"age must be between {MIN_AGE} and {MAX_AGE}", np.flatnonzero(bad)[:20].tolist()
        )
    return np.searchsorted(np.asarray(AGE_BUCKET_LOWER), values, side="right").astype(np.int64) - 1


def genre_flags(items: pd.DataFrame) -> np.ndarray:
    """0/1 matrix (len(items), 19) in :data:`GENRES` order, from the ``|``-joined ``genres`` column."""
    dummies = items["genres"].fillna("").astype(str).str.get_dummies(sep="|")
    unknown = sorted(set(dummies.columns) - set(GENRES))
    if unknown:
        raise ValueError(f"unknown genres in the catalogue: {unknown}")
    return dummies.reindex(columns=list(GENRES), fill_value=0).to_numpy(dtype=np.uint8)


def _codes(values: Any, vocabulary: Sequence[str], field: str) -> np.ndarray:
    lookup = {value: code for code, value in enumerate(vocabulary)}
    try:
        codes = np.fromiter(map(lookup.get, values, repeat(-1)), dtype=np.int64, count=len(values))
    except TypeError:  # an unhashable value (a list, a dict) is simply not in the vocabulary
        codes = np.array([lookup.get(v, -1) if isinstance(v, str) else -1 for v in values], dtype=np.int64)
    bad = np.flatnonzero(codes < 0)
    if len(bad):
        raise FeatureError(field, f"{field} must be one of: {', '.join(vocabulary)}", bad[:20].tolist())
    return codes


def _numbers(values: Any) -> np.ndarray:
    """Float array; anything non-numeric (None, NA, text, booleans) becomes NaN."""
    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return array.astype(np.float64, copy=False)
    if array.dtype.kind == "b":
        return np.full(array.shape, np.nan)
    series = pd.Series(array.ravel(), dtype=object)
    series = series.where(~series.map(lambda v: isinstance(v, bool | str)), None)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _positions(index: pd.Index, ids: np.ndarray) -> np.ndarray:
    """``index.get_indexer(ids)`` (-1 where absent), by scalar lookups for a handful of ids.

    pandas spends ~0.1 ms per ``get_indexer`` call whatever its size, which dominated encoding
    one record (a score's predicted rating, /api/predict/stream).
    """
    if len(ids) > 32:
        return index.get_indexer(ids)
    return np.array([index.get_loc(i) if i in index else -1 for i in ids.tolist()], dtype=np.intp)


def _group_sum(keys: np.ndarray, n_keys: int, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` rows per integer key (np.add.at without its slowness)."""
    if values.ndim == 1:
        return np.bincount(keys, weights=values, minlength=n_keys)
    columns = [np.bincount(keys, weights=values[:, j], minlength=n_keys) for j in range(values.shape[1])]
    return np.stack(columns, axis=1)


# --------------------------------------------------------------------------- feature tables


def user_features(
    ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame, like_threshold: float = LIKE_THRESHOLD
) -> pd.DataFrame:
    """One row per user of ``users`` (in its order): demographics, activity, rating stats, genre profile.

    Columns: user_id, age, age_bucket (0..6), age_group (label), gender, occupation,
    n_ratings, n_liked, liked_share (n_liked / n_ratings), mean_rating, std_rating
    (population std, 0 for a single rating), first_ts, last_ts, then for every genre
    ``share_<genre>`` (fraction of the user's ratings on movies of that genre) and
    ``liked_share_<genre>`` (fraction of the user's likes — ratings ≥ ``like_threshold`` — on
    movies of that genre). A movie has several genres, so shares sum to ≥ 1 over genres.
    Users without ratings get counts and shares 0, NaN means and missing timestamps;
    ratings of users not in ``users`` are ignored; movies missing from ``items`` count for
    activity but for no genre.
    """
    base = users[["user_id", "age", "gender", "occupation"]].reset_index(drop=True)
    user_index = pd.Index(base["user_id"].to_numpy())
    if not user_index.is_unique:
        raise ValueError("users has duplicate user_id values")
    n_users = len(base)
    pos = user_index.get_indexer(ratings["user_id"].to_numpy())
    keep = pos >= 0
    pos = pos[keep]
    rating = ratings["rating"].to_numpy(dtype=np.float64)[keep]
    timestamp = ratings["timestamp"].to_numpy(dtype=np.int64)[keep]
    is_liked = (rating >= like_threshold).astype(np.float64)

    flags = genre_flags(items).astype(np.float64)
    item_pos = pd.Index(items["movie_id"].to_numpy()).get_indexer(ratings["movie_id"].to_numpy()[keep])
    rated_flags = np.where((item_pos >= 0)[:, None], flags[np.maximum(item_pos, 0)], 0.0)

    n = np.bincount(pos, minlength=n_users).astype(np.float64)
    n_liked = np.bincount(pos, weights=is_liked, minlength=n_users)
    total = np.bincount(pos, weights=rating, minlength=n_users)
    total_sq = np.bincount(pos, weights=rating * rating, minlength=n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
        std = np.sqrt(np.maximum(np.where(n > 0, total_sq / n - mean * mean, np.nan), 0.0))
    genre_counts = _group_sum(pos, n_users, rated_flags)
    liked_counts = _group_sum(pos, n_users, rated_flags * is_liked[:, None])

    first = pd.Series(timestamp).groupby(pos).min().reindex(range(n_users))
    last = pd.Series(timestamp).groupby(pos).max().reindex(range(n_users))
    bucket = age_buckets(base["age"].to_numpy())
    frame = base.assign(
        age_bucket=bucket,
        age_group=np.asarray(AGE_BUCKET_LABELS, dtype=object)[bucket],
        n_ratings=n.astype(np.int64),
        n_liked=n_liked.astype(np.int64),
        liked_share=np.divide(n_liked, n, out=np.zeros(n_users), where=n > 0),
        mean_rating=mean,
        std_rating=std,
        first_ts=pd.array(first.to_numpy(), dtype="Int64"),
        last_ts=pd.array(last.to_numpy(), dtype="Int64"),
    )
    shares = np.divide(genre_counts, n[:, None], out=np.zeros_like(genre_counts), where=n[:, None] > 0)
    liked_shares = np.divide(
        liked_counts, n_liked[:, None], out=np.zeros_like(liked_counts), where=n_liked[:, None] > 0
    )
    genre_frame = pd.DataFrame(
        np.hstack([shares, liked_shares]),
        columns=[f"share_{g}" for g in GENRE_SLUGS] + [f"liked_share_{g}" for g in GENRE_SLUGS],
    )
    return pd.concat([frame, genre_frame], axis=1)


def rated_movies(ratings: pd.DataFrame) -> dict[int, list[int]]:
    """The movies each user rated (ascending ids, each once), by user id; users without ratings absent."""
    pairs = ratings[["user_id", "movie_id"]].drop_duplicates().sort_values(["user_id", "movie_id"])
    return {int(u): [int(m) for m in movies] for u, movies in pairs.groupby("user_id")["movie_id"]}


def item_features(
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    prior_weight: float = 10.0,
    like_threshold: float = LIKE_THRESHOLD,
) -> pd.DataFrame:
    """One row per catalogue movie (in ``items`` order): genres, year, popularity, ratings.

    Columns: movie_id, year (nullable), ``genre_<genre>`` 0/1 flags, n_genres, n_ratings,
    n_liked, mean_rating (NaN when unrated) and smoothed_mean — the mean shrunk towards the
    global mean with ``prior_weight`` pseudo-ratings, ``(sum + m·μ) / (n + m)``, so a movie
    rated once at 5 does not outrank a classic rated 4.4 by hundreds.
    """
    base = items[["movie_id", "year"]].reset_index(drop=True)
    item_index = pd.Index(base["movie_id"].to_numpy())
    pos = item_index.get_indexer(ratings["movie_id"].to_numpy())
    keep = pos >= 0
    pos = pos[keep]
    rating = ratings["rating"].to_numpy(dtype=np.float64)[keep]
    n_items = len(base)
    n = np.bincount(pos, minlength=n_items).astype(np.float64)
    total = np.bincount(pos, weights=rating, minlength=n_items)
    n_liked = np.bincount(pos, weights=(rating >= like_threshold).astype(np.float64), minlength=n_items)
    global_mean = float(rating.mean()) if len(rating) else np.nan
    flags = genre_flags(items)
    genre_frame = pd.DataFrame(flags.astype(np.int8), columns=[f"genre_{g}" for g in GENRE_SLUGS])
    frame = base.assign(year=pd.array(base["year"], dtype="Int64"))
    frame = pd.concat([frame, genre_frame], axis=1)
    return frame.assign(
        n_genres=flags.sum(axis=1).astype(np.int64),
        n_ratings=n.astype(np.int64),
        n_liked=n_liked.astype(np.int64),
        mean_rating=np.divide(total, n, out=np.full(n_items, np.nan), where=n > 0),
        smoothed_mean=(total + prior_weight * global_mean) / (n + prior_weight),
    )


# --------------------------------------------------------------------------- pair encoder

_DEMOGRAPHICS: Final[dict[str, tuple[str, ...]]] = {
    "gender": GENDERS,
    "age_bucket": tuple(str(i) for i in range(len(AGE_BUCKET_LOWER))),
    "occupation": OCCUPATIONS,
}
# Numeric columns (standardised with the training design's mean and std).
_NUMERIC: Final[tuple[str, ...]] = (
    "age",
    "movie_smoothed_mean",
    "movie_log_n",
    "movie_year",
    "movie_gender_offset",
    "movie_age_bucket_offset",
    "movie_occupation_offset",
    "genre_match",
    "user_offset",
    "user_log_n",
    "user_std",
    "user_genre_affinity",
)


class PairEncoder:
    """Fitted encoder: (person, movie) rows → dense float32 design matrix.

    ``fit`` learns, from training ratings only, the movie table (smoothed mean, popularity,
    year, genres), per-group movie offsets (gender / age bucket / occupation), the known
    users' statistics and the standardisation of every numeric column.
    ``transform`` encodes request rows (age, gender, occupation, movie_id, optional user_id).
    ``fit_transform`` also returns the training design, with leave-one-out statistics and
    the users listed in ``cold_users`` encoded as if unknown (so the model learns both regimes).

    A category never seen in training (gender "O" in ml-100k) is encoded as the training
    distribution over its values: the model answers for "anyone", not for an extrapolation.
    """

    def __init__(
        self,
        prior_weight: float = 10.0,
        group_prior_weight: float = 25.0,
        user_prior_weight: float = 5.0,
        interactions: Sequence[str] = ("gender", "age_bucket"),
        like_threshold: float = LIKE_THRESHOLD,
    ) -> None:
        unknown = set(interactions) - set(_DEMOGRAPHICS)
        if unknown:
            raise ValueError(f"interactions must be among {sorted(_DEMOGRAPHICS)}, got {sorted(unknown)}")
        self.prior_weight = prior_weight
        self.group_prior_weight = group_prior_weight
        self.user_prior_weight = user_prior_weight
        self.interactions = tuple(interactions)
        self.like_threshold = like_threshold

    # ------------------------------------------------------------------ public API

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for field, vocabulary in _DEMOGRAPHICS.items():
            names += [f"{field}={v}" for v in vocabulary]
        names += [f"genre={g}" for g in GENRE_SLUGS]
        for field in self.interactions:
            names += [f"{field}={v}*genre={g}" for v in _DEMOGRAPHICS[field] for g in GENRE_SLUGS]
        names += ["user_known", *_NUMERIC]
        return names

    def fit(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> Self:
        self.fit_transform(ratings, users, items)
        return self

    def fit_transform(
        self,
        ratings: pd.DataFrame,
        users: pd.DataFrame,
        items: pd.DataFrame,
        cold_users: Sequence[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fit on ``ratings`` and return (design matrix, ratings) of the training rows."""
        if len(ratings) == 0:
            raise ValueError("cannot fit the encoder on an empty ratings frame")
        self._fit_tables(ratings, users, items)
        rows = ratings.join(users.set_index("user_id")[["age", "gender", "occupation"]], on="user_id")
        if rows["gender"].isna().any():
            raise ValueError("ratings reference users missing from the users frame")
        user_ids = rows["user_id"].to_numpy(dtype=np.int64)
        user_pos = self._user_pos.get_indexer(user_ids)
        if cold_users is not None and len(cold_users):
            user_pos[np.isin(user_ids, np.asarray(cold_users, dtype=np.int64))] = -1
        y = rows["rating"].to_numpy(dtype=np.float64)
        raw = self._encode(self._columns(rows), user_pos=user_pos, own_rating=y)
        numeric = raw[:, self._numeric_slice].astype(np.float64)
        self.numeric_mean_ = numeric.mean(axis=0)
        std = numeric.std(axis=0)
        self.numeric_scale_ = np.where(std > 1e-12, std, 1.0)
        self._standardise(raw)
        return raw, y

    def transform(self, requests: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Design matrix for request rows; raises :class:`FeatureError` naming bad fields and rows.

        ``requests`` is a frame or a mapping of equal-length columns: age, gender,
        occupation, movie_id and optionally user_id (missing / None / unknown id = cold).
        """
        columns, user_pos = self._request_rows(requests)
        raw = self._encode(columns, user_pos=user_pos, own_rating=None)
        self._standardise(raw)
        return raw

    def linear(self, coef: np.ndarray, intercept: float) -> FoldedLinear:
        """``transform(requests) @ coef + intercept`` as lookups, without the design matrix.

        Every feature is a one-hot, a genre flag, a one-hot × flags product or a numeric column
        that depends on the movie, the person's (gender, age bucket, occupation) or the known
        user, so the dot product of a row with ``coef`` folds into per-movie and per-(group
        value, movie) tables plus a per-user term: see :class:`FoldedLinear`.
        """
        return FoldedLinear(self, coef, intercept)

    def _request_rows(
        self, requests: pd.DataFrame | Mapping[str, Any]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Checked request columns and each row's position among the known users (-1: cold)."""
        columns = self._columns(requests)
        user_pos = np.full(len(columns["movie_id"]), -1, dtype=np.int64)
        if "user_id" in columns:
            ids = columns["user_id"]
            given = np.isfinite(ids)
            user_pos[given] = _positions(self._user_pos, ids[given].astype(np.int64))
        return columns, user_pos

    def known_user_ids(self) -> np.ndarray:
        return self._user_pos.to_numpy()

    def params(self) -> dict[str, Any]:
        return {
            "prior_weight": self.prior_weight,
            "group_prior_weight": self.group_prior_weight,
            "user_prior_weight": self.user_prior_weight,
            "interactions": list(self.interactions),
            "like_threshold": self.like_threshold,
        }

    # ------------------------------------------------------------------ fitting

    def _fit_tables(self, ratings: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> None:
        self.item_ids_ = items["movie_id"].to_numpy(dtype=np.int64)
        self._item_pos = pd.Index(self.item_ids_)
        n_items = len(self.item_ids_)
        self.flags_ = genre_flags(items).astype(np.float32)
        self.n_genres_ = np.maximum(self.flags_.sum(axis=1), 1.0)

        item_pos = self._item_pos.get_indexer(ratings["movie_id"].to_numpy())
        if (item_pos < 0).any():
            raise ValueError("ratings reference movies missing from the items frame")
        rating = ratings["rating"].to_numpy(dtype=np.float64)
        liked = (rating >= self.like_threshold).astype(np.float64)
        self.global_mean_ = float(rating.mean())
        self.item_n_ = np.bincount(item_pos, minlength=n_items).astype(np.float64)
        self.item_sum_ = np.bincount(item_pos, weights=rating, minlength=n_items)
        m = self.prior_weight
        item_mean = (self.item_sum_ + m * self.global_mean_) / (self.item_n_ + m)
        year = pd.to_numeric(items["year"], errors="coerce").to_numpy(dtype=np.float64)
        has_year = np.isfinite(year)
        self.item_year_ = np.where(has_year, year, np.nanmean(year) if has_year.any() else 0.0)
        residual = rating - item_mean[item_pos]

        demo = users.set_index("user_id")[["age", "gender", "occupation"]]
        rated = demo.reindex(ratings["user_id"].to_numpy())
        codes = self._demographic_codes(rated)
        user_demo = self._demographic_codes(demo)
        # Per-group movie offsets: sum of residuals and counts, (movie, group value) dense tables.
        self.group_sum_: dict[str, np.ndarray] = {}
        self.group_n_: dict[str, np.ndarray] = {}
        for field, vocabulary in _DEMOGRAPHICS.items():
            key = item_pos * len(vocabulary) + codes[field]
            size = n_items * len(vocabulary)
            self.group_sum_[field] = np.bincount(key, weights=residual, minlength=size).reshape(n_items, -1)
            self.group_n_[field] = np.bincount(key, minlength=size).astype(np.float64).reshape(n_items, -1)
        # Unseen category values are encoded as the training distribution (see class docstring).
        active = np.isin(demo.index.to_numpy(), ratings["user_id"].unique())
        self.marginal_: dict[str, np.ndarray] = {}
        for field, vocabulary in _DEMOGRAPHICS.items():
            counts = np.bincount(user_demo[field][active], minlength=len(vocabulary)).astype(np.float64)
            self.marginal_[field] = counts / max(counts.sum(), 1.0)

        # Known users: residual sums, counts, per-genre residuals and liked-genre counts.
        self._user_pos = pd.Index(np.unique(ratings["user_id"].to_numpy(dtype=np.int64)))
        upos = self._user_pos.get_indexer(ratings["user_id"].to_numpy())
        n_users = len(self._user_pos)
        flags = self.flags_[item_pos].astype(np.float64)
        self.user_n_ = np.bincount(upos, minlength=n_users).astype(np.float64)
        self.user_res_sum_ = np.bincount(upos, weights=residual, minlength=n_users)
        self.user_sum_ = np.bincount(upos, weights=rating, minlength=n_users)
        self.user_sq_sum_ = np.bincount(upos, weights=rating * rating, minlength=n_users)
        self.user_genre_res_ = _group_sum(upos, n_users, flags * residual[:, None])
        self.user_genre_n_ = _group_sum(upos, n_users, flags)
        self.user_liked_n_ = np.bincount(upos, weights=liked, minlength=n_users)
        self.user_genre_liked_ = _group_sum(upos, n_users, flags * liked[:, None])
        # Liked-genre profile of each (gender, age bucket) group, for cold people.
        group_of_user = self._group_of(user_demo)[demo.index.get_indexer(self._user_pos)]
        n_groups = len(GENDERS) * len(_DEMOGRAPHICS["age_bucket"])
        group_liked = _group_sum(group_of_user, n_groups, self.user_genre_liked_)
        group_total = np.bincount(group_of_user, weights=self.user_liked_n_, minlength=n_groups)
        overall = self.user_genre_liked_.sum(axis=0) / max(self.user_liked_n_.sum(), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            profile = group_liked / group_total[:, None]
        self.group_profile_ = np.where(group_total[:, None] > 0, profile, overall[None, :])
        self.user_log_n_mean_ = float(np.log1p(self.user_n_).mean())
        user_var = self.user_sq_sum_ / self.user_n_ - (self.user_sum_ / self.user_n_) ** 2
        self.user_std_mean_ = float(np.sqrt(np.maximum(user_var, 0.0)).mean())

        offset = 0
        self._slices: dict[str, slice] = {}
        for field, vocabulary in _DEMOGRAPHICS.items():
            self._slices[field] = slice(offset, offset + len(vocabulary))
            offset += len(vocabulary)
        self._slices["genre"] = slice(offset, offset + N_GENRES)
        offset += N_GENRES
        for field in self.interactions:
            width = len(_DEMOGRAPHICS[field]) * N_GENRES
            self._slices[f"x_{field}"] = slice(offset, offset + width)
            offset += width
        self._known_column = offset
        self._numeric_slice = slice(offset + 1, offset + 1 + len(_NUMERIC))
        self.n_features_ = offset + 1 + len(_NUMERIC)

    @staticmethod
    def _columns(requests: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        names = requests.columns if isinstance(requests, pd.DataFrame) else requests.keys()
        for column in ("age", "gender", "occupation", "movie_id"):
            if column not in names:
                raise FeatureError(column, f"missing column {column!r}")
        columns = {
            "age": _numbers(requests["age"]),
            "gender": np.asarray(requests["gender"], dtype=object),
            "occupation": np.asarray(requests["occupation"], dtype=object),
            "movie_id": _numbers(requests["movie_id"]),
        }
        if "user_id" in names:
            columns["user_id"] = _numbers(requests["user_id"])
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise FeatureError("requests", "request columns have different lengths")
        return columns

    def _codes_and_items(self, rows: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each row's demographic codes and catalogue position; :class:`FeatureError` on a bad one."""
        codes = self._demographic_codes(rows)
        movie_ids = rows["movie_id"]
        integral = np.isfinite(movie_ids) & (movie_ids == np.round(movie_ids))
        item = _positions(self._item_pos, np.where(integral, movie_ids, -1).astype(np.int64))
        bad = np.flatnonzero(item < 0)
        if len(bad):
            raise FeatureError("movie_id", "movie_id is not in the catalogue", bad[:20].tolist())
        return codes, item

    @staticmethod
    def _group_of(codes: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each row's (gender, age bucket) group: the row of :attr:`group_profile_`."""
        return codes["gender"] * len(_DEMOGRAPHICS["age_bucket"]) + codes["age_bucket"]

    def _cold_profiles(self) -> np.ndarray:
        """The liked-genre profile a person without their own takes, per (gender, age bucket) group.

        A gender unseen in training is "anyone" of that age: the group profiles weighted by the
        training gender mix.
        """
        by_gender = self.group_profile_.reshape(len(GENDERS), -1)
        mix = self.marginal_["gender"] @ by_gender
        return np.where((self.marginal_["gender"] == 0)[:, None], mix, by_gender).reshape(-1, N_GENRES)

    @staticmethod
    def _demographic_codes(frame: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {
            "gender": _codes(np.asarray(frame["gender"], dtype=object), GENDERS, "gender"),
            "age_bucket": age_buckets(np.asarray(frame["age"])),
            "occupation": _codes(np.asarray(frame["occupation"], dtype=object), OCCUPATIONS, "occupation"),
        }

    def _standardise(self, matrix: np.ndarray) -> None:
        block = matrix[:, self._numeric_slice]
        block -= self.numeric_mean_.astype(np.float32)
        block /= self.numeric_scale_.astype(np.float32)
        matrix[:, self._numeric_slice] = block

    # ------------------------------------------------------------------ encoding

    def _encode(
        self, rows: dict[str, np.ndarray], user_pos: np.ndarray, own_rating: np.ndarray | None
    ) -> np.ndarray:
        """Raw (unstandardised) design; ``own_rating`` set ⇒ training rows, leave-one-out stats.

        ``user_pos`` is each row's index among the known users, -1 for a cold row.
        """
        n = len(rows["movie_id"])
        codes, item = self._codes_and_items(rows)
        out = np.zeros((n, self.n_features_), dtype=np.float32)
        rows_idx = np.arange(n)

        onehots: dict[str, np.ndarray] = {}
        for field, vocabulary in _DEMOGRAPHICS.items():
            block = np.zeros((n, len(vocabulary)), dtype=np.float32)
            block[rows_idx, codes[field]] = 1.0
            unseen = self.marginal_[field][codes[field]] == 0
            if unseen.any():
                block[unseen] = self.marginal_[field].astype(np.float32)
            onehots[field] = block
            out[:, self._slices[field]] = block
        flags = self.flags_[item]
        out[:, self._slices["genre"]] = flags
        for field in self.interactions:
            crossed = onehots[field][:, :, None] * flags[:, None, :]
            out[:, self._slices[f"x_{field}"]] = crossed.reshape(n, -1)

        # Movie statistics (leave-one-out for training rows).
        m = self.prior_weight
        item_n = self.item_n_[item]
        item_sum = self.item_sum_[item]
        if own_rating is not None:
            item_n = item_n - 1.0
            item_sum = item_sum - own_rating
        movie_mean = (item_sum + m * self.global_mean_) / (item_n + m)
        full_mean = (self.item_sum_[item] + m * self.global_mean_) / (self.item_n_[item] + m)
        own_residual = None if own_rating is None else own_rating - full_mean

        numeric: dict[str, np.ndarray] = {
            "age": rows["age"],
            "movie_smoothed_mean": movie_mean,
            "movie_log_n": np.log1p(item_n),
            "movie_year": self.item_year_[item],
        }
        for field in _DEMOGRAPHICS:
            weights = onehots[field].astype(np.float64)
            total = (self.group_sum_[field][item] * weights).sum(axis=1)
            count = (self.group_n_[field][item] * weights).sum(axis=1)
            if own_residual is not None:
                total = total - own_residual
                count = count - 1.0
            numeric[f"movie_{field}_offset"] = total / (count + self.group_prior_weight)

        # Known users: their own statistics; everyone else: neutral values and a profile of their group.
        upos = user_pos
        known = upos >= 0
        out[:, self._known_column] = known
        profile = self._cold_profiles()[self._group_of(codes)]
        user_offset = np.zeros(n)
        user_log_n = np.full(n, self.user_log_n_mean_)
        user_std = np.full(n, self.user_std_mean_)
        affinity = np.zeros(n)
        if known.any():
            k = np.flatnonzero(known)
            u = upos[k]
            kf = flags[k].astype(np.float64)
            res_sum = self.user_res_sum_[u]
            cnt = self.user_n_[u]
            total = self.user_sum_[u]
            sq = self.user_sq_sum_[u]
            genre_res = self.user_genre_res_[u]
            genre_n = self.user_genre_n_[u]
            liked_n = self.user_liked_n_[u]
            genre_liked = self.user_genre_liked_[u]
            if own_rating is not None:
                r = own_rating[k]
                res = own_residual[k] if own_residual is not None else 0.0
                is_liked = (r >= self.like_threshold).astype(np.float64)
                res_sum = res_sum - res
                cnt = cnt - 1.0
                total = total - r
                sq = sq - r * r
                genre_res = genre_res - kf * np.asarray(res)[:, None]
                genre_n = genre_n - kf
                liked_n = liked_n - is_liked
                genre_liked = genre_liked - kf * is_liked[:, None]
            safe = np.maximum(cnt, 1.0)
            user_offset[k] = res_sum / (cnt + self.user_prior_weight)
            user_log_n[k] = np.log1p(cnt)
            user_std[k] = np.sqrt(np.maximum(sq / safe - (total / safe) ** 2, 0.0))
            per_genre = genre_res / (genre_n + self.user_prior_weight)
            affinity[k] = (per_genre * kf).sum(axis=1) / self.n_genres_[item[k]]
            with np.errstate(invalid="ignore", divide="ignore"):
                own_profile = genre_liked / liked_n[:, None]
            profile[k] = np.where(liked_n[:, None] > 0, own_profile, profile[k])
        numeric["genre_match"] = (profile * flags).sum(axis=1) / self.n_genres_[item]
        numeric["user_offset"] = user_offset
        numeric["user_log_n"] = user_log_n
        numeric["user_std"] = user_std
        numeric["user_genre_affinity"] = affinity
        out[:, self._numeric_slice] = np.column_stack([numeric[name] for name in _NUMERIC])
        return out


class FoldedLinear:
    """A linear model over :class:`PairEncoder` features, evaluated by lookups (``PairEncoder.linear``).

    ``predict(requests)`` equals ``encoder.transform(requests) @ coef + intercept`` (to float32
    rounding: the design matrix is float32, these tables float64) and checks requests the same
    way, but never builds the (rows × features) matrix. A row's value is the sum of

    * one entry per demographic field of a (value, movie) table: the field's one-hot weight, its
      genre interactions with the movie's flags, and the movie's rating offset in that group
      (a value never seen in training is its training distribution, as in the encoder);
    * a per-movie term: genre flags, the movie's statistics, the intercept and the
      standardisation's offsets;
    * the age's weight times the age;
    * for a cold row, a constant and a (gender, age bucket, movie) table of its group's
      liked-genre profile against the movie's genres; for a known user, that user's constant and
      their genre vector against the movie's genres (a sum over the 19 genres).

    Every operation is element-wise in a fixed order, so a record predicts bit-identically alone
    and inside a 10,000-record batch. Built once per fitted model (a few MB for ml-100k).
    """

    def __init__(self, encoder: PairEncoder, coef: np.ndarray, intercept: float) -> None:
        e = encoder
        w = np.asarray(coef, dtype=np.float64)
        if len(w) != e.n_features_:
            raise ValueError(f"coef has {len(w)} weights, the encoder makes {e.n_features_} features")
        self.encoder = e
        numeric = {name: i for i, name in enumerate(_NUMERIC)}
        scale = np.asarray(e.numeric_scale_, dtype=np.float32).astype(np.float64)
        mean = np.asarray(e.numeric_mean_, dtype=np.float32).astype(np.float64)
        a = w[e._numeric_slice] / scale  # weights of the raw numeric columns

        def weight(name: str) -> float:
            return float(a[numeric[name]])

        flags = e.flags_.astype(np.float64)
        n_genres = e.n_genres_.astype(np.float64)
        m = e.prior_weight
        item_mean = (e.item_sum_ + m * e.global_mean_) / (e.item_n_ + m)
        self._item = (
            float(intercept)
            - float(a @ mean)
            + flags @ w[e._slices["genre"]]
            + weight("movie_smoothed_mean") * item_mean
            + weight("movie_log_n") * np.log1p(e.item_n_)
            + weight("movie_year") * e.item_year_
        )
        self._age = weight("age")
        # (value, movie) tables, one per demographic field, flattened: index code * n_items + item
        self._n_items = len(e.item_ids_)
        self._field: dict[str, np.ndarray] = {}
        for field, vocabulary in _DEMOGRAPHICS.items():
            marginal = e.marginal_[field].astype(np.float32).astype(np.float64)
            rows = np.eye(len(vocabulary))
            rows[marginal == 0] = marginal  # a value unseen in training: the training distribution
            table = (rows @ w[e._slices[field]])[:, None] + np.zeros((1, self._n_items))
            if field in e.interactions:
                crossed = w[e._slices[f"x_{field}"]].reshape(len(vocabulary), N_GENRES)
                table += (rows @ crossed) @ flags.T
            total = rows @ e.group_sum_[field].T
            count = rows @ e.group_n_[field].T
            table += weight(f"movie_{field}_offset") * total / (count + e.group_prior_weight)
            self._field[field] = table.ravel()
        # the liked-genre profile of a cold row's (gender, age bucket) group, against each movie
        self._group_match = (weight("genre_match") * (e._cold_profiles() @ flags.T) / n_genres).ravel()
        self._cold = weight("user_log_n") * e.user_log_n_mean_ + weight("user_std") * e.user_std_mean_
        # known users: a constant and a genre vector each
        cnt, safe = e.user_n_, np.maximum(e.user_n_, 1.0)
        std = np.sqrt(np.maximum(e.user_sq_sum_ / safe - (e.user_sum_ / safe) ** 2, 0.0))
        self._user = (
            float(w[e._known_column])
            + weight("user_offset") * e.user_res_sum_ / (cnt + e.user_prior_weight)
            + weight("user_log_n") * np.log1p(cnt)
            + weight("user_std") * std
        )
        self._user_liked = e.user_liked_n_ > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            own = np.where(self._user_liked[:, None], e.user_genre_liked_ / e.user_liked_n_[:, None], 0.0)
        per_genre = e.user_genre_res_ / (e.user_genre_n_ + e.user_prior_weight)
        vectors = weight("user_genre_affinity") * per_genre + weight("genre_match") * own
        self._user_genres = np.ascontiguousarray(vectors.T)  # (genre, user): one row per genre
        self._flags = np.ascontiguousarray(flags.T)  # (genre, movie)
        self._n_genres = n_genres
        tables = [self._item, self._group_match, self._user, self._user_genres, *self._field.values()]
        scalars = np.array([self._age, self._cold])
        if not (np.isfinite(scalars).all() and all(np.isfinite(t).all() for t in tables)):
            # what SimpleLinearRegression.predict refuses in a design matrix (NaN or inf features)
            raise ValueError("the model's weights or the encoder's statistics are not finite")

    def predict(self, requests: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Predictions for request rows (the columns of :meth:`PairEncoder.transform`)."""
        e = self.encoder
        columns, user_pos = e._request_rows(requests)
        codes, item = e._codes_and_items(columns)
        n_items = self._n_items
        total = self._item[item] + self._age * columns["age"]
        for field, table in self._field.items():
            total += table[codes[field] * n_items + item]
        known = user_pos >= 0
        group = e._group_of(codes)
        own_profile = np.zeros(len(item), dtype=bool)
        if known.any():
            k = np.flatnonzero(known)
            u, i = user_pos[k], item[k]
            dot = self._user_genres[0][u] * self._flags[0][i]
            for genre in range(1, N_GENRES):
                dot += self._user_genres[genre][u] * self._flags[genre][i]
            total[k] += self._user[u] + dot / self._n_genres[i]
            own_profile[k] = self._user_liked[u]
        total[~known] += self._cold
        cold_profile = ~own_profile
        total[cold_profile] += self._group_match[group[cold_profile] * n_items + item[cold_profile]]
        return total
