"""The promotion gate: smoke tests on real bundles, the NDCG rule, the choice of the champion."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app.pipeline.candidates import CandidateResult, train_candidate, write_candidate_bundle
from app.pipeline.gate import SmokeReport, best_candidate, choose, judge, smoke_test

pytestmark = pytest.mark.unit

OK = SmokeReport(True, [])


@pytest.fixture(scope="module")
def candidate(synthetic_data: Any) -> CandidateResult:
    """A user-capable candidate, trained the pipeline's way on the synthetic data."""
    return train_candidate(synthetic_data, "most_liked", seeds=[0, 1])


def _bundle(candidate: CandidateResult, data: Any, store: Path, **table_changes: np.ndarray) -> Path:
    tables = replace(candidate.tables, **table_changes) if table_changes else candidate.tables
    return write_candidate_bundle(replace(candidate, tables=tables), data, store, {"code_version": "test"})


def test_a_sound_bundle_passes_every_smoke_test(
    candidate: CandidateResult, synthetic_data: Any, tmp_path: Path
) -> None:
    report = smoke_test(_bundle(candidate, synthetic_data, tmp_path), synthetic_data.ratings)
    assert report.passed, report.reasons
    assert report.details["accuracy"]["score"] == pytest.approx(report.details["accuracy"]["expected"])
    assert 0 <= report.details["lookup_p99_ms"] < 5


def test_a_bundle_that_does_not_load_fails(
    candidate: CandidateResult, synthetic_data: Any, tmp_path: Path
) -> None:
    path = _bundle(candidate, synthetic_data, tmp_path)
    (path / "segment_top.npy").unlink()
    report = smoke_test(path)
    assert not report.passed
    assert report.reasons[0].startswith("does not load")


def test_short_segment_lists_fail(candidate: CandidateResult, synthetic_data: Any, tmp_path: Path) -> None:
    top = candidate.tables.segment_top.copy()
    top[5, 3:] = -1  # one segment answers three movies
    report = smoke_test(_bundle(candidate, synthetic_data, tmp_path, segment_top=top), synthetic_data.ratings)
    assert not report.passed
    assert any("1 segments answer fewer than 10 movies" in r for r in report.reasons), report.reasons


def test_recommending_a_known_user_a_movie_they_rated_fails(
    candidate: CandidateResult, synthetic_data: Any, tmp_path: Path
) -> None:
    tables = candidate.tables
    user = int(tables.user_ids[0])
    rated_movie = int(
        synthetic_data.ratings.loc[synthetic_data.ratings["user_id"] == user, "movie_id"].iloc[0]
    )
    position = int(candidate.model.item_positions([rated_movie])[0])
    user_top = tables.user_top.copy()
    row = [p for p in user_top[0].tolist() if p != position]
    user_top[0] = np.array([position, *row[: user_top.shape[1] - 1]], dtype=user_top.dtype)
    user_scores = tables.user_scores.copy()
    user_scores[0] = np.where(user_top[0] >= 0, 1.0, np.nan)  # a score for every listed movie
    report = smoke_test(
        _bundle(candidate, synthetic_data, tmp_path, user_top=user_top, user_scores=user_scores),
        synthetic_data.ratings,
    )
    assert not report.passed
    assert any("already rated" in r for r in report.reasons), report.reasons


def test_the_latency_bound_is_enforced(
    candidate: CandidateResult, synthetic_data: Any, tmp_path: Path
) -> None:
    report = smoke_test(_bundle(candidate, synthetic_data, tmp_path), latency_bound_ms=1e-9)
    assert not report.passed
    assert any("exceeds the 1e-09 ms bound" in r for r in report.reasons), report.reasons


def test_a_bundle_that_does_not_reproduce_its_accuracy_fails(
    candidate: CandidateResult, synthetic_data: Any, tmp_path: Path
) -> None:
    # A bundle whose recorded expectation is not what its tables serve (written consistently,
    # so it loads; only the accuracy test can tell).
    test_data = {**candidate.test_data, "expected_score": candidate.test_data["expected_score"] + 0.01}
    path = write_candidate_bundle(replace(candidate, test_data=test_data), synthetic_data, tmp_path, {})
    assert json.loads((path / "test_data.json").read_text())["expected_score"] == test_data["expected_score"]
    report = smoke_test(path)
    assert not report.passed
    assert any(r.startswith("accuracy test") for r in report.reasons), report.reasons


def test_without_a_champion_a_sound_candidate_passes() -> None:
    decision = judge("1", "m", 0.30, OK, None)
    assert decision.passed
    assert "no champion yet" in decision.reasons[-1]


@pytest.mark.parametrize(
    ("score", "passes"),
    [(0.50, True), (0.40, True), (0.396, True), (0.395, True), (0.3949, False), (0.20, False)],
)
def test_ndcg_may_not_fall_below_the_champion_beyond_the_tolerance(score: float, passes: bool) -> None:
    decision = judge("7", "m", score, OK, champion_ndcg=0.40, tolerance=0.005, champion_version="3")
    assert decision.passed is passes
    assert ("worse than champion v3" in decision.reasons[-1]) is not passes


CHAMPION_SCORES = {0: 0.43, 1: 0.42, 2: 0.44, 3: 0.41, 4: 0.45, 42: 0.40}  # mean over 0-4: 0.43


def test_the_champion_is_compared_on_the_split_seeds_both_were_measured_on() -> None:
    """A run with other seeds than the champion's compared its mean with the champion's mean over
    other splits: a worse model passed on a lucky seed, and a better one could be refused."""
    # seed 4 alone: the champion scored 0.45 there; 0.44 is worse on that split, though above its 0.43 mean
    lucky = judge("8", "m", 0.44, OK, 0.43, 0.005, "3", scores={4: 0.44}, champion_scores=CHAMPION_SCORES)
    assert (
        not lucky.passed and "on split seeds 4 0.4400 is worse than champion v3 0.4500" in lucky.reasons[-1]
    )
    # seed 42 alone: 0.398 is below the champion's 0-4 mean, but within tolerance of its 0.40 there
    fair = judge("9", "m", 0.398, OK, 0.43, 0.005, "3", scores={42: 0.398}, champion_scores=CHAMPION_SCORES)
    assert fair.passed and "on split seeds 42 0.3980 vs champion v3 0.4000" in fair.reasons[-1]
    assert fair.ndcg_a == 0.398  # the run's own mean still ranks the candidates of the run
    # common seeds 0 and 1 of a run on 0, 1, 7
    mixed = judge("10", "m", 0.5, OK, 0.43, 0.005, "3", scores={0: 0.42, 1: 0.42, 7: 0.66},
                  champion_scores=CHAMPION_SCORES)  # fmt: skip
    assert mixed.passed and "on split seeds 0,1 0.4200 vs champion v3 0.4250" in mixed.reasons[-1]


def test_no_split_seed_in_common_with_the_champion_is_not_comparable() -> None:
    decision = judge("11", "m", 0.9, OK, 0.43, 0.005, "3", scores={7: 0.9}, champion_scores=CHAMPION_SCORES)
    assert not decision.passed
    assert "no split seed in common with champion v3" in decision.reasons[-1]
    assert "its seeds 0,1,2,3,4,42; this run's 7" in decision.reasons[-1]


def test_a_champion_without_per_seed_scores_is_compared_by_its_mean() -> None:
    decision = judge("12", "m", 0.426, OK, 0.43, 0.005, "3", scores={0: 0.426}, champion_scores=None)
    assert decision.passed and "0.4260 vs champion v3 0.4300" in decision.reasons[-1]


def test_smoke_failure_rejects_even_a_better_model() -> None:
    decision = judge("2", "m", 0.9, SmokeReport(False, ["lookup p99 9 ms exceeds the 5 ms bound"]), 0.4)
    assert not decision.passed
    assert decision.decision == "rejected"
    assert decision.reasons[0] == "smoke: lookup p99 9 ms exceeds the 5 ms bound"


def test_nan_ndcg_is_rejected() -> None:
    assert not judge("2", "m", float("nan"), OK, None).passed


def test_choose_promotes_the_best_passing_candidate_only() -> None:
    decisions = choose(
        [
            judge("1", "weak", 0.418, OK, 0.42, 0.005),
            judge("2", "best-but-broken", 0.60, SmokeReport(False, ["x"]), 0.42, 0.005),
            judge("3", "best", 0.45, OK, 0.42, 0.005),
            judge("4", "worse", 0.30, OK, 0.42, 0.005),
        ]
    )
    assert [d.decision for d in decisions] == ["passed", "rejected", "promoted", "rejected"]
    assert "v3 (best) scored higher" in decisions[0].reasons[-1]


def test_choose_promotes_nothing_when_nothing_passes() -> None:
    decisions = choose([judge("1", "worse", 0.30, OK, 0.42, 0.005)])
    assert [d.decision for d in decisions] == ["rejected"]


def test_protocol_a_ties_go_to_the_better_known_user_ranker() -> None:
    decisions = choose(
        [
            judge("1", "kernel", 0.431, OK, None),  # cold start only: no protocol B
            judge("2", "knn", 0.431, OK, None, ndcg_b=0.31),
            judge("3", "ease", 0.431, OK, None, ndcg_b=0.37),
            judge("4", "ease-twin", 0.431, OK, None, ndcg_b=0.37),
        ]
    )
    assert [d.decision for d in decisions] == ["passed", "passed", "promoted", "passed"]


def test_a_candidate_tied_on_protocol_a_is_not_told_the_promoted_one_scored_higher() -> None:
    """A passing candidate not promoted read 'not promoted: v3 (ease) scored higher, 0.4310' when
    it scored 0.4310 too (every real run: demographic_kernel and item_knn tie with ease on A): the
    reason now says what settled it, protocol B or the configured order."""
    decisions = choose(
        [
            judge("1", "kernel", 0.431, OK, None),  # cold start only: no protocol B
            judge("2", "knn", 0.431, OK, None, ndcg_b=0.31),
            judge("3", "ease", 0.431, OK, None, ndcg_b=0.37),
            judge("4", "ease-twin", 0.431, OK, None, ndcg_b=0.37),
            judge("5", "weaker", 0.43096, OK, None, ndcg_b=0.40),
        ]
    )
    reasons = {d.candidate: d.reasons[-1] for d in decisions}
    assert not any("scored higher" in reasons[name] for name in ("kernel", "knn", "ease-twin"))
    assert reasons["kernel"] == (
        "not promoted: tied with v3 (ease) on protocol-A NDCG@10 0.4310; v3 ranks known users better "
        "(protocol-B NDCG@10 0.3700; this candidate has no protocol B)"
    )
    assert reasons["knn"] == (
        "not promoted: tied with v3 (ease) on protocol-A NDCG@10 0.4310; v3 ranks known users better "
        "(protocol-B NDCG@10 0.3700 vs 0.3100)"
    )
    assert reasons["ease-twin"] == (
        "not promoted: tied with v3 (ease) on protocol-A NDCG@10 0.4310 and protocol B 0.3700; "
        "v3 is listed first"
    )
    # a lower score that shows the same at 4 decimals is given with the digits that tell them apart
    assert (
        reasons["weaker"]
        == "not promoted: v3 (ease) scored higher on protocol-A NDCG@10, 0.431000 vs 0.430960"
    )


def test_a_candidate_is_ranked_by_its_mean_over_every_split_seed_of_its_run(synthetic_data: Any) -> None:
    """A run on split seeds ``0,42`` (``pipeline run --seeds 0,42``) ranked its candidates by seed 0
    alone: the report's summary, EVALUATION.md's convention for ``movierec evaluate`` (the mean over
    the standard seeds 0-4 that ran, seed 42 reported beside it), left seed 42 out of the figure
    ``choose`` ranks by and the registry stores, and the run's table said ``± 0.0000``."""
    result = train_candidate(synthetic_data, "segment_most_liked", seeds=[0, 42])
    by_seed = result.ndcg_a_by_seed
    assert set(by_seed) == {0, 42} and by_seed[0] != by_seed[42]
    assert result.ndcg_a == pytest.approx(np.mean(list(by_seed.values())))
    assert result.summary_a["ndcg@10_sd"] == pytest.approx(np.std(list(by_seed.values()), ddof=1))
    assert result.report_a["summary_seeds"] == result.report_b["summary_seeds"] == [0, 42]


def test_the_challenger_is_the_runs_best_candidate_by_the_gates_own_ranking() -> None:
    """The flow named ``challenger`` the first candidate with the best protocol-A score: with
    candidates tied on A (the hybrids share a cold-start scorer), a run listing
    ``demographic_kernel,ease`` named v1 (demographic_kernel) challenger while the gate promoted v2
    (ease, better on protocol B), and a candidate whose score is not a number, listed first,
    stayed the best of any comparison."""
    decisions = choose(
        [
            judge("1", "kernel", 0.431, OK, None),  # cold start only: no protocol B
            judge("2", "ease", 0.431, OK, None, ndcg_b=0.37),
        ]
    )
    best = best_candidate(decisions)
    assert best is not None and best.version == "2" and best.promoted
    # passed or not: the best candidate of the run, and never one without a score
    rejected = [
        judge("3", "broken", float("nan"), OK, None),
        judge("4", "slow", 0.45, SmokeReport(False, ["lookup p99 9 ms exceeds the 5 ms bound"]), None),
        judge("5", "weak", 0.30, OK, 0.42, 0.005, "1"),
    ]
    best = best_candidate(rejected)
    assert best is not None and best.version == "4" and not best.passed
    assert best_candidate([]) is None


@pytest.mark.parametrize(
    ("tag", "scores"),
    [('{"0": 0.43, "42": 0.4}', {0: 0.43, 42: 0.4}), (None, None), ("", None), ("not json", None),
     ('["0"]', None), ('{"x": 1}', None), ("{}", None)],
)  # fmt: skip
def test_a_versions_per_seed_scores_are_read_from_its_tag(tag: str | None, scores: Any) -> None:
    from app.registry.mlflow_registry import VersionInfo

    tags = {} if tag is None else {"ndcg_a_by_seed": tag}
    info = VersionInfo("3", "ease", "b", 0.43, None, "", tags, ())
    assert info.ndcg_a_by_seed == scores


def test_a_champion_nan_on_one_seed_does_not_block_every_later_candidate() -> None:
    """A champion whose NaN is on a seed left out of its mean (42, outside 0-4) passed the gate
    and is finite by its mean; compared per seed, every run that includes 42 is rejected, with a
    reason that says 'not worse'."""
    champion = {0: 0.43, 1: 0.42, 2: 0.44, 3: 0.41, 4: 0.45, 42: float("nan")}
    scores = {0: 0.44, 1: 0.43, 2: 0.45, 3: 0.42, 4: 0.46, 42: 0.41}
    decision = judge("8", "m", 0.44, OK, 0.43, 0.005, "3", scores=scores, champion_scores=champion)
    assert decision.passed, decision.reasons
    assert "on split seeds 0,1,2,3,4 " in decision.reasons[-1]


def test_reasons_never_say_not_worse_for_a_rejected_candidate() -> None:
    decision = judge("8", "m", 0.44, OK, 0.43, 0.005, "3", scores={0: 0.44},
                      champion_scores={0: float("nan")})  # fmt: skip
    assert decision.passed or "not worse" not in decision.reasons[-1]


def test_configured_seeds_gain_the_champions_only_when_they_share_none() -> None:
    from app.pipeline.gate import seeds_comparable_with

    assert seeds_comparable_with([0, 1], None) == [0, 1]
    assert seeds_comparable_with([0, 1], {1: 0.4, 42: 0.4}) == [0, 1]  # one in common is enough
    assert seeds_comparable_with([0, 1], {42: 0.4, 7: 0.4}) == [0, 1, 7, 42]


# --- the champion measured on this run's data ------------------------------------------------


CODE = "c0de"  # the code version of the run under test


def _champion(candidate: str = "most_liked", stored: float = 0.99, code: str = CODE) -> Any:
    """A champion registered on older data: its stored scores are what it measured back then."""
    from app.registry.mlflow_registry import VersionInfo

    tags = {"ndcg_a_by_seed": json.dumps({"0": stored, "1": stored}), "code_version": code}
    return VersionInfo("3", candidate, "b", stored, "run-3", "", tags, ())


def _recorded(name: str) -> dict[str, str]:
    """The hyper-parameters the registry records for a run of ``name`` in this code version."""
    from app.recommender.models import make_model
    from app.registry.mlflow_registry import flat_params

    return flat_params(make_model(name).params())


def _protocol_a(data: Any, name: str, seeds: list[int]) -> dict[int, float]:
    from app.recommender.evaluation import evaluate

    per_seed = evaluate(data, [name], "A", seeds)["models"][name]["per_seed"]
    return {int(seed): metrics["ndcg@10"] for seed, metrics in per_seed.items()}


def test_the_champions_recipe_is_re_evaluated_on_this_runs_data_and_splits(synthetic_data: Any) -> None:
    """The champion's stored score was measured on the data it was trained on: compared with it, a
    candidate better than the champion's own recipe on today's data was refused (data drift alone)."""
    from app.pipeline.gate import SAME_DATA, champion_baseline

    mine = _protocol_a(synthetic_data, "segment_most_liked", [0, 1])
    stale = judge("4", "segment_most_liked", float(np.mean(list(mine.values()))), OK, 0.99, 0.005, "3",
                  scores=mine, champion_scores=_champion().ndcg_a_by_seed)  # fmt: skip
    assert not stale.passed  # the defect: 0.99 was measured on other data

    baseline = champion_baseline(_champion(), _recorded("most_liked"), synthetic_data, [0, 1], {}, CODE)
    assert baseline.comparison == SAME_DATA
    assert baseline.scores == pytest.approx(_protocol_a(synthetic_data, "most_liked", [0, 1]))
    assert baseline.ndcg_a == pytest.approx(np.mean(list(baseline.scores.values())))
    assert "re-evaluated on this run's data" in baseline.note

    decision = judge("4", "segment_most_liked", float(np.mean(list(mine.values()))), OK, baseline.ndcg_a,
                     0.005, baseline.version, scores=mine, champion_scores=baseline.scores,
                     comparison=baseline.comparison, comparison_note=baseline.note)  # fmt: skip
    assert decision.passed, decision.reasons
    assert decision.comparison == SAME_DATA and decision.as_dict()["comparison"] == SAME_DATA
    assert baseline.note in decision.reasons
    assert "vs champion v3" in decision.reasons[-1]


def test_a_champion_recipe_evaluated_in_this_run_is_reused_not_evaluated_again(
    synthetic_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.pipeline.gate as gate

    def evaluate(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the run already measured the champion's recipe")

    monkeypatch.setattr(gate, "evaluate", evaluate)
    run = {"most_liked": {0: 0.31, 1: 0.33}, "most_rated": {0: 0.30, 1: 0.35}}
    baseline = gate.champion_baseline(_champion(), _recorded("most_liked"), synthetic_data, [0, 1], run, CODE)
    assert baseline.comparison == gate.SAME_DATA
    assert baseline.scores == {0: 0.31, 1: 0.33} and baseline.ndcg_a == pytest.approx(0.32)
    assert "this run's most_liked" in baseline.note


@pytest.mark.parametrize(
    ("candidate", "recorded", "code", "why"),
    [
        ("retired_model", {}, CODE, "is not in this code version"),
        ("most_liked", {"liked_only": "False"}, CODE, "differ from this code version's"),
        ("most_liked", None, CODE, "are not recorded"),
        # the same name and hyper-parameters under new code are the new code's recipe: measured
        # so, the champion would be the run's own most_liked, and a worse change would pass
        ("most_liked", "current", "01d0", "trained by code version 01d0, this run's is c0de"),
        ("most_liked", "current", "", "trained by code version (not recorded)"),
    ],
)
def test_a_champion_whose_recipe_cannot_be_reproduced_is_compared_by_its_stored_score(
    synthetic_data: Any, candidate: str, recorded: dict[str, str] | str | None, code: str, why: str
) -> None:
    from app.pipeline.gate import STORED, champion_baseline

    champion = _champion(candidate, code=code)
    if recorded == "current":
        recorded = _recorded(candidate)
    assert not isinstance(recorded, str)
    run = {candidate: {0: 0.3, 1: 0.3}}
    baseline = champion_baseline(champion, recorded, synthetic_data, [0, 1], run, CODE)
    assert baseline.comparison == STORED
    assert baseline.scores == champion.ndcg_a_by_seed and baseline.ndcg_a == champion.ndcg_a
    assert why in baseline.note and "stored score" in baseline.note
    decision = judge("4", "m", 0.5, OK, baseline.ndcg_a, 0.005, baseline.version, scores={0: 0.5, 1: 0.5},
                     champion_scores=baseline.scores, comparison=baseline.comparison,
                     comparison_note=baseline.note)  # fmt: skip
    assert not decision.passed and decision.comparison == STORED and baseline.note in decision.reasons


def test_without_a_champion_no_comparison_is_recorded() -> None:
    decision = judge("1", "m", 0.30, OK, None)
    assert decision.comparison is None and decision.as_dict()["comparison"] is None


def _unscored_champion(by_seed: dict[str, float] | None) -> Any:
    """A champion whose registry tags carry no ``ndcg_a`` (registered by hand, or by an older
    movierec), trained by other code, so only its stored figures can be compared with."""
    from app.registry.mlflow_registry import VersionInfo

    tags = {"code_version": "01d0", **({"ndcg_a_by_seed": json.dumps(by_seed)} if by_seed else {})}
    return VersionInfo("3", "most_liked", "b", None, "run-3", "", tags, ())


def _judged_against(champion: Any, data: Any, score: float) -> Any:
    from app.pipeline.gate import champion_baseline

    baseline = champion_baseline(champion, _recorded("most_liked"), data, [0, 1], {}, CODE)
    return judge("4", "m", score, OK, baseline.ndcg_a, 0.005, baseline.version, scores={0: score, 1: score},
                 champion_scores=baseline.scores, comparison=baseline.comparison,
                 comparison_note=baseline.note)  # fmt: skip


def test_a_champion_without_a_stored_score_is_not_treated_as_no_champion(synthetic_data: Any) -> None:
    """A champion whose stored NDCG was missing reached judge as champion_ndcg None, i.e. "no
    champion yet": any candidate that passed its smoke tests replaced it, however much worse."""
    decision = _judged_against(_unscored_champion(None), synthetic_data, 0.01)
    assert not decision.passed
    assert not any("no champion yet" in reason for reason in decision.reasons), decision.reasons
    assert "champion v3 has no protocol-A NDCG@10 to compare with" in decision.reasons[-1]


def test_a_champion_with_only_per_seed_scores_is_compared_by_them(synthetic_data: Any) -> None:
    champion = _unscored_champion({"0": 0.40, "1": 0.42})
    worse = _judged_against(champion, synthetic_data, 0.30)
    assert not worse.passed and "worse than champion v3 0.4100" in worse.reasons[-1]
    better = _judged_against(champion, synthetic_data, 0.45)
    assert better.passed and "vs champion v3 0.4100" in better.reasons[-1]


@pytest.mark.parametrize(("tag", "score"), [("0.431200", 0.4312), ("n/a", None), ("", None), (None, None)])
def test_a_versions_stored_score_is_read_from_its_tag(tag: str | None, score: float | None) -> None:
    """float() of a tag that is not a number (edited by hand in the MLflow UI) raised ValueError
    while listing versions: the champion lookup, and so every pipeline run and the gate, failed.
    Unreadable, it is not recorded (the gate then refuses to compare with nothing)."""
    from types import SimpleNamespace

    from app.registry.mlflow_registry import VersionInfo

    tags = {"candidate": "ease"} if tag is None else {"candidate": "ease", "ndcg_a": tag}
    version = SimpleNamespace(version="3", tags=tags, run_id="run-3", source="", aliases=[])
    assert VersionInfo.of(version).ndcg_a == score  # type: ignore[arg-type]


def test_a_bundle_whose_rating_model_the_service_refuses_fails(
    candidate: CandidateResult, synthetic_data: Any, tmp_path: Path
) -> None:
    """The smoke test loaded the bundle without its rating model, which the service loads and
    checks before it serves a bundle (attach_rating_model): a version the service refuses passed
    the gate and was exported as `latest`; the reload kept the old model while the registry named
    the new one champion, and the next restart found nothing it could serve."""
    from app.pipeline.candidates import fit_rating_model

    rating_model = fit_rating_model(synthetic_data)
    assert rating_model is not None
    sound = write_candidate_bundle(
        candidate, synthetic_data, tmp_path / "sound", {"code_version": "t"}, rating_model
    )
    assert smoke_test(sound, synthetic_data.ratings).passed
    rating_model.item_ids = np.array([10**9])  # fitted on a movie the bundle's catalogue lacks
    broken = write_candidate_bundle(
        candidate, synthetic_data, tmp_path / "broken", {"code_version": "t"}, rating_model
    )
    report = smoke_test(broken, synthetic_data.ratings)
    assert not report.passed
    assert report.reasons[0].startswith("does not load:") and "rating_model.pkl" in report.reasons[0]


def test_a_known_user_who_rated_every_movie_does_not_fail_the_smoke_test(
    synthetic_data: Any, tmp_path: Path
) -> None:
    """A known user whose feedback scored every movie left in the catalogue has nothing left to be
    recommended: their empty list is right, not a broken bundle. It was counted as "known users
    get no recommendation", so every candidate with personal lists was rejected, and none could be
    promoted again while that user was among the sampled ones (the first user always is)."""
    from app.pipeline.ingest import FEEDBACK_COLUMNS, feedback_to_ratings, merge_feedback

    user = int(synthetic_data.users["user_id"].min())
    movies = synthetic_data.items["movie_id"].tolist()
    stamp = pd.Timestamp("2026-01-02", tz="UTC")
    scores = pd.DataFrame(
        [(n, "r1", m, 4.0, stamp, stamp, user, None, None, None) for n, m in enumerate(movies, 1)],
        columns=FEEDBACK_COLUMNS,
    )
    ratings, users, _ = feedback_to_ratings(
        scores, synthetic_data.users["user_id"].to_numpy(), np.array(movies)
    )
    data = merge_feedback(synthetic_data, ratings, users)
    result = train_candidate(data, "most_liked", seeds=[0])
    row = result.tables.user_ids.tolist().index(user)
    assert (result.tables.user_top[row] < 0).all()  # nothing unrated is left for them

    path = write_candidate_bundle(result, data, tmp_path, {})
    report = smoke_test(path, data.ratings)
    assert report.passed, report.reasons

    # an empty list while a movie is left unrated (a fault in the tables) still fails
    one_unrated = data.ratings[(data.ratings["user_id"] != user) | (data.ratings["movie_id"] != movies[0])]
    report = smoke_test(path, one_unrated)
    assert not report.passed
    assert "1 known users get no recommendation" in report.reasons
