"""PSI and the drift report, checked against values computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from app.monitoring.drift import (
    CATEGORIES,
    EPSILON,
    MANIFEST_KEY,
    count_profiles,
    demographic_distribution,
    evaluate_drift,
    psi,
    shares,
)

pytestmark = pytest.mark.unit


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi({"a": 0.25, "b": 0.75}, {"a": 0.25, "b": 0.75}) == 0.0


def test_psi_by_hand() -> None:
    # (0.8 - 0.5) ln(0.8 / 0.5) + (0.2 - 0.5) ln(0.2 / 0.5) = 0.3 ln 1.6 + 0.3 ln 2.5 = 0.3 ln 4
    assert psi({"a": 0.5, "b": 0.5}, {"a": 0.8, "b": 0.2}) == pytest.approx(0.4158883083, abs=1e-9)
    # symmetric in this case, as the formula is
    assert psi({"a": 0.8, "b": 0.2}, {"a": 0.5, "b": 0.5}) == pytest.approx(0.3 * math.log(4), abs=1e-12)


def test_psi_floors_empty_categories_at_epsilon() -> None:
    # training never saw "b": e_b = 1e-4, so the term is (0.5 - 1e-4) ln(0.5 / 1e-4)
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert psi({"a": 1.0, "b": 0.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(4.604318, abs=1e-6)  # 0.5 ln 2 + 0.4999 ln 5000
    # a category missing from one mapping counts as 0 there
    assert psi({"a": 1.0}, {"a": 0.5, "b": 0.5}) == pytest.approx(expected, rel=1e-12)


def test_count_profiles_buckets_ages_and_skips_incomplete_profiles() -> None:
    counts = count_profiles(
        [
            (17, "F", "student", 2),  # <18
            (18, "M", "student", 1),  # 18-24
            (56, "M", "retired", 3),  # 56+
            (None, None, None, 5),  # a known-user request without demographics
            (30, "X", "student", 4),  # not a gender of the vocabulary
            (30, "M", "astronaut", 4),  # not an occupation of the vocabulary
        ]
    )
    assert counts["age_bucket"]["<18"] == 2
    assert counts["age_bucket"]["18-24"] == 1
    assert counts["age_bucket"]["56+"] == 3
    assert sum(counts["age_bucket"].values()) == 6
    assert counts["gender"] == {"M": 4, "F": 2, "O": 0}
    assert counts["occupation"]["student"] == 3 and counts["occupation"]["retired"] == 3
    assert set(counts["occupation"]) == set(CATEGORIES["occupation"])


def test_demographic_distribution_of_a_users_table() -> None:
    users = pd.DataFrame(
        {
            "user_id": [1, 2, 3, 4],
            "age": [20, 22, 40, 60],
            "gender": ["M", "F", "F", "F"],
            "occupation": ["student", "student", "doctor", "retired"],
        }
    )
    dist = demographic_distribution(users)
    assert dist["n"] == 4
    assert dist["gender"] == {"M": 0.25, "F": 0.75, "O": 0.0}
    assert dist["age_bucket"]["18-24"] == 0.5
    assert dist["age_bucket"]["35-44"] == 0.25
    assert dist["age_bucket"]["56+"] == 0.25
    assert dist["occupation"]["student"] == 0.5
    assert sum(dist["occupation"].values()) == pytest.approx(1.0)


def _training() -> dict:
    return {
        "age_bucket": shares(dict.fromkeys(CATEGORIES["age_bucket"], 1)),
        "gender": {"M": 0.5, "F": 0.5, "O": 0.0},
        "occupation": shares(dict.fromkeys(CATEGORIES["occupation"], 1)),
    }


def test_evaluate_drift_statuses() -> None:
    uniform = count_profiles(
        (age, gender, occupation, 1)
        for age in (10, 20, 30, 40, 47, 52, 60)
        for gender in ("M", "F")
        for occupation in CATEGORIES["occupation"]
    )
    assert evaluate_drift(None, uniform).status == "unknown"
    assert evaluate_drift({"gender": {}}, uniform).status == "unknown"  # incomplete: not guessed
    small = evaluate_drift(_training(), uniform, min_requests=10_000)
    assert small.status == "insufficient" and small.n_requests == 7 * 2 * 21

    ok = evaluate_drift(_training(), uniform, min_requests=10)
    assert ok.status == "ok"
    assert ok.psi["gender"] == pytest.approx(0.0, abs=1e-12)
    assert ok.psi["occupation"] == pytest.approx(0.0, abs=1e-12)

    # everyone asking is a 20-year-old female student
    skewed = count_profiles([(20, "F", "student", 300)])
    report = evaluate_drift(_training(), skewed, threshold=0.25, min_requests=100)
    assert report.status == "drift"
    # gender: (1 - 0.5) ln(1 / 0.5) + (1e-4 - 0.5) ln(1e-4 / 0.5) + O: both floored, 0
    gender = 0.5 * math.log(2) + (EPSILON - 0.5) * math.log(EPSILON / 0.5)
    assert report.psi["gender"] == pytest.approx(gender, rel=1e-9)
    assert report.max_psi == max(report.psi.values())
    assert "above 0.25" in report.reason
    assert report.as_dict()["status"] == "drift"


def test_a_bundle_the_pipeline_writes_carries_its_training_distribution(synthetic_data, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Only `movierec train` wrote ``training_distribution``: every version the pipeline trained,
    gated and promoted reported drift "unknown ... (trained before drift was recorded)" for good,
    and the documented cure, a retrain, was the pipeline run that left it out."""
    import json

    from app.monitoring.drift import MANIFEST_KEY
    from app.pipeline.candidates import train_candidate, write_candidate_bundle

    result = train_candidate(synthetic_data, "most_rated", seeds=[0])
    bundle = write_candidate_bundle(result, synthetic_data, tmp_path, {"code_version": "test"})
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest[MANIFEST_KEY] == demographic_distribution(synthetic_data.users)
    counts = count_profiles([(30, "M", "writer", 300)])
    assert evaluate_drift(manifest[MANIFEST_KEY], counts).status != "unknown"


def test_the_drift_reference_is_the_movielens_users_not_the_feedback_users(synthetic_data) -> None:  # type: ignore[no-untyped-def]
    """The reference was every user of the training set, the synthetic feedback users included:
    one per scored anonymous request, i.e. the request population itself. Traffic of one profile
    scoring its lists made that profile the reference's majority at the next retrain, so the
    drift of that very traffic read as "ok" while the offline metrics (protocol A, the gate:
    MovieLens users only, EVALUATION.md) still described the MovieLens population alone."""
    from app.pipeline.ingest import merge_feedback
    from app.recommender.data import FEEDBACK_USER_BASE
    from app.recommender.training import data_manifest

    raw = synthetic_data
    n_feedback = 3 * len(raw.users)
    movie = int(raw.items["movie_id"].iloc[0])
    feedback_users = pd.DataFrame(
        {
            "user_id": [FEEDBACK_USER_BASE + n for n in range(1, n_feedback + 1)],
            "age": 20,
            "gender": "F",
            "occupation": "student",
            "zip_code": "",
        }
    )
    ratings = pd.DataFrame(
        {"user_id": feedback_users["user_id"], "movie_id": movie, "rating": 5.0, "timestamp": 1}
    )
    trained = merge_feedback(raw, ratings, feedback_users)
    assert len(trained.users) == len(raw.users) + n_feedback  # they do train the models

    reference = data_manifest(trained)[MANIFEST_KEY]
    assert reference == demographic_distribution(raw.users)
    assert reference["n"] == len(raw.users)
    # the traffic those feedback users came from is still drift against the reference
    traffic = count_profiles([(20, "F", "student", 300)])
    assert evaluate_drift(reference, traffic).status == "drift"
