"""Quality of the candidate models on the real ml-100k, under the exact splits of EVALUATION.md.

Run: ``.venv/bin/python -m pytest -m model tests/model/test_candidates_quality.py -s`` (prints
the tables quoted in docs/models.md). Bars:

* protocol A (cold start), NDCG@10 mean over split seeds 0-4: the best cold-start candidate
  must beat global most-liked *measured in the same run* by a clear margin and reach the
  demographic-kernel reference of EVALUATION.md (.427). Issue 4 asks for .44; our best
  measures ~.431 and docs/models.md shows why segment-level scoring cannot get much further
  on this data (even 25 % more training users do not help). That bar is recorded as not met
  rather than weakened silently: see ``ISSUE_BAR_A``.
* protocol B (known users), NDCG@10 at least .38 on seed 42 and as a mean over seeds 0-4.
* all 441 segments precomputed in seconds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from app.recommender.evaluation import REFERENCE_SEED, STANDARD_SEEDS, evaluate, format_table
from app.recommender.models import make_model
from app.recommender.segments import all_segments

pytestmark = pytest.mark.model

SEEDS = (*STANDARD_SEEDS, REFERENCE_SEED)
COLD_START = ("most_liked", "segment_most_liked", "demographic_kernel", "lgbm_ranker")
KNOWN_USERS = ("most_liked", "item_knn", "ease")
KERNEL_REFERENCE_A = 0.427  # EVALUATION.md: the tuned demographic-similarity kernel
MARGIN_OVER_POPULARITY_A = 0.01  # "clearly beat" global most-liked, the best popularity row (docs/models.md)
ISSUE_BAR_A = 0.44  # issue 4; not reached (docs/models.md)
BAR_B = 0.38


def _ndcg(report: dict[str, Any], name: str) -> tuple[float, float, float]:
    entry = report["models"][name]
    return (
        entry["summary"]["ndcg@10_mean"],
        entry["summary"]["ndcg@10_sd"],
        entry["per_seed"][str(REFERENCE_SEED)]["ndcg@10"],
    )


@pytest.fixture(scope="module")
def report_a(real_data) -> dict[str, Any]:
    report = evaluate(real_data, COLD_START, "A", SEEDS)
    print("\n" + format_table(report))
    return report


@pytest.fixture(scope="module")
def report_b(real_data) -> dict[str, Any]:
    report = evaluate(real_data, KNOWN_USERS, "B", SEEDS)
    print("\n" + format_table(report))
    return report


def test_protocol_a_best_cold_start_candidate(report_a) -> None:
    best = max(COLD_START, key=lambda name: _ndcg(report_a, name)[0])
    mean, sd, seed42 = _ndcg(report_a, best)
    baseline = _ndcg(report_a, "most_liked")[0]
    print(f"best cold start: {best} {mean:.4f} ± {sd:.4f} (seed 42: {seed42:.4f}); issue bar {ISSUE_BAR_A}")
    assert best in ("demographic_kernel", "lgbm_ranker")
    assert mean >= KERNEL_REFERENCE_A
    assert mean >= baseline + MARGIN_OVER_POPULARITY_A
    # The learned ranker must at least beat global popularity on every standard split.
    for seed in STANDARD_SEEDS:
        ranker = report_a["models"]["lgbm_ranker"]["per_seed"][str(seed)]["ndcg@10"]
        most_liked = report_a["models"]["most_liked"]["per_seed"][str(seed)]["ndcg@10"]
        assert ranker > most_liked, seed


def test_protocol_b_best_known_user_candidate(report_b) -> None:
    mean, sd, seed42 = _ndcg(report_b, "ease")
    print(f"ease: {mean:.4f} ± {sd:.4f} (seed 42: {seed42:.4f}); bar {BAR_B}")
    assert seed42 >= BAR_B
    assert mean >= BAR_B
    assert mean > _ndcg(report_b, "item_knn")[0] > _ndcg(report_b, "most_liked")[0]


@pytest.mark.parametrize("name", ["ease", "demographic_kernel", "lgbm_ranker"])
def test_fit_and_all_segments_precomputed_in_seconds(real_data, name) -> None:
    model = make_model(name)
    # CPU seconds of this process (every thread), not the wall clock: the work the model does, the
    # same on a CI machine shared with other jobs, where the wall clock of one fit varied 2x
    started = time.process_time()
    model.fit(real_data.ratings, real_data.users, real_data.items)
    fit_seconds = time.process_time() - started
    started = time.process_time()
    scores = model.score_segments(all_segments())
    score_seconds = time.process_time() - started
    print(f"{name}: fit {fit_seconds:.2f} CPU s, 441 segments {score_seconds:.3f} CPU s")
    assert scores.shape == (441, len(real_data.items)) and np.isfinite(scores).all()
    assert score_seconds < 5.0
    assert fit_seconds < 20.0
