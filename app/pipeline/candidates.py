"""One candidate, start to finish: evaluate (protocols A and B), fit, batch-infer, bundle.

The training flow runs :func:`train_candidate` once per candidate in a Metaflow ``foreach``
and :func:`write_candidate_bundle` when it registers the result. Batch inference (every
cold-start segment and every known user's top-N, rated movies excluded) happens here, per
candidate, before registration: every registered version is then a complete, servable
bundle, so the gate's smoke tests check exactly what would be served and a rollback is a
pointer move, never a recomputation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.recommender.bundle import LoadedBundle, Tables, build_tables, write_bundle
from app.recommender.data import MovieLens
from app.recommender.evaluation import K, evaluate
from app.recommender.models import Recommender, make_model
from app.recommender.training import RATING_MODEL_FILE, accuracy_test_data, data_manifest

if TYPE_CHECKING:
    from app.registry.mlflow_registry import Registry

log = logging.getLogger(__name__)

SELECTION_METRIC = f"ndcg@{K}_mean"


@dataclass
class CandidateResult:
    """Everything the registry needs about one trained candidate (pickled between flow steps)."""

    name: str
    model: Recommender
    tables: Tables
    report_a: dict[str, Any]
    report_b: dict[str, Any]
    test_data: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def summary_a(self) -> dict[str, float]:
        return dict(self.report_a["models"][self.name]["summary"])

    @property
    def summary_b(self) -> dict[str, float] | None:
        entry = self.report_b["models"].get(self.name)
        return dict(entry["summary"]) if entry else None

    @property
    def ndcg_a(self) -> float:
        """The gate's metric: protocol-A NDCG@10, mean over every split seed of the run."""
        return float(self.summary_a[SELECTION_METRIC])

    @property
    def ndcg_a_by_seed(self) -> dict[int, float]:
        """Protocol-A NDCG@10 on each split seed (the gate compares with a champion on the seeds
        both were measured on)."""
        per_seed = self.report_a["models"][self.name]["per_seed"]
        return {int(seed): float(metrics[f"ndcg@{K}"]) for seed, metrics in per_seed.items()}

    def metrics(self) -> dict[str, Any]:
        """Manifest-style metrics: {name: {"A": summary, "B": summary or None}}."""
        return {self.name: {"A": self.summary_a, "B": self.summary_b}}


def train_candidate(data: MovieLens, name: str, seeds: Sequence[int]) -> CandidateResult:
    """Evaluate ``name`` on both protocols, fit it on all data and precompute its answers."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    # summarised over every seed of the run (what the gate ranks candidates by and the registry
    # stores), not over the standard seeds 0-4 among them alone (movierec evaluate's convention)
    report_a = evaluate(data, [name], "A", seeds, summary_over=seeds)
    timings["evaluate_a"] = time.perf_counter() - started

    started = time.perf_counter()
    report_b = evaluate(data, [name], "B", seeds, summary_over=seeds)
    timings["evaluate_b"] = time.perf_counter() - started

    started = time.perf_counter()
    model = make_model(name).fit(data.ratings, data.users, data.items)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    tables = batch_inference(model, data)
    timings["batch_inference"] = time.perf_counter() - started

    in_memory = LoadedBundle(
        "in-memory",
        {"version": "in-memory", "served_model": name},
        data.items.reset_index(drop=True),
        tables,
        Path("."),
    )
    test_data = accuracy_test_data(data, in_memory)
    result = CandidateResult(name, model, tables, report_a, report_b, test_data, timings)
    log.info(
        "candidate %s: protocol A ndcg@10 %.4f; %s",
        name, result.ndcg_a, ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )  # fmt: skip
    return result


def batch_inference(model: Recommender, data: MovieLens) -> Tables:
    """Every cold-start segment and every known user's top-N (rated movies excluded)."""
    return build_tables(model, data.ratings)


def fit_rating_model(data: MovieLens) -> Recommender | None:
    """The rating regressor bundles carry for /api/predict/*, fitted once per run.

    None when the linear rating model is not available in this code version.
    """
    try:
        from app.recommender.models.linear import LinearRatingModel
    except ImportError:  # pragma: no cover - older code versions
        return None
    return LinearRatingModel().fit(data.ratings, data.users, data.items)


def write_candidate_bundle(
    result: CandidateResult,
    data: MovieLens,
    store: Path | str,
    extra_manifest: dict[str, Any],
    rating_model: Recommender | None = None,
) -> Path:
    """Write the candidate as an immutable bundle under ``store`` (``latest`` untouched)."""
    manifest: dict[str, Any] = {
        "served_model": result.name,
        "params": result.model.params(),
        "candidates": [result.name],
        "selection": {"metric": f"protocol A {SELECTION_METRIC}", "seeds": result.report_a["seeds"]},
        "metrics": result.metrics(),
        **data_manifest(data),
        **extra_manifest,
    }
    extra_models: dict[str, Recommender] = {}
    if result.model.serves_records:
        manifest["rating_model"] = {
            "name": result.model.name,
            "file": "model.pkl",
            "params": result.model.params(),
        }
    elif rating_model is not None:
        extra_models[RATING_MODEL_FILE] = rating_model
        manifest["rating_model"] = {
            "name": rating_model.name,
            "file": RATING_MODEL_FILE,
            "params": rating_model.params(),
        }
    return write_bundle(
        store, result.model, data.items, result.tables, manifest, result.test_data,
        set_latest=False, extra_models=extra_models,
    )  # fmt: skip


def publish_candidate(
    result: CandidateResult,
    data: MovieLens,
    registry: Registry,
    run_id: str,
    extra_manifest: dict[str, Any],
    rating_model: Recommender | None,
    scratch_root: Path,
    artifact_uri: str | None = None,
) -> dict[str, Any]:
    """Write the bundle and the reports, upload them to the candidate's MLflow run; return what
    the registration step needs (small: no model, no tables).

    Runs inside the training branch, so the slow part of publishing (compressing the model,
    plotting, copying artifacts) happens in parallel across candidates.
    """
    import shutil
    import tempfile

    from app.recommender.bundle import new_version
    from app.recommender.report import write_report

    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"publish-{result.name}-", dir=scratch_root))
    started = time.perf_counter()
    try:
        version = f"{new_version(salt=str(extra_manifest.get('data_hash', '')) + result.name)}-{result.name}"[
            :64
        ]
        bundle = write_candidate_bundle(
            result, data, scratch / "bundles", {"version": version, **extra_manifest}, rating_model
        )
        reports: list[Path] = []
        for protocol, report in (("A", result.report_a), ("B", result.report_b)):
            if report["models"]:
                reports.extend(write_report(report, scratch / "reports" / f"protocol-{protocol}.json"))
        registry.upload_candidate_artifacts(run_id, bundle, reports, artifact_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.timings["publish"] = time.perf_counter() - started
    return {
        "candidate": result.name,
        "run_id": run_id,
        "bundle_version": bundle.name,
        "params": result.model.params(),
        "ndcg_a": result.ndcg_a,
        "ndcg_a_by_seed": result.ndcg_a_by_seed,
        "ndcg_b": (result.summary_b or {}).get(SELECTION_METRIC),
        "summary_a": result.summary_a,
        "summary_b": result.summary_b,
        "report_a": result.report_a,
        "report_b": result.report_b,
        "timings": dict(result.timings),
    }
