"""Train candidates, pick the best by protocol-A NDCG@10, write one bundle.

This is the plain function behind ``movierec train``; the Metaflow training flow calls the
same pieces step by step (evaluate each candidate, fit the chosen one, build tables, write).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.monitoring.drift import MANIFEST_KEY, demographic_distribution
from app.recommender.accuracy import bundle_score
from app.recommender.bundle import (
    RATING_MODEL_FILE,
    LoadedBundle,
    Tables,
    build_tables,
    code_version,
    write_bundle,
)
from app.recommender.data import MovieLens
from app.recommender.evaluation import REFERENCE_SEED, STANDARD_SEEDS, K, evaluate, seed_label, split_users
from app.recommender.models import DEFAULT_CANDIDATES, Recommender, make_model

log = logging.getLogger(__name__)

SELECTION_METRIC = f"ndcg@{K}_mean"


@dataclass(frozen=True)
class TrainingResult:
    path: Path
    served_model: str
    report_a: dict[str, Any]
    report_b: dict[str, Any]


def select_best(
    report: dict[str, Any], report_b: dict[str, Any] | None = None, metric: str = SELECTION_METRIC
) -> str:
    """Name of the model with the highest mean protocol-A metric.

    Hybrid models share one cold-start scorer and tie on protocol A; the tie goes to the one
    that also ranks known users best (protocol B; models without it rank last), then to the
    first listed.
    """
    models = report["models"]
    if not models:
        raise ValueError("no candidate was evaluated")
    known = (report_b or {}).get("models", {})

    def key(name: str) -> tuple[float, float]:
        b = known.get(name, {}).get("summary", {}).get(metric, float("-inf"))
        return (models[name]["summary"][metric], b)

    return max(models, key=key)


def make_test_data(
    data: MovieLens, seed: int = REFERENCE_SEED
) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Seed-format accuracy test data: the protocol-A test users' profiles and liked titles."""
    _, test_ids = split_users(data.users["user_id"], seed)
    title_of = dict(zip(data.items["movie_id"], data.items["title"], strict=True))
    liked = data.ratings[(data.ratings["rating"] >= 4) & data.ratings["user_id"].isin(test_ids)]
    liked_titles = liked.groupby("user_id")["movie_id"].apply(lambda s: sorted(title_of[m] for m in s))
    users = data.users.set_index("user_id")
    profiles, targets = [], []
    for user_id, titles in liked_titles.items():
        row = users.loc[user_id]
        profiles.append(
            {"age": int(row["age"]), "gender": str(row["gender"]), "occupation": str(row["occupation"])}
        )
        targets.append(list(titles))
    return profiles, targets


def floor_score(data: MovieLens, targets: Sequence[Sequence[str]], k: int = K) -> float:
    """NDCG@k on the accuracy test's targets of one list for everybody: the ``k`` most-rated movies.

    Computed from the data alone, never from the model under test, and on the same (in-sample)
    users as the model's own score, so the two compare. ``expected_score`` is the model's own
    score, which every model reproduces by construction; this floor is what makes the test fail
    for a model that ranks below the weakest popularity reference of EVALUATION.md (the seed's
    forest, a broken or inverted ranking) even against its own test data.
    """
    from app.recommender.metrics import ndcg_at_k
    from app.recommender.models.popularity import popularity_scores
    from app.recommender.ranking import top_n

    item_ids = data.items["movie_id"].to_numpy()
    best = top_n(popularity_scores(data.ratings, item_ids, liked_only=False), k)[0]
    titles = data.items["title"].to_numpy()
    ranked = [str(titles[c]) for c in best if c >= 0]
    return float(np.mean([ndcg_at_k(ranked, set(t), k) for t in targets]))


def accuracy_test_data(data: MovieLens, served: LoadedBundle) -> dict[str, Any]:
    """``test_data.json`` of a bundle: profiles, liked titles, the bundle's own score and the floor.

    The profiles are the protocol-A test users of split seed 42, but the served model is fitted
    on *all* users, these included: the scores are in-sample (higher than protocol A's held-out
    figure, the more so the more a model memorises small segments) and measure reproduction of
    the bundle in another environment, not its quality. Quality is protocol A (``metrics`` in
    the manifest) and the promotion gate.
    """
    profiles, targets = make_test_data(data)
    return {
        "data": profiles,
        "target": targets,
        "expected_score": bundle_score(served, profiles, targets),
        "floor_score": floor_score(data, targets, K),
        "floor_k": K,  # the floor's NDCG cut-off: the accuracy test refuses it for another k
        "metric": f"ndcg@{K}",
        "k": K,
        "description": (
            f"profiles and liked titles of the protocol-A test users of split seed {REFERENCE_SEED}; "
            "in-sample: the served model was fitted on all users, these included. expected_score "
            "is the bundle's own score (a reproduction check); floor_score is global most-rated "
            "on the same users (a model below it fails)"
        ),
    }


def data_manifest(data: MovieLens) -> dict[str, Any]:
    """What every bundle's manifest says of the data it was fitted on, whoever writes it
    (``movierec train`` or the pipeline): its hash, its size, and the demographic distribution
    of its users, which drift of live requests is measured against (without it, drift is
    "unknown" for as long as the bundle serves)."""
    return {
        "data_hash": data.fingerprint(),
        MANIFEST_KEY: demographic_distribution(data.users),
        "n_ratings": len(data.ratings),
    }


def train(
    data: MovieLens,
    model_dir: Path | str,
    model_names: Sequence[str] = DEFAULT_CANDIDATES,
    seeds: Sequence[int] = STANDARD_SEEDS,
    extra_manifest: dict[str, Any] | None = None,
    rating_model: bool = True,
) -> TrainingResult:
    """Evaluate every candidate (protocols A and B), fit the best on all data, write a bundle.

    With ``rating_model`` the bundle also carries ``rating_model.pkl``, a
    :class:`LinearRatingModel` fitted on all ratings, which serves ``/api/predict/*`` whatever
    ranker won the selection (the served model itself is used when it predicts ratings).
    """
    log.info(
        "evaluating %d candidates (%s) on protocols A and B, split seeds %s, "
        "then fitting the best on all data: a minute or more on ml-100k",
        len(model_names), ", ".join(model_names), ",".join(map(str, seeds)),
    )  # fmt: skip
    # summarised over every seed given, as the training flow does (app/pipeline/candidates.py):
    # what selection ranks by, the manifest stores and the summary line prints
    report_a = evaluate(data, model_names, "A", seeds, summary_over=seeds)
    report_b = evaluate(data, model_names, "B", seeds, summary_over=seeds)
    best = select_best(report_a, report_b)
    log.info("selected %s by protocol-A %s", best, SELECTION_METRIC)

    model = make_model(best).fit(data.ratings, data.users, data.items)
    tables = build_tables(model, data.ratings)
    test_data = accuracy_test_data(data, _in_memory(model, tables, data))

    metrics = {
        name: {"A": entry["summary"], "B": report_b["models"].get(name, {}).get("summary")}
        for name, entry in report_a["models"].items()
    }
    manifest = {
        "served_model": best,
        "params": model.params(),
        "candidates": list(model_names),
        "selection": {"metric": f"protocol A {SELECTION_METRIC}", "seeds": list(seeds)},
        "metrics": metrics,
        "code_version": code_version(),
        **data_manifest(data),
        **(extra_manifest or {}),
    }
    extra_models: dict[str, Recommender] = {}
    if rating_model and not model.serves_records:
        from app.recommender.models.linear import LinearRatingModel

        regressor = LinearRatingModel().fit(data.ratings, data.users, data.items)
        extra_models[RATING_MODEL_FILE] = regressor
        manifest["rating_model"] = {
            "name": regressor.name,
            "file": RATING_MODEL_FILE,
            "params": regressor.params(),
        }
    elif model.serves_records:
        manifest["rating_model"] = {"name": model.name, "file": "model.pkl", "params": model.params()}
    path = write_bundle(model_dir, model, data.items, tables, manifest, test_data, extra_models=extra_models)
    return TrainingResult(path=path, served_model=best, report_a=report_a, report_b=report_b)


def _in_memory(model: Recommender, tables: Tables, data: MovieLens) -> LoadedBundle:
    manifest = {"version": "in-memory", "served_model": model.name}
    return LoadedBundle(
        "in-memory", manifest, data.items.reset_index(drop=True), tables, Path("."), model=model
    )


def summary_line(result: TrainingResult) -> str:
    summary = result.report_a["models"][result.served_model]["summary"]
    return (
        f"{result.path}  served={result.served_model}  "
        f"protocol A ndcg@10 (seeds {seed_label(result.report_a['summary_seeds'])})="
        f"{summary[SELECTION_METRIC]:.3f} ± {summary['ndcg@10_sd']:.3f}"
    )


__all__ = [
    "TrainingResult",
    "accuracy_test_data",
    "data_manifest",
    "floor_score",
    "make_test_data",
    "select_best",
    "summary_line",
    "train",
]
