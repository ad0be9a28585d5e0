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

from app.monitoring.drift import MANIFEST_KEY, demographic_distribution
from app.recommender.accuracy import bundle_score
from app.recommender.bundle import LoadedBundle, Tables, build_tables, code_version, write_bundle
from app.recommender.data import MovieLens
from app.recommender.evaluation import REFERENCE_SEED, STANDARD_SEEDS, K, evaluate, split_users
from app.recommender.models import DEFAULT_CANDIDATES, Recommender, make_model

log = logging.getLogger(__name__)

SELECTION_METRIC = f"ndcg@{K}_mean"
RATING_MODEL_FILE = "rating_model.pkl"


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
    report_a = evaluate(data, model_names, "A", seeds)
    report_b = evaluate(data, model_names, "B", seeds)
    best = select_best(report_a, report_b)
    log.info("selected %s by protocol-A %s", best, SELECTION_METRIC)

    model = make_model(best).fit(data.ratings, data.users, data.items)
    tables = build_tables(model, data.ratings)
    profiles, targets = make_test_data(data)
    expected = bundle_score(_in_memory(model, tables, data), profiles, targets)

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
        "data_hash": data.fingerprint(),
        # who the model was trained for: drift of live requests is measured against it
        MANIFEST_KEY: demographic_distribution(data.users),
        "n_ratings": len(data.ratings),
        **(extra_manifest or {}),
    }
    test_data = {
        "data": profiles,
        "target": targets,
        "expected_score": expected,
        "metric": f"ndcg@{K}",
        "k": K,
        "description": f"protocol-A test users of split seed {REFERENCE_SEED}: profiles and liked titles",
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
        f"{result.path}  served={result.served_model}  protocol A ndcg@10="
        f"{summary[SELECTION_METRIC]:.3f} ± {summary['ndcg@10_sd']:.3f}"
    )


__all__ = ["TrainingResult", "make_test_data", "select_best", "summary_line", "train"]
