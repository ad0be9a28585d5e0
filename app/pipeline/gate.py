"""The promotion gate (seed 002): smoke tests, then "not worse than the champion".

A candidate version may become ``champion`` only when

1. its bundle passes the smoke tests: it loads as the service loads it (its rating model
   included), answers every cold-start segment with a full list, never repeats a movie in a
   list, never recommends a known user a movie they rated, answers a lookup within the
   latency bound, and reproduces its own accuracy test (``test_data.json``) from disk; and
2. its protocol-A NDCG@10 is not worse than the current champion's by more than a
   tolerance, both measured on the same data and splits: the champion's recipe (its candidate
   name and recorded hyper-parameters) is re-evaluated on this run's data and split seeds
   (:func:`champion_baseline`), since its stored score was measured on the data it was trained
   on and data drift alone would move it. Its fitted model cannot be re-scored instead: it was
   fitted on every user, the test users of each split included. When the recipe cannot be
   reproduced (trained by other code, a candidate this code no longer has, other
   hyper-parameters), the stored score is
   the fallback, compared as the mean over the split seeds both were measured on (a run with
   other seeds than the champion's is compared on the seeds in common, and refused when there
   are none: a mean over other splits is not the same measure); a champion registered before
   per-seed scores were recorded is compared by its mean. The tolerance lets a retrain
   replace a champion whose score moved within noise, while a genuinely worse model is refused.

Since the champion is measured on the run's own data, a run on much less data (the feedback
database emptied or replaced, the raw files swapped for a subset) would find its candidates "not
worse" than the champion's recipe on that fraction and replace a model trained on more: so,
with a champion, a run whose ratings, users or movies fall below ``MOVIEREC_GATE_MIN_DATA_FRACTION``
of the champion's (its tags ``n_ratings``, ``n_users``, ``n_movies``, else its bundle manifest's
``n_ratings``) passes none of its candidates (:func:`data_size_check`); the setting at 0, or
``movierec pipeline run --allow-less-data`` for one run, turns the check off.

Among the candidates of one run that pass, the best by that metric is promoted. Every
decision, its reasons and which comparison it used are stored with the version in the registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from app.recommender.accuracy import run_accuracy_test
from app.recommender.bundle import BundleError, LoadedBundle, Recommendation, attach_rating_model, load_bundle
from app.recommender.data import MovieLens
from app.recommender.evaluation import K, evaluate
from app.recommender.features import rated_movies
from app.recommender.models import Recommender, make_model
from app.recommender.segments import all_segments
from app.registry.mlflow_registry import flat_params

if TYPE_CHECKING:
    from app.registry.mlflow_registry import VersionInfo

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.005
DEFAULT_LATENCY_MS = 5.0
ACCURACY_TOLERANCE = 1e-6
DEFAULT_MIN_DATA_FRACTION = 0.9
DATA_SIZE_KEYS = ("n_ratings", "n_users", "n_movies")  # a version's tags; the ingest's stats
DATA_SIZE_OFF = "MOVIEREC_GATE_MIN_DATA_FRACTION=0, or movierec pipeline run --allow-less-data"
SAME_DATA = "same_data"  # the champion's recipe measured on this run's data and splits
STORED = "stored"  # the champion's score stored when it was trained, on the data of that time


@dataclass(frozen=True)
class SmokeReport:
    passed: bool
    reasons: list[str]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    version: str
    candidate: str
    ndcg_a: float
    passed: bool
    reasons: list[str]
    promoted: bool = False
    ndcg_b: float | None = None  # tie-break: hybrids share a cold-start scorer and tie on protocol A
    comparison: str | None = None  # SAME_DATA or STORED; None without a champion

    @property
    def decision(self) -> str:
        if self.promoted:
            return "promoted"
        return "passed" if self.passed else "rejected"

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "candidate": self.candidate, "ndcg_a": self.ndcg_a,
            "decision": self.decision, "reasons": self.reasons, "comparison": self.comparison,
        }  # fmt: skip


@dataclass(frozen=True)
class ChampionBaseline:
    """The champion's protocol-A NDCG@10 a run's candidates are compared with, and its origin."""

    version: str
    ndcg_a: float | None  # mean over ``scores`` (SAME_DATA) or the stored mean (STORED)
    scores: dict[int, float] | None  # per split seed
    comparison: str  # SAME_DATA or STORED
    note: str  # how the figures were obtained, for every decision's reasons


@dataclass(frozen=True)
class DataSizeCheck:
    """How a run's training data compares in size with the champion's, and whether that refuses it."""

    refused: bool
    note: str  # recorded among every decision's reasons


def data_size(recorded: Mapping[str, Any]) -> dict[str, int]:
    """The training-data size among ``recorded`` (a version's tags, a bundle's manifest, the
    ingest's stats): those of :data:`DATA_SIZE_KEYS` that are whole numbers, by key."""
    size = {}
    for key in DATA_SIZE_KEYS:
        try:
            value = int(str(recorded[key]))
        except (KeyError, ValueError):  # not recorded (an older version), or edited by hand
            continue
        if value >= 0:
            size[key] = value
    return size


def _figures(size: Mapping[str, int], keys: Sequence[str]) -> str:
    return ", ".join(f"{size[key]} {key.removeprefix('n_')}" for key in keys)


def data_size_check(
    champion_version: str,
    champion_size: Mapping[str, int] | None,
    size: Mapping[str, int],
    min_fraction: float = DEFAULT_MIN_DATA_FRACTION,
    source: str = "",
) -> DataSizeCheck:
    """Refuse a run whose training data is much smaller than the champion's.

    Each of the ratings, users and movies recorded for both (``champion_size``, ``size``) must
    be at least ``min_fraction`` of the champion's; ``min_fraction`` 0 turns the check off (the
    figures are still noted). A champion whose size is not recorded is not compared. ``source``
    says where the champion's figures come from when not from its tags.
    """
    champion_size = champion_size or {}
    keys = [key for key in DATA_SIZE_KEYS if key in size and champion_size.get(key)]
    if not keys:
        return DataSizeCheck(
            False, f"champion v{champion_version}'s training-data size is not recorded: not compared"
        )
    figures = (
        f"training data {_figures(size, keys)} vs champion v{champion_version}'s "
        f"{_figures(champion_size, keys)}{source}"
    )
    if min_fraction <= 0:
        return DataSizeCheck(False, f"{figures}: the data-size check is off ({DATA_SIZE_OFF})")
    short = [key for key in keys if size[key] < min_fraction * champion_size[key]]
    if not short:
        return DataSizeCheck(False, f"{figures}: not below {min_fraction:g} of the champion's")
    return DataSizeCheck(
        True,
        f"less training data than champion v{champion_version}: {figures}, its "
        f"{' and '.join(key.removeprefix('n_') for key in short)} below {min_fraction:g} of the champion's "
        "(feedback emptied or replaced, raw data swapped for a subset?): a model trained on less would "
        f"replace one trained on more; if that is meant, turn the check off for the run ({DATA_SIZE_OFF})",
    )


def smoke_test(
    bundle_path: Path | str,
    ratings: pd.DataFrame | None = None,
    latency_bound_ms: float = DEFAULT_LATENCY_MS,
    k: int = K,
    max_users: int = 500,
) -> SmokeReport:
    """Check a bundle on disk the way the service will use it; every failure is a reason."""
    reasons: list[str] = []
    details: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        bundle = load_bundle(bundle_path)
        # the service refuses a bundle whose rating model is broken: one that passed here was
        # exported as `latest`, the reload kept the old model, and a restart served nothing
        attach_rating_model(bundle)
    except BundleError as exc:
        return SmokeReport(False, [f"does not load: {exc}"])
    details["load_seconds"] = round(time.perf_counter() - started, 4)

    expected = min(k, len(bundle.catalogue))
    short, repeated = [], []
    for segment in all_segments():
        recs = bundle.recommend_segment(segment, k)
        if len(recs) < expected:
            short.append(segment.key)
        full = bundle.recommend_segment(segment, bundle.tables.segment_top.shape[1])
        if len({r.movie_id for r in full}) != len(full):
            repeated.append(segment.key)
    if short:
        reasons.append(f"{len(short)} segments answer fewer than {expected} movies (e.g. {short[0]})")
    if repeated:
        reasons.append(f"{len(repeated)} segment lists repeat a movie (e.g. {repeated[0]})")

    users = _sample_users(bundle, max_users)
    reasons.extend(_check_users(bundle, users, ratings, k))

    p99_ms = lookup_p99_ms(bundle, users, k)
    details["lookup_p99_ms"] = round(p99_ms, 4)
    if p99_ms > latency_bound_ms:
        reasons.append(f"lookup p99 {p99_ms:.3f} ms exceeds the {latency_bound_ms} ms bound")

    test_data = Path(bundle.path) / "test_data.json"
    if test_data.is_file():
        try:
            accuracy = run_accuracy_test(bundle.path, test_data, ACCURACY_TOLERANCE)
        except (BundleError, ValueError) as exc:
            reasons.append(f"accuracy test could not run: {exc}")
        else:
            details["accuracy"] = {
                "score": accuracy.score,
                "expected": accuracy.expected,
                "floor": accuracy.floor,
            }
            if accuracy.short_lists:  # not a score below the expected one: passed is False for it
                reasons.append(f"accuracy test: {accuracy.short_lists}")
            elif accuracy.below_floor:
                reasons.append(
                    f"accuracy test: {accuracy.score:.6f} < floor {accuracy.floor:.6f} "
                    "(global most-rated on the same users)"
                )
            elif not accuracy.passed:
                reasons.append(f"accuracy test: {accuracy.score:.6f} < expected {accuracy.expected:.6f}")
    else:
        reasons.append("bundle has no test_data.json")
    return SmokeReport(not reasons, reasons, details)


def lookup_p99_ms(bundle: LoadedBundle, users: list[int], k: int = K, repeats: int = 3) -> float:
    """99th percentile over lookups (every segment, sampled users) of each one's best-of-``repeats`` time.

    Taking each lookup's minimum over a few repeats (as ``timeit`` does) removes the noise of a
    busy machine preempting the process, and keeps what the bundle itself costs per request.
    """
    timings = []
    lookups: list[tuple[Callable[[Any, int], list[Recommendation]], Any]] = [
        (bundle.recommend_segment, segment) for segment in all_segments()
    ]
    lookups += [(bundle.recommend_user, user) for user in users]
    for lookup, key in lookups:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            lookup(key, k)
            best = min(best, time.perf_counter() - started)
        timings.append(best)
    return float(np.percentile(timings, 99) * 1000.0)


def _sample_users(bundle: LoadedBundle, max_users: int) -> list[int]:
    user_ids = bundle.tables.user_ids
    if not len(user_ids):
        return []
    return [
        int(u) for u in user_ids[np.linspace(0, len(user_ids) - 1, min(max_users, len(user_ids))).astype(int)]
    ]


def _check_users(bundle: LoadedBundle, users: list[int], ratings: pd.DataFrame | None, k: int) -> list[str]:
    reasons: list[str] = []
    if not users:
        return reasons
    rated = rated_movies(ratings) if ratings is not None else {}
    catalogue = set(bundle.movie_ids.tolist())
    repeated, seen_rated, empty = 0, 0, 0
    for user_id in users:
        recs = bundle.recommend_user(user_id, k)
        movies = [r.movie_id for r in recs]
        # a user who rated every movie (their feedback scored the rest) has nothing left to get
        if not movies and (ratings is None or not catalogue.issubset(rated.get(user_id, ()))):
            empty += 1
        if len(set(movies)) != len(movies):
            repeated += 1
        if set(rated.get(user_id, ())) & set(movies):
            seen_rated += 1
    if empty:
        reasons.append(f"{empty} known users get no recommendation")
    if repeated:
        reasons.append(f"{repeated} known users' lists repeat a movie")
    if seen_rated:
        reasons.append(f"{seen_rated} known users are recommended a movie they already rated")
    return reasons


def recipe_problem(
    champion: VersionInfo,
    recorded_params: Mapping[str, str] | None,
    code: str,
    factory: Callable[[str], Recommender] = make_model,
) -> str | None:
    """Why this code (code version ``code``) cannot rebuild ``champion``'s recipe: its candidate
    with ``recorded_params`` (as :func:`flat_params` writes them, None when not recorded); None
    when it can.

    Only the code that trained the champion can: the same name and hyper-parameters under other
    code are the new code's recipe. Measured under the new code, the champion would be the
    run's own candidate of that name, and a change that makes it worse would pass the gate
    against itself.
    """
    candidate = champion.candidate
    trained_by = champion.tags.get("code_version")
    if trained_by != code:
        return f"it was trained by code version {trained_by or '(not recorded)'}, this run's is {code}"
    try:
        current = flat_params(factory(candidate).params())
    except ValueError:
        return f"its candidate {candidate!r} is not in this code version"
    if recorded_params is None:
        return f"its hyper-parameters ({candidate}) are not recorded"
    if current != dict(recorded_params):
        return f"its recorded hyper-parameters differ from this code version's {candidate}"
    return None


def champion_baseline(
    champion: VersionInfo,
    recorded_params: Mapping[str, str] | None,
    data: MovieLens,
    seeds: Sequence[int],
    evaluated: Mapping[str, Mapping[int, float]],
    code: str,
    factory: Callable[[str], Recommender] = make_model,
) -> ChampionBaseline:
    """The champion's protocol-A scores on this run's ``data`` and split ``seeds``.

    Its recipe is its candidate name with the hyper-parameters its run recorded
    (``recorded_params``, as :func:`flat_params` writes them): when the code that trained it is
    this run's (code version ``code``) and builds that name with the same hyper-parameters, the
    recipe is fitted on each split's training users and scored on its test users, exactly as the
    run's candidates were. ``evaluated`` holds the
    run's candidates' per-seed scores by name; they were built by the same ``factory``, so the
    champion's name among them is the same recipe on the same splits and its scores are reused,
    not evaluated twice. Otherwise the fallback is the stored score, and the note says why.
    """
    name, version = champion.candidate, champion.version
    problem = recipe_problem(champion, recorded_params, code, factory)
    if problem is None and name in evaluated:
        scores = {int(seed): float(v) for seed, v in evaluated[name].items()}
        how = f"the score of this run's {name}"
    elif problem is None:
        try:
            per_seed = evaluate(data, [name], "A", seeds, factory=factory)["models"][name]["per_seed"]
        except Exception as exc:  # a recipe failing on today's data must not leave the run undecided
            log.exception("re-evaluating champion v%s's recipe (%s) failed", version, name)
            problem = f"re-evaluating its recipe ({name}) failed: {exc}"
        else:
            scores = {int(seed): float(metrics[f"ndcg@{K}"]) for seed, metrics in per_seed.items()}
            how = "evaluated for this gate"
    if problem is not None:
        note = (
            f"champion v{version}'s recipe cannot be reproduced: {problem}; compared with its stored "
            "score, measured on the data it was trained on"
        )
        return ChampionBaseline(version, _stored_ndcg(champion), champion.ndcg_a_by_seed, STORED, note)
    note = (
        f"champion v{version}'s recipe ({name}) re-evaluated on this run's data and split seeds "
        f"{','.join(map(str, sorted(scores)))}: {how}"
    )
    return ChampionBaseline(version, float(np.mean(list(scores.values()))), scores, SAME_DATA, note)


def _stored_ndcg(champion: VersionInfo) -> float | None:
    """The champion's stored protocol-A NDCG@10: its ``ndcg_a`` tag, else the mean of its
    per-seed scores; None when neither was recorded."""
    if champion.ndcg_a is not None:
        return champion.ndcg_a
    finite = [v for v in (champion.ndcg_a_by_seed or {}).values() if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def judge(
    version: str,
    candidate: str,
    ndcg_a: float,
    smoke: SmokeReport,
    champion_ndcg: float | None,
    tolerance: float = DEFAULT_TOLERANCE,
    champion_version: str | None = None,
    ndcg_b: float | None = None,
    *,
    scores: Mapping[int, float] | None = None,
    champion_scores: Mapping[int, float] | None = None,
    comparison: str | None = None,
    comparison_note: str | None = None,
    data_check: DataSizeCheck | None = None,
) -> GateDecision:
    """Pass or reject one candidate version; the reasons say why either way.

    ``ndcg_a`` is the candidate's mean over its run's seeds (what :func:`choose` ranks by);
    with per-seed ``scores`` for both, the comparison with the champion is on their common seeds.
    ``comparison`` and ``comparison_note`` say where the champion's figures come from (a
    :class:`ChampionBaseline`'s); they are recorded with the decision. ``data_check`` compares
    the run's training-data size with the champion's (:func:`data_size_check`): its note is among
    the reasons, and a refusal rejects the candidate whatever it scored.
    """
    reasons = [f"smoke: {reason}" for reason in smoke.reasons]
    if smoke.passed:
        reasons.append("smoke tests passed")
    # a champion (``champion_version``) without a figure is not "no champion yet": compared with
    # nothing, any candidate that passed its smoke tests replaced it, however much worse
    unscored = champion_ndcg is None and champion_version is not None
    has_champion = champion_ndcg is not None or unscored
    if has_champion and comparison_note:
        reasons.append(comparison_note)
    less_data = has_champion and data_check is not None and data_check.refused
    if has_champion and data_check is not None and not less_data:
        reasons.append(data_check.note)
    mine, theirs, on = ndcg_a, champion_ndcg, ""
    comparable = True
    # a champion's seed without a score (NaN) cannot be compared on; the others still can
    champion_scores = {s: v for s, v in (champion_scores or {}).items() if np.isfinite(v)} or None
    if champion_ndcg is not None and scores and champion_scores:
        common = sorted(set(scores) & set(champion_scores))
        if common:
            mine = float(np.mean([scores[s] for s in common]))
            theirs = float(np.mean([champion_scores[s] for s in common]))
            on = f" on split seeds {','.join(map(str, common))}"
        else:
            comparable = False
            theirs_seeds, mine_seeds = (",".join(map(str, sorted(m))) for m in (champion_scores, scores))
            reasons.append(
                f"no split seed in common with champion v{champion_version} (its seeds {theirs_seeds}; "
                f"this run's {mine_seeds}): scores over other splits are not comparable; run with the "
                "champion's seeds"
            )
    if not np.isfinite(ndcg_a) or not np.isfinite(mine):
        reasons.append("protocol-A NDCG@10 is not a number")
    elif unscored:
        reasons.append(
            f"champion v{champion_version} has no protocol-A NDCG@10 to compare with (none stored, its "
            "recipe not reproducible): not comparable; promote by hand if this version should replace it"
        )
    elif theirs is None:
        reasons.append(f"no champion yet; protocol-A NDCG@10 {ndcg_a:.4f}")
    elif not comparable:
        pass
    elif not np.isfinite(theirs):
        reasons.append(f"champion v{champion_version}'s protocol-A NDCG@10 is not a number: not comparable")
    elif mine < theirs - tolerance:
        reasons.append(
            f"protocol-A NDCG@10{on} {mine:.4f} is worse than champion v{champion_version} {theirs:.4f} "
            f"beyond the tolerance {tolerance}"
        )
    else:
        reasons.append(
            f"protocol-A NDCG@10{on} {mine:.4f} vs champion v{champion_version} {theirs:.4f} "
            f"(tolerance {tolerance}): not worse"
        )
    if less_data and data_check is not None:  # the verdict, last: whatever the NDCG rule said
        reasons.append(data_check.note)
    passed = (
        smoke.passed
        and bool(np.isfinite(ndcg_a))
        and bool(np.isfinite(mine))
        and comparable
        and not unscored
        and not less_data
        and (theirs is None or mine >= theirs - tolerance)
    )
    return GateDecision(
        version, candidate, float(ndcg_a), passed, reasons, ndcg_b=ndcg_b,
        comparison=comparison if has_champion else None,
    )  # fmt: skip


def seeds_comparable_with(seeds: Sequence[int], champion_scores: Mapping[int, float] | None) -> list[int]:
    """``seeds``, plus the champion's when they have none in common with them (the scheduler's
    configured seeds after a champion measured on others: every run would be refused as not
    comparable, and nothing promoted again). Only for a champion compared by its stored scores:
    a recipe :func:`champion_baseline` re-evaluates is measured on the run's own seeds."""
    if not champion_scores or set(seeds) & set(champion_scores):
        return list(seeds)
    return [*seeds, *sorted(set(champion_scores) - set(seeds))]


def _rank(decision: GateDecision) -> tuple[float, float]:
    """The run's order of its candidates: protocol-A NDCG@10, then protocol-B NDCG@10 (models
    without protocol B last), a score that is not a number below every number; ties on both go
    to the first listed (``max`` keeps the first) — the rule of
    :func:`app.recommender.training.select_best`."""

    def number(value: float | None) -> float:
        return value if value is not None and np.isfinite(value) else float("-inf")

    return number(decision.ndcg_a), number(decision.ndcg_b)


def best_candidate(decisions: Sequence[GateDecision]) -> GateDecision | None:
    """The run's best candidate by the gate's ranking, whether or not it passed (the flow names it
    ``challenger``); None for no decision. It is the promoted one whenever the best passed."""
    return max(decisions, key=_rank, default=None)


def choose(decisions: Sequence[GateDecision]) -> list[GateDecision]:
    """Mark the best passing decision as promoted; return all decisions.

    Best = highest protocol-A NDCG@10; ties go to the better protocol-B NDCG@10 (models
    without protocol B last), then to the first listed (:func:`_rank`).
    """
    best = best_candidate([d for d in decisions if d.passed])
    if best is None:
        return list(decisions)
    out = []
    for d in decisions:
        if d is best:
            out.append(replace(d, reasons=[*d.reasons, "best passing candidate of the run"], promoted=True))
        elif d.passed:
            out.append(replace(d, reasons=[*d.reasons, _not_promoted_because(d, best)]))
        else:
            out.append(d)
    return out


def _not_promoted_because(decision: GateDecision, best: GateDecision) -> str:
    """Why a passing ``decision`` was not promoted: what ranked ``best`` above it (:func:`_rank`).

    A tie on protocol A is said to be one (the hybrids tie with ``demographic_kernel``: "scored
    higher" with the same figure read as a misprint), with what settled it; scores that differ
    beyond the fourth decimal only are shown with the digits that tell them apart.
    """
    who = f"v{best.version} ({best.candidate})"
    if decision.ndcg_a < best.ndcg_a:
        digits = 4 if f"{decision.ndcg_a:.4f}" != f"{best.ndcg_a:.4f}" else 6
        return (
            f"not promoted: {who} scored higher on protocol-A NDCG@10, "
            f"{best.ndcg_a:.{digits}f} vs {decision.ndcg_a:.{digits}f}"
        )
    tied = f"not promoted: tied with {who} on protocol-A NDCG@10 {best.ndcg_a:.4f}"
    best_b, mine_b = _rank(best)[1], _rank(decision)[1]
    if best_b > mine_b:
        theirs = "this candidate has no protocol B" if not np.isfinite(mine_b) else None
        versus = f"; {theirs}" if theirs else f" vs {mine_b:.4f}"
        return f"{tied}; v{best.version} ranks known users better (protocol-B NDCG@10 {best_b:.4f}{versus})"
    b = f" and protocol B {best_b:.4f}" if np.isfinite(best_b) else " (neither has protocol B)"
    return f"{tied}{b}; v{best.version} is listed first"
