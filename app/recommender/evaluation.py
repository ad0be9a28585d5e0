"""Offline evaluation protocols of EVALUATION.md.

Protocol A (cold start): users split 80/20; test users are ranked from their demographics
only, through the same segment key the service precomputes. Protocol B (known users): each
user's ratings split 80/20; rank every movie the user has not rated in training.
Relevant = rated ≥ 4; users without a relevant held-out movie are left out of the means
(their NDCG is undefined), and the number of users evaluated is reported.

Only MovieLens users are evaluated. The synthetic feedback users of the training flow (ids
above ``FEEDBACK_USER_BASE``, one per scored anonymous request) are nobody a caller can be:
they are kept out of both splits and train the models with all their ratings, in every split.
The MovieLens users are split exactly as the raw data alone is, so feedback never changes which
of them are tested (the figures stay comparable with EVALUATION.md's and across runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.recommender.data import MovieLens, is_feedback_user
from app.recommender.metrics import ranking_metrics, rmse
from app.recommender.models import Recommender, make_model
from app.recommender.ranking import top_n
from app.recommender.seeds import REFERENCE_SEED, STANDARD_SEEDS
from app.recommender.segments import Segment

K = 10
LIKE_THRESHOLD = 4.0


class TooLittleDataError(ValueError):
    """A split leaves no user to measure: no test user (protocol A) or held-out rating (protocol B)
    rated a movie ``LIKE_THRESHOLD`` or more."""


def split_users(
    user_ids: Sequence[int] | np.ndarray, seed: int, test_share: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, test ids): ascending ids shuffled by ``default_rng(seed)``, first 20 % test.

    Feedback users are not split: they were test users (and counted in the 20 %), and each new
    scored request reshuffled which MovieLens users were tested. They are all training users.
    """
    ids = np.sort(np.asarray(user_ids, dtype=np.int64))
    synthetic = is_feedback_user(ids)
    feedback, ids = ids[synthetic], ids[~synthetic]
    rng = np.random.default_rng(seed)
    rng.shuffle(ids)
    n_test = round(test_share * len(ids))
    return np.sort(np.concatenate([ids[n_test:], feedback])), np.sort(ids[:n_test])


def split_ratings(
    ratings: pd.DataFrame, seed: int, test_share: float = 0.2
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held out): per user in ascending id order, shuffle their rating positions (file
    order) with one shared ``default_rng(seed)`` and hold out the first round(20 % · n).

    Feedback users' ratings are never held out (they come last in id order, so skipping them
    leaves the MovieLens users' split as the raw data alone gives it): they were evaluated as
    known users, whom no caller can be."""
    rng = np.random.default_rng(seed)
    positions = np.arange(len(ratings))
    user_ids = ratings["user_id"].to_numpy()
    order = np.argsort(user_ids, kind="stable")  # groups users, keeps file order inside a user
    sorted_users = user_ids[order]
    boundaries = np.flatnonzero(np.diff(sorted_users)) + 1
    held = np.zeros(len(ratings), dtype=bool)
    for group in np.split(positions[order], boundaries):
        if len(group) and is_feedback_user(user_ids[group[0]]):
            break  # ascending ids: every group from here is a feedback user's
        shuffled = group.copy()
        rng.shuffle(shuffled)
        held[shuffled[: round(test_share * len(shuffled))]] = True
    return ratings[~held], ratings[held]


def _relevant_sets(frame: pd.DataFrame, users: np.ndarray) -> list[set[int]]:
    liked = frame[frame["rating"] >= LIKE_THRESHOLD]
    by_user = liked.groupby("user_id")["movie_id"].apply(set)
    return [by_user.get(u, set()) for u in users]


def _split_a(
    data: MovieLens, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, list[set[int]]]:
    """Protocol A's split: (train ratings, train users, test ratings, the test users who liked a
    movie, what each of them liked); TooLittleDataError when no test user liked one."""
    train_ids, test_ids = split_users(data.users["user_id"], seed)
    train_ratings = data.ratings[data.ratings["user_id"].isin(train_ids)]
    test_ratings = data.ratings[data.ratings["user_id"].isin(test_ids)]
    train_users = data.users[data.users["user_id"].isin(train_ids)]
    test_users = data.users[data.users["user_id"].isin(test_ids)].sort_values("user_id")
    relevant = _relevant_sets(test_ratings, test_users["user_id"].to_numpy())
    keep = np.array([bool(r) for r in relevant], dtype=bool)  # an empty float array selected columns
    if not keep.any():
        raise TooLittleDataError(
            f"protocol A, split seed {seed}: no test user ({len(test_users)} of "
            f"{len(train_ids) + len(test_ids)} users) rated a movie {LIKE_THRESHOLD:g} or more: "
            "too little data to evaluate"
        )
    return train_ratings, train_users, test_ratings, test_users[keep], [r for r in relevant if r]


def protocol_a(model: Recommender, data: MovieLens, seed: int, k: int = K) -> dict[str, Any]:
    """Fit ``model`` on the training users and measure it on the unseen test users."""
    train_ratings, train_users, test_ratings, test_users, relevant = _split_a(data, seed)

    started = time.perf_counter()
    model.fit(train_ratings, train_users, data.items)
    fit_seconds = time.perf_counter() - started

    segments = [
        Segment.of(int(a), g, o)
        for a, g, o in zip(test_users["age"], test_users["gender"], test_users["occupation"], strict=True)
    ]
    unique = sorted(set(segments), key=lambda s: s.key)
    row_of = {s: i for i, s in enumerate(unique)}

    started = time.perf_counter()
    best = top_n(model.score_segments(unique), k)
    score_seconds = time.perf_counter() - started
    ids = np.where(best >= 0, model.item_ids[np.maximum(best, 0)], -1)  # -1: padding, never a hit
    lists = [ids[row_of[s]].tolist() for s in segments]

    result: dict[str, Any] = ranking_metrics(lists, relevant, len(model.item_ids), k)
    result.update(
        n_users=len(lists),
        fit_seconds=fit_seconds,
        score_ms_per_user=1000.0 * score_seconds / len(lists),
    )
    if model.predicts_ratings:
        rows = test_ratings.join(
            data.users.set_index("user_id")[["age", "gender", "occupation"]], on="user_id"
        )
        result["rmse"] = rmse(model.predict_ratings(rows), rows["rating"].to_numpy())
    return result


def _split_b(data: MovieLens, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Protocol B's split: (training ratings, held-out ratings, the users with a held-out like);
    TooLittleDataError when no user has one."""
    train, held = split_ratings(data.ratings, seed)
    users = np.sort(held.loc[held["rating"] >= LIKE_THRESHOLD, "user_id"].unique())
    if not len(users):
        raise TooLittleDataError(
            f"protocol B, split seed {seed}: no user rated a movie {LIKE_THRESHOLD:g} or more among "
            f"their held-out ratings ({len(held)} of {len(data.ratings)}: a fifth of each user's, "
            "none of fewer than 3): too little data to evaluate"
        )
    return train, held, users


def protocol_b(model: Recommender, data: MovieLens, seed: int, k: int = K) -> dict[str, Any]:
    """Fit on 80 % of each user's ratings; rank unrated movies for every user with a held-out like."""
    if not model.supports_users:
        raise ValueError(f"{model.name} does not score known users")
    train, held, users = _split_b(data, seed)
    started = time.perf_counter()
    model.fit(train, data.users, data.items)
    fit_seconds = time.perf_counter() - started

    relevant = _relevant_sets(held, users)
    rated = train.groupby("user_id")["movie_id"].apply(lambda s: s.to_numpy())
    exclude = [model.item_positions(rated.get(u, np.empty(0, dtype=np.int64))) for u in users]
    exclude = [cols[cols >= 0] for cols in exclude]

    started = time.perf_counter()
    best = top_n(model.score_users(users.tolist()), k, exclude)
    score_seconds = time.perf_counter() - started
    lists = [[int(model.item_ids[c]) if c >= 0 else -1 for c in row] for row in best]

    result: dict[str, Any] = ranking_metrics(lists, relevant, len(model.item_ids), k)
    result.update(
        n_users=len(lists), fit_seconds=fit_seconds, score_ms_per_user=1000.0 * score_seconds / len(lists)
    )
    return result


PROTOCOLS: dict[str, Callable[[Recommender, MovieLens, int, int], dict[str, Any]]] = {
    "A": protocol_a,
    "B": protocol_b,
}


def check_splits(data: MovieLens, seeds: Sequence[int], protocols: Sequence[str] = tuple(PROTOCOLS)) -> None:
    """TooLittleDataError, as the protocol itself would raise it, when a split of one of ``seeds``
    leaves one of ``protocols`` nothing to measure: found before any model is fitted (the training
    flow's first step, app/pipeline/flow.py), where each candidate met it in its own step."""
    splits = {"A": _split_a, "B": _split_b}
    for protocol in protocols:
        for seed in seeds:
            splits[protocol](data, seed)


def summarise(per_seed: dict[int, dict[str, Any]], seeds: Sequence[int]) -> dict[str, float]:
    """Mean and standard deviation of every numeric metric over ``seeds``."""
    summary: dict[str, float] = {}
    metrics = [m for m in per_seed[seeds[0]] if isinstance(per_seed[seeds[0]][m], float | int)]
    for metric in metrics:
        values = np.array([per_seed[s][metric] for s in seeds], dtype=np.float64)
        summary[f"{metric}_mean"] = float(values.mean())
        summary[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def evaluate(
    data: MovieLens,
    model_names: Sequence[str],
    protocol: str = "A",
    seeds: Sequence[int] = (*STANDARD_SEEDS, REFERENCE_SEED),
    k: int = K,
    factory: Callable[[str], Recommender] = make_model,
    summary_over: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run one protocol for several models and seeds; the report is JSON-serialisable.

    Models that cannot answer the protocol (protocol B for a cold-start-only model) are
    listed under ``skipped``. The summary (mean, sd) is over ``summary_over`` when given (the
    training flow's and ``movierec train``'s: every seed of the run, what selection ranks by),
    else over the standard seeds 0–4 that ran (:func:`summary_seeds`; seed 42 is reported beside
    them, as EVALUATION.md asks); the report names them (``summary_seeds``).
    """
    run = PROTOCOLS[protocol]
    over = list(summary_over) if summary_over is not None else summary_seeds(seeds)
    report: dict[str, Any] = {"protocol": protocol, "k": k, "seeds": list(seeds), "summary_seeds": over}
    report.update(models={}, skipped=[])
    for name in model_names:
        if protocol == "B" and not factory(name).supports_users:
            report["skipped"].append(name)
            continue
        per_seed = {seed: run(factory(name), data, seed, k) for seed in seeds}
        report["models"][name] = {
            "per_seed": {str(s): m for s, m in per_seed.items()},
            "summary": summarise(per_seed, over),
        }
    return report


def summary_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds a report's summary is over: the standard seeds 0–4 that ran, else every seed run."""
    return [s for s in STANDARD_SEEDS if s in seeds] or list(seeds)


def averaged_seeds(report: dict[str, Any]) -> list[int]:
    """The seeds a report's summary averages (reports written before ``summary_seeds``: the default)."""
    return list(report.get("summary_seeds") or summary_seeds(report["seeds"]))


def seed_label(seeds: Sequence[int]) -> str:
    """``0-4`` for consecutive seeds, ``0`` for one, ``5,7`` otherwise."""
    ordered = sorted(seeds)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(map(str, ordered))


def format_table(report: dict[str, Any], k: int | None = None) -> str:
    """A plain-text table: one row per model, NDCG mean ± sd over the summary's seeds (0–4 when
    they ran; the header names them) and the other metrics, at the report's k unless ``k`` is given."""
    k = report.get("k", K) if k is None else k
    seeds = report["seeds"]
    ndcg_label = f"ndcg@{k} ({seed_label(averaged_seeds(report))})"
    header = (
        f"{'model':<24} {ndcg_label:>16} {'seed 42':>8} {'prec':>6} {'recall':>6} {'hit':>6} "
        f"{'cov':>6} {'rmse':>6} {'ms/user':>8}"
    )
    lines = [f"protocol {report['protocol']}", header, "-" * len(header)]
    for name, entry in report["models"].items():
        s = entry["summary"]
        ref = entry["per_seed"].get(str(REFERENCE_SEED), {}).get(f"ndcg@{k}")
        rmse_value = s.get("rmse_mean")
        lines.append(
            f"{name:<24} {s[f'ndcg@{k}_mean']:>9.3f} ± {s[f'ndcg@{k}_sd']:.3f} "
            f"{(f'{ref:.3f}' if ref is not None else '-'):>8} {s[f'precision@{k}_mean']:>6.3f} "
            f"{s[f'recall@{k}_mean']:>6.3f} {s[f'hit_rate@{k}_mean']:>6.3f} {s[f'coverage@{k}_mean']:>6.3f} "
            f"{(f'{rmse_value:.3f}' if rmse_value is not None else '-'):>6} "
            f"{s['score_ms_per_user_mean']:>8.3f}"
        )
    if report.get("skipped"):
        lines.append(f"skipped (protocol not applicable): {', '.join(report['skipped'])}")
    lines.append(f"seeds: {', '.join(map(str, seeds))}")
    return "\n".join(lines)
