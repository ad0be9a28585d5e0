"""The accuracy test behind ``tests/run_accuracy_tests.py`` (the seed's interface).

``test_data.json`` holds ``data``, ``target`` and ``expected_score``. For a bundle, ``data``
are demographic profiles, ``target`` each profile's liked titles, and the score is NDCG@10 of
what the bundle serves — computed through the same lookup the API uses. For a model file
holding a scikit-learn estimator rather than a movierec model (the seed's: :func:`is_seed_estimator`,
decided by what the file holds), ``data`` are feature rows, ``target`` ratings and the score is the
estimator's own ``score`` (R²), measured on at least 2 rows whose target varies (an error
otherwise: R² is undefined there, and scikit-learn scored every model 0.0 against a constant).

``expected_score`` is the score the model had when it was written, so a model always passes its
own test data unless its environment changed it. An optional ``floor_score`` (training writes
one: global most-rated on the same users) is a bar set from the data, not from the model: a
model below it fails even against its own test data, and so does a bundle that answers a test
profile with fewer than ``k`` movies (its whole catalogue, when smaller), whatever it scored.

For a bundle, ``k`` (default 10) is at most the bundle's table depth (manifest ``table_depth``,
100): its lists hold no more movies. ``floor_score`` is NDCG at ``floor_k`` (training writes it;
10 when absent, the k every floor was computed at before), and is refused unless that is ``k``:
an NDCG@10 floor does not compare with an NDCG@5 score.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from app.recommender.bundle import (
    MANIFEST,
    LoadedBundle,
    archive_members,
    is_archive,
    load_bundle,
    segment_profiles,
    unpickle_model,
)
from app.recommender.metrics import ndcg_at_k
from app.recommender.models.base import Recommender

K = 10
# A seed-style .tar.gz's model.pkl is read into memory: one larger than this unpacked is refused
# (a random forest of the full data is tens of MB; a decompression bomb would exhaust memory).
MAX_ARCHIVED_MODEL_BYTES = 1 << 30


def bundle_score(
    bundle: LoadedBundle, data: list[dict[str, Any]], target: list[list[str]], k: int = K
) -> float:
    """Mean NDCG@k of the bundle's served lists against the liked titles."""
    if not isinstance(data, list) or not isinstance(target, list) or len(data) != len(target) or not data:
        raise ValueError("test data needs one non-empty target per profile")
    liked_sets = [_titles(liked, number) for number, liked in enumerate(target, start=1)]
    try:
        scores = [
            ndcg_at_k([r.title for r in bundle.recommend_segment(segment, k)], liked, k)
            for segment, liked in zip(segment_profiles(data), liked_sets, strict=True)
        ]
    except (KeyError, TypeError, ValueError) as exc:
        # A profile without age/gender/occupation, with an age that is not one (int() or
        # age_bucket's ValueError), or outside the segments the bundle answers (an unknown
        # occupation): bad test data, reported as such rather than a bare KeyError or ValueError.
        raise ValueError(f"test data holds a profile that is not a known segment: {exc!r}") from exc
    return float(np.mean(scores))


def _titles(liked: Any, number: int) -> set[str]:
    """One profile's target as a set of titles; ValueError unless a non-empty list of strings.

    A string was taken as the set of its characters and a list of movie ids never hit: the test
    ran and its score meant nothing. An empty target scored 0 (NDCG of a user without a relevant
    movie), averaged in; protocol A leaves such users out, and so does the test data training writes.
    """
    if not isinstance(liked, list) or not all(isinstance(title, str) for title in liked):
        raise ValueError(f"test data's target {number} is not a list of titles: {json.dumps(liked)[:80]}")
    if not liked:
        raise ValueError(f"test data's target {number} is empty: every profile needs a liked title")
    return set(liked)


@dataclass(frozen=True)
class AccuracyResult:
    score: float
    expected: float
    tolerance: float
    metric: str
    floor: float | None = None  # test data's floor_score: a score the model must reach whatever it expects
    model: str = ""  # what was scored: the bundle's version (a store's latest), or a model file's path
    short_lists: str | None = None  # which test profiles the bundle answers with fewer than k movies
    unknown_titles: tuple[str, ...] = ()  # the test data's liked titles the bundle's catalogue lacks
    liked_titles: int = 0  # how many distinct liked titles the test data names (a bundle's)

    @property
    def unknown_note(self) -> str:
        """Said with a verdict when the test data names movies the model cannot recommend: they
        count as misses, so the score is lower whatever the model (test data of another model's
        catalogue, or titles spelled another way), and a FAILED read as a worse model."""
        if not self.unknown_titles:
            return ""
        return (
            f"; {len(self.unknown_titles)} of the test data's {self.liked_titles} liked titles are not "
            f"in the model's catalogue (e.g. {self.unknown_titles[0]!r}): never recommended, they count "
            "as misses"
        )

    @property
    def below_floor(self) -> bool:
        return self.floor is not None and self.score < self.floor - self.tolerance

    @property
    def passed(self) -> bool:
        return self.score >= self.expected - self.tolerance and not self.below_floor and not self.short_lists


def run_accuracy_test(
    model_path: Path | str, test_data_path: Path | str, tolerance: float = 1e-5
) -> AccuracyResult:
    """Score the model on the test data and compare with the expected score."""
    try:
        payload = json.loads(Path(test_data_path).read_text())
    except OSError as exc:  # a directory, an unreadable file: a usage error, not a traceback
        raise ValueError(f"test data {test_data_path} cannot be read: {exc}") from exc
    except ValueError as exc:  # truncated, or not text: the parser's message alone names no file
        raise ValueError(f"test data {test_data_path} is not JSON: {exc}") from exc
    try:
        data, target, raw_expected = payload["data"], payload["target"], payload["expected_score"]
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{test_data_path} must hold data, target, expected_score (and an integer k)"
        ) from exc
    k = _positive_integer(payload.get("k", K), "k", test_data_path)
    floor_k = _positive_integer(payload.get("floor_k", K), "floor_k", test_data_path)
    expected = _finite(raw_expected, "expected_score", test_data_path)
    raw_floor = payload.get("floor_score")
    floor = _finite(raw_floor, "floor_score", test_data_path) if raw_floor is not None else None
    model_path = Path(model_path)
    held = _model_file_object(model_path)
    if held is not None and is_seed_estimator(held):
        score = _r2(held, data, target, model_path, test_data_path)
        return AccuracyResult(score, expected, tolerance, "r2", floor, str(model_path))
    bundle = load_bundle(model_path, unpickled=held)  # a model file unpickled once, archived or not
    depth = int(bundle.tables.segment_top.shape[1])
    if k > depth:  # scored as it came, NDCG@k of lists of at most depth movies: not what it says
        raise ValueError(
            f"{test_data_path}: k {k} is more than the bundle's table depth {depth}: its lists hold "
            f"at most {depth} movies, so ndcg@{k} cannot be scored; use a k of at most {depth}"
        )
    if floor is not None and floor_k != k:
        raise ValueError(
            f"{test_data_path}: floor_score is ndcg@{floor_k} but k is {k}: the two do not compare; "
            f"give a floor_score computed at k {k} (and floor_k {k}), or none"
        )
    score = bundle_score(bundle, data, target, k)
    liked = sorted({title for titles in target for title in titles})  # lists of titles: bundle_score checked
    if bundle.position_of_title.keys().isdisjoint(liked):
        # it scores 0 whatever the model: not a verdict on the model (and with an expected_score
        # of 0, a pass for any)
        raise ValueError(
            f"test data {test_data_path} names none of the model's movies ({len(liked)} liked titles, "
            f"e.g. {liked[0]!r}, none in the catalogue of {bundle.version}): test data of another catalogue?"
        )
    unknown = tuple(title for title in liked if title not in bundle.position_of_title)
    return AccuracyResult(
        score, expected, tolerance, f"ndcg@{k}", floor, bundle.version, _short_lists(bundle, data, k),
        unknown, len(liked),
    )  # fmt: skip


def _short_lists(bundle: LoadedBundle, data: list[dict[str, Any]], k: int) -> str | None:
    """Which test profiles the bundle answers with fewer than ``k`` movies (or its whole catalogue,
    when smaller), said in one phrase; None when every list is full.

    A short list scores a little lower, and the bundle's own test data expects just that score: a
    model ranking fewer movies than the API serves (scores that are NaN for the rest) passed,
    though the promotion gate's smoke test refuses it. ``data`` were checked by :func:`bundle_score`.
    """
    full = min(k, len(bundle.catalogue))
    short = [
        (segment.key, served)
        for segment in segment_profiles(data)
        if (served := len(bundle.recommend_segment(segment, k))) < full
    ]
    if not short:
        return None
    key, served = short[0]
    return (
        f"{len(short)} of {len(data)} test profiles get fewer than {full} movies "
        f"(e.g. segment {key}: {served})"
    )


def _r2(estimator: Any, data: Any, target: Any, model_path: Path, test_data_path: Path | str) -> float:
    """A scikit-learn estimator's own score (R²) on the test data; ValueError when the data does
    not fit it or cannot measure it."""

    def does_not_fit(exc: Exception) -> ValueError:
        # a bundle's profiles (dicts), ragged rows, another number of features: numpy's or
        # scikit-learn's words alone (a TypeError was a traceback) named neither file; their first
        # line only (scikit-learn's on a NaN in the rows goes on for a paragraph)
        words = next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__
        return ValueError(
            f"test data {test_data_path} does not fit the {type(estimator).__name__} in {model_path}: {words}"
        )

    try:
        rows, truth = np.asarray(data, dtype=np.float64), np.asarray(target, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise does_not_fit(exc) from exc
    unmeasurable = _r2_undefined(truth)
    if unmeasurable is not None:
        raise ValueError(f"test data {test_data_path} cannot measure the r2 of {model_path}: {unmeasurable}")
    try:
        faulty = _prediction_problem(estimator, rows)
    except (TypeError, ValueError) as exc:
        raise does_not_fit(exc) from exc
    if faulty is not None:  # before its score, whose words on it blame the test data
        raise ValueError(f"the {type(estimator).__name__} in {model_path} {faulty}: it cannot be scored")
    try:
        score = float(estimator.score(rows, truth))
    except (TypeError, ValueError) as exc:
        raise does_not_fit(exc) from exc
    if not math.isfinite(score):  # compared with >=, a nan fails as if the model were bad
        raise ValueError(
            f"test data {test_data_path} cannot measure the r2 of {model_path}: it scored {score}"
        )
    return score


def _prediction_problem(estimator: Any, rows: np.ndarray) -> str | None:
    """What is wrong with the estimator's predictions for ``rows``, or None when there is one
    finite number per row (or it does not predict numbers: its own score judges those).

    scikit-learn's score refuses NaN predictions with "Input contains NaN." and too few with
    "inconsistent numbers of samples", words that blamed the test data for a broken model.
    TypeError or ValueError when the rows do not fit it.
    """
    if not callable(getattr(estimator, "predict", None)):
        return None
    predicted = np.asarray(estimator.predict(rows))
    if len(predicted) != len(rows):
        return f"predicts {len(predicted)} values for the {len(rows)} test rows"
    if predicted.dtype.kind not in "fc":
        return None
    unfit = int((~np.isfinite(predicted)).reshape(len(predicted), -1).any(axis=1).sum())
    if unfit:
        return f"predicts {unfit} values that are not finite numbers (NaN, inf) for the {len(rows)} test rows"
    return None


def _r2_undefined(truth: np.ndarray) -> str | None:
    """Why R² cannot be measured against ``truth``, or None when it can (or scikit-learn will say
    why the target is unfit). With fewer than 2 rows R² is nan; against a target that never varies
    scikit-learn scores every imperfect model 0.0, so an ``expected_score`` of 0 passed any model."""
    if truth.ndim == 0:
        return None
    if len(truth) < 2:
        return f"it has {len(truth)} row{'' if len(truth) == 1 else 's'}, and R² needs at least 2"
    if bool((truth == truth[0]).all(axis=0).any()):
        return "its target is the same in every row, and R² is undefined against a constant"
    return None


def _positive_integer(value: Any, key: str, where: Path | str) -> int:
    """``k`` or ``floor_k`` of the test data: a whole number >= 1. int() made 2.5 a 2 and true a
    1 (another metric than the file asked for), and raised OverflowError for Infinity."""
    try:
        number = int(value)
        if isinstance(value, bool) or (isinstance(value, float) and value != number):
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        number = 0
    if number < 1:
        raise ValueError(f"{where}: {key} must be a positive integer, not {json.dumps(value)}")
    return number


def _finite(value: Any, key: str, where: Path | str) -> float:
    """A score of the test data as a float: a finite number, never a boolean.

    Python's json reads NaN, Infinity and -Infinity: an ``expected_score`` of -Infinity passed
    every model, a NaN one failed every model as if the model were bad, and a NaN
    ``floor_score`` switched the floor off.
    """
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{where}: {key} must be a finite number, not {json.dumps(value)}")
    return number


def is_seed_estimator(model: Any) -> bool:
    """Whether a model file's object is scored as the seed's test scored it, by its own ``score``
    (R², for a regressor) on feature rows: a scikit-learn estimator, not a movierec model.

    Decided by what the file holds, whatever else could be made of it: the bundle loader serves
    the seed's regressor too, given the catalogue.csv beside it (it ranks those movies), and its
    test data is still feature rows and ratings (until 2026-12-06 the estimator was scored by R²
    only when the loader refused it).
    """
    return not isinstance(model, Recommender) and hasattr(model, "score")


def _model_file_object(path: Path) -> Any | None:
    """What a model file holds: the object of a ``model.pkl`` (any file not an archive, as the
    bundle loader takes it), or (the seed's interface) of the one ``model.pkl`` of a ``.tar.gz``
    holding no bundle; None for a bundle, a store, an archive of a bundle, or an archive the
    bundle loader is left to say why it cannot load.

    BundleError when a ``model.pkl`` cannot be unpickled (the loader's own words).
    """
    if not path.is_file():
        return None
    if not is_archive(path):
        return unpickle_model(path)
    source = _archived_pickle(path)
    if source is None:
        return None
    try:
        return joblib.load(source)  # nosec B301 - model files come from our own training
    except Exception:  # noqa: BLE001 - unreadable: the bundle loader's error says why
        return None


def _archived_pickle(path: Path) -> io.BytesIO | None:
    """The bytes of the one ``model.pkl`` in an archive holding no bundle (as the bundle loader
    finds it), read without extracting anything; None for an unreadable archive, one holding a
    bundle's ``manifest.json``, or no ``model.pkl`` or several.

    ValueError, before anything is read, when it is larger than :data:`MAX_ARCHIVED_MODEL_BYTES`
    unpacked (a damaged archive, or a decompression bomb: it would be read into memory whole), or
    the archive is over the bounds of every model archive (BundleError, :func:`archive_members`).
    """
    try:
        with tarfile.open(path, "r:gz") as archive:
            files = [m for m in archive_members(archive, path) if m.isfile()]
            members = [m for m in files if Path(m.name).name == "model.pkl"]
            if len(members) != 1 or any(Path(m.name).name == MANIFEST for m in files):
                return None
            if members[0].size > MAX_ARCHIVED_MODEL_BYTES:
                raise ValueError(
                    f"{path}: its {members[0].name} is {members[0].size} bytes unpacked, more than the "
                    f"{MAX_ARCHIVED_MODEL_BYTES} bytes a model is read up to (a damaged or hostile archive?)"
                )
            member = archive.extractfile(members[0])
            return io.BytesIO(member.read()) if member is not None else None
    except (tarfile.TarError, OSError, EOFError):
        return None
