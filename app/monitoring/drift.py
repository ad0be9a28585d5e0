"""Drift of the request population: population stability index (PSI) per demographic feature.

A cold-start recommendation is a lookup by (age bucket, gender, occupation), so the model is
only as good as the training data's coverage of the people who ask. When the mix of people
asking moves away from the mix the model was trained on, offline metrics stop describing
what is served. PSI measures that move per feature:

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

over the categories ``i`` of a feature, with ``e`` the training shares and ``a`` the shares
in recent requests (both floored at ``EPSILON`` so an empty category does not make it
infinite). Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.

The training distribution is written into the bundle manifest at training time
(``manifest["training_distribution"]``, from :func:`demographic_distribution`); bundles
written before that have none, and drift is then reported as ``unknown``, never guessed.
It is the MovieLens users' alone: the population the offline metrics (protocol A, the
promotion gate) are measured on. The synthetic feedback users of a training set (one per
scored anonymous request) train the models but are the request population itself, so they
are left out: with them, traffic of one profile that scored its lists became most of the
reference at the next retrain, and its own drift read as stable.
Pure functions only (no Flask, no database), so the training code may import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.recommender.data import is_feedback_user
from app.recommender.segments import AGE_BUCKET_LABELS, GENDERS, OCCUPATIONS, age_bucket

EPSILON = 1e-4
FEATURES: tuple[str, ...] = ("age_bucket", "gender", "occupation")
CATEGORIES: dict[str, tuple[str, ...]] = {
    "age_bucket": AGE_BUCKET_LABELS,
    "gender": GENDERS,
    "occupation": OCCUPATIONS,
}
MANIFEST_KEY = "training_distribution"


def _categorise(age: Any, gender: Any, occupation: Any) -> dict[str, str] | None:
    """The three categorical values of one profile, or None when it is incomplete or invalid."""
    if age is None or gender is None or occupation is None:
        return None
    try:
        bucket = AGE_BUCKET_LABELS[age_bucket(int(age))]
    except (TypeError, ValueError):
        return None
    if gender not in GENDERS or occupation not in OCCUPATIONS:
        return None
    return {"age_bucket": bucket, "gender": str(gender), "occupation": str(occupation)}


def count_profiles(profiles: Iterable[tuple[Any, Any, Any, int]]) -> dict[str, dict[str, int]]:
    """Category counts per feature from ``(age, gender, occupation, count)`` tuples.

    Incomplete profiles (a known-user request without demographics) are skipped: they tell
    nothing about the demographic mix.
    """
    counts = {feature: dict.fromkeys(CATEGORIES[feature], 0) for feature in FEATURES}
    for age, gender, occupation, n in profiles:
        values = _categorise(age, gender, occupation)
        if values is None or n <= 0:
            continue
        for feature, value in values.items():
            counts[feature][value] += int(n)
    return counts


def shares(counts: Mapping[str, int | float]) -> dict[str, float]:
    """Counts → shares summing to 1 (all zeros stay zeros)."""
    total = float(sum(counts.values()))
    if total <= 0:
        return {key: 0.0 for key in counts}
    return {key: float(value) / total for key, value in counts.items()}


def demographic_distribution(users: Any) -> dict[str, Any]:
    """The training population's shares per feature, for the bundle manifest.

    ``users`` is a training set's users table (a DataFrame with ``user_id``, ``age``,
    ``gender``, ``occupation``); each MovieLens user counts once, as each person asking counts
    once per request. Feedback users (:func:`~app.recommender.data.is_feedback_user`) are left
    out: they are requests already served (module docstring), and until 2026-12-06 they were
    counted, so the reference moved towards the traffic it is compared with at every retrain.
    """
    users = users[~is_feedback_user(users["user_id"])]
    rows = zip(users["age"].tolist(), users["gender"].tolist(), users["occupation"].tolist(), strict=True)
    counts = count_profiles((age, gender, occupation, 1) for age, gender, occupation in rows)
    n = sum(counts["gender"].values())
    return {"source": "users", "n": int(n), **{feature: shares(counts[feature]) for feature in FEATURES}}


def psi(expected: Mapping[str, float], actual: Mapping[str, float], epsilon: float = EPSILON) -> float:
    """Population stability index of ``actual`` shares against ``expected`` shares.

    Categories missing from one side count as 0 there; every share is floored at ``epsilon``.
    """
    total = 0.0
    for category in set(expected) | set(actual):
        e = max(float(expected.get(category, 0.0)), epsilon)
        a = max(float(actual.get(category, 0.0)), epsilon)
        total += (a - e) * math.log(a / e)
    return total


@dataclass(frozen=True)
class DriftReport:
    """Drift of recent requests against the training population.

    ``status``: ``ok`` (every PSI at or below the threshold), ``drift`` (some above),
    ``insufficient`` (fewer than ``min_requests`` requests with demographics in the window)
    or ``unknown`` (the served bundle carries no training distribution).
    """

    status: str
    threshold: float
    n_requests: int
    psi: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    @property
    def max_psi(self) -> float | None:
        return max(self.psi.values()) if self.psi else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "max_psi": None if self.max_psi is None else round(self.max_psi, 6),
            "psi": {k: round(v, 6) for k, v in self.psi.items()},
            "threshold": self.threshold,
            "n_requests": self.n_requests,
            "reason": self.reason,
        }


def evaluate_drift(
    training: Mapping[str, Any] | None,
    request_counts: Mapping[str, Mapping[str, int]],
    *,
    threshold: float = 0.25,
    min_requests: int = 200,
) -> DriftReport:
    """Compare request counts per feature with the training shares from a manifest."""
    n = int(sum(request_counts.get("gender", {}).values()))
    if not training or not all(isinstance(training.get(f), Mapping) for f in FEATURES):
        return DriftReport(
            "unknown",
            threshold,
            n,
            reason="the served bundle has no training distribution (trained before drift was recorded)",
        )
    if n < min_requests:
        return DriftReport(
            "insufficient",
            threshold,
            n,
            reason=f"{n} requests with demographics in the window; {min_requests} needed",
        )
    values = {feature: psi(training[feature], shares(request_counts[feature])) for feature in FEATURES}
    worst = max(values, key=lambda k: values[k])
    if values[worst] > threshold:
        return DriftReport(
            "drift", threshold, n, values, reason=f"{worst} PSI {values[worst]:.3f} above {threshold}"
        )
    return DriftReport("ok", threshold, n, values)
