"""The training flow: a Metaflow ``FlowSpec`` whose steps call plain, unit-tested functions.

::

    start ──► features ──► train (foreach candidate) ──► release ──────────────────────► end
    ingest      Parquet       evaluate A + B, fit,         register versions, gate,
    raw +       snapshot,     batch inference, bundle      (smoke + NDCG rule), export
    feedback    DB features   → MLflow artifacts           champion → model store, reload,
                                                           summary → the launcher

Run it through ``movierec pipeline run`` (app/pipeline/runner.py), which sets the Metaflow
user and datastore under the var root and passes every setting through the environment
(secrets never on a command line). Directly: ``python -m app.pipeline.flow --no-pylint run``.
Here the local runtime runs the candidates in parallel processes; with Metaflow's
Kubernetes or AWS Batch integration the same ``train`` step fans out to a cluster
(``run --with kubernetes``), since steps exchange data only through Metaflow artifacts and
the registry.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from metaflow import FlowSpec, Parameter, current, step


def _settings() -> Any:
    from app.config import load_settings

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s", force=True
    )
    return settings


def _database(settings: Any) -> Any:
    from app.storage.db import Database

    return Database(settings.sqlalchemy_url)


class MovieRecTrainingFlow(FlowSpec):
    """Ingest → features → train every candidate → register, gate, export, reload → summary."""

    candidates = Parameter(
        "candidates",
        default="",
        help="Comma-separated candidate names (default: settings, then DEFAULT_CANDIDATES).",
    )
    seeds = Parameter(
        "seeds", default="", help="Comma-separated split seeds (default: MOVIEREC_PIPELINE_SEEDS)."
    )
    summary_path = Parameter("summary-path", default="", help="Write the run summary JSON here.")
    trigger = Parameter(
        "trigger", default="manual", help="What started this run: manual (pipeline run) or schedule."
    )

    @step
    def start(self) -> None:
        """Ingest the raw files and the feedback; open the MLflow pipeline run."""
        from app.pipeline.ingest import ingest
        from app.pipeline.runner import FLOW_OWNER_ENV, longest_first, resolve_candidates
        from app.recommender.bundle import code_version
        from app.recommender.seeds import parse_seeds
        from app.registry.mlflow_registry import FLOW_OWNER_TAG, SEEDS_TAG, Registry

        settings = _settings()
        self.started = time.time()
        names = resolve_candidates(str(self.candidates) or settings.pipeline_candidates)
        self.configured_names = names
        registry = Registry.from_settings(settings)
        # Longest first, so the slowest candidate never starts last on a free worker.
        self.candidate_names = longest_first(names, registry.candidate_seconds(names))
        self.seed_list = parse_seeds(str(self.seeds) or settings.pipeline_seeds)
        self.code_version = code_version()
        champion = registry.champion() if not str(self.seeds) else None
        if champion is not None:  # the configured seeds (the scheduler's): keep the gate able to compare
            from app.pipeline.gate import recipe_problem, seeds_comparable_with

            configured = self.seed_list
            # a recipe the gate re-evaluates is measured on these seeds: only stored scores need its own
            if recipe_problem(champion, registry.run_params(champion), self.code_version) is not None:
                self.seed_list = seeds_comparable_with(configured, champion.ndcg_a_by_seed)
            if self.seed_list != configured:
                logging.getLogger(__name__).warning(
                    "champion v%s was measured on none of the seeds %s: also evaluating on its seeds %s",
                    champion.version,
                    configured,
                    self.seed_list[len(configured) :],
                )
        ingested = ingest(settings.data_dir, _database(settings))
        self._refuse_too_little(ingested)
        self.data = ingested.data
        self.feedback = ingested.feedback
        self.ingest_stats = ingested.stats()
        self.data_hash = ingested.data_hash
        # The var root whose launcher holds the flow lock: its next flow closes these runs if
        # this one is killed before it can (app/pipeline/runner.py).
        owner = {FLOW_OWNER_TAG: os.environ[FLOW_OWNER_ENV]} if os.environ.get(FLOW_OWNER_ENV) else {}
        self.pipeline_run_id = registry.start_pipeline_run(
            {
                "data_hash": self.data_hash,
                "code_version": self.code_version,
                "metaflow_run_id": str(current.run_id),
                "trigger": str(self.trigger),
                "candidates": ",".join(self.candidate_names),
                SEEDS_TAG: ",".join(str(seed) for seed in self.seed_list),  # the scheduler's skip check
                **owner,
            }
        )
        # One MLflow run per candidate, opened here so each training branch uploads its own artifacts.
        self.candidate_runs = {
            name: registry.start_candidate_run(
                self.pipeline_run_id,
                name,
                {
                    "code_version": self.code_version,
                    "data_hash": self.data_hash,
                    "metaflow_run_id": str(current.run_id),
                    **owner,
                },
            )
            for name in self.candidate_names
        }
        # Where each run keeps its artifacts, so a branch writing to a local store needs no MLflow.
        self.candidate_artifacts = {
            name: registry.artifact_uri(run_id) for name, run_id in self.candidate_runs.items()
        }
        self.next(self.features)

    def _refuse_too_little(self, ingested: Any) -> None:
        """End the flow here when a split of this run's seeds leaves a protocol nothing to measure.

        Every candidate's ``train`` step met it in evaluation (TooLittleDataError), after the
        features step had published a snapshot and the MLflow runs were opened: a traceback per
        candidate, in ``pipeline run``'s output and in what the scheduler logged of the run. Before
        anything is written, the reason goes to the launcher (:data:`app.pipeline.runner.REFUSED`)
        as its one line, and the process exits without a traceback (SystemExit: the step fails
        and the flow with it).
        """
        from app.pipeline.runner import REFUSED
        from app.recommender.evaluation import TooLittleDataError, check_splits
        from app.recommender.models import make_model

        known_users = any(make_model(name).supports_users for name in self.candidate_names)
        try:
            check_splits(ingested.data, self.seed_list, ["A", "B"] if known_users else ["A"])
        except TooLittleDataError as exc:
            stats = ingested.stats()
            reason = (
                f"too little data to train on (data {ingested.data_hash}: {stats['n_ratings']} ratings, "
                f"{stats['n_users']} users): {exc}"
            )
            logging.getLogger(__name__).error("%s", reason)
            self._hand_over({REFUSED: reason})
            raise SystemExit(1) from None

    @step
    def features(self) -> None:
        """Publish the features snapshot (Parquet), load user features into the service DB."""
        from app.pipeline.candidates import fit_rating_model
        from app.pipeline.features_store import FeatureStore, SnapshotSuperseded
        from app.pipeline.ingest import Ingested
        from app.pipeline.runner import features_root

        settings = _settings()
        store = FeatureStore(features_root(settings))
        database = _database(settings)
        # LATEST names it only once the database serves it too; a failed load removes it; then
        # the snapshots past the newest MOVIEREC_FEATURES_KEEP_SNAPSHOTS go (never the served one)
        try:
            ingested, keep = Ingested(self.data, self.feedback), settings.features_keep_snapshots
            snapshot, self.db_user_features = store.load_into(database, ingested, keep)
            self.snapshot_id = snapshot.id
        except SnapshotSuperseded as exc:  # a manual build published a newer one: the run goes on
            logging.getLogger(__name__).warning("%s", exc)
            self.snapshot_id, self.db_user_features = exc.latest, 0
        # One rating regressor per run, attached to every bundle that cannot predict ratings itself.
        self.rating_model = fit_rating_model(self.data)
        self.next(self.train, foreach="candidate_names")

    @step
    def train(self) -> None:
        """One candidate: protocols A and B, fit on all data, batch inference, bundle → MLflow."""
        from app.pipeline.candidates import publish_candidate, train_candidate
        from app.registry.mlflow_registry import Registry

        settings = _settings()
        name = str(self.input)
        result = train_candidate(self.data, name, self.seed_list)
        extra_manifest = {
            "code_version": self.code_version,
            "data_hash": self.data_hash,
            "pipeline": {"metaflow_run_id": current.run_id, "mlflow_run_id": self.pipeline_run_id},
        }
        self.published = publish_candidate(
            result, self.data, Registry.from_settings(settings), self.candidate_runs[name], extra_manifest,
            self.rating_model, _scratch_root(settings), self.candidate_artifacts[name],
        )  # fmt: skip
        self.next(self.release)

    @step
    def release(self, inputs: Any) -> None:
        """Register every candidate, gate the new versions, export the champion, close the MLflow run.

        One step, not four: each Metaflow step is a new process that imports MLflow and opens
        its tracking store again (several seconds of CPU each), while this work is a handful of
        registry calls. The parts stay separate methods calling the unit-tested functions.
        """
        from app.registry.mlflow_registry import Registry

        self.merge_artifacts(inputs, exclude=["published"])
        settings = _settings()
        registry = Registry.from_settings(settings)
        self._register([branch.published for branch in inputs], registry)
        self._gate(registry, settings)
        self._export(registry, settings)
        self._finish(registry, settings)
        self._hand_over()
        self.next(self.end)

    def _register(self, published: list[dict[str, Any]], registry: Any) -> None:
        """Close every candidate's MLflow run and register its bundle as a new model version."""
        from app.pipeline.gate import data_size

        self.registered: list[dict[str, Any]] = []
        for entry in published:
            by_seed = json.dumps({str(seed): round(v, 6) for seed, v in entry["ndcg_a_by_seed"].items()})
            tags = {"code_version": self.code_version, "data_hash": self.data_hash,
                    "bundle_version": entry["bundle_version"], "candidate": entry["candidate"],
                    "ndcg_a": f"{entry['ndcg_a']:.6f}", "pipeline_run": self.pipeline_run_id,
                    "ndcg_a_by_seed": by_seed,
                    # the size of the data it was trained on: the gate of a later run compares with it
                    **{k: str(v) for k, v in data_size(self.ingest_stats).items()}}  # fmt: skip
            reports = {"A": entry["report_a"], "B": entry["report_b"]}
            registry.finish_candidate_run(
                entry["run_id"], entry["candidate"], entry["params"], reports, entry["timings"],
                {"bundle_version": entry["bundle_version"]},
            )  # fmt: skip
            info = registry.register(
                entry["run_id"],
                tags,
                description=f"{entry['candidate']} trained by pipeline run {current.run_id}",
            )
            self.registered.append(
                {
                    "version": info.version,
                    **{k: v for k, v in entry.items() if k not in ("report_a", "report_b", "params")},
                }
            )

    def _gate(self, registry: Any, settings: Any) -> None:
        """Smoke-test every new version from the registry, apply the NDCG rule, move `challenger`.

        The champion is measured on this run's data and splits when its recipe can be
        reproduced (:func:`champion_baseline`), else by the score stored when it was trained.
        A run on much less data than the champion's passes nothing (:func:`data_size_check`).
        """
        from app.pipeline.gate import best_candidate, champion_baseline, choose, judge, smoke_test
        from app.registry.mlflow_registry import CHALLENGER

        champion = registry.champion()
        self.champion_before = champion.version if champion else None
        baseline = data_check = None
        if champion is not None:
            minimum = settings.gate_min_data_fraction
            data_check = _data_size_check(registry, champion, self.ingest_stats, minimum)
            evaluated = {e["candidate"]: e["ndcg_a_by_seed"] for e in self.registered}
            baseline = champion_baseline(
                champion, registry.run_params(champion), self.data, self.seed_list, evaluated,
                self.code_version,
            )  # fmt: skip
            logging.getLogger(__name__).info("gate: %s", baseline.note)
        decisions = []
        scratch = Path(tempfile.mkdtemp(prefix="gate-", dir=_scratch_root(settings)))
        try:
            # In the configured order, so ties are settled the same way whatever ran first.
            registered = sorted(self.registered, key=lambda e: self.configured_names.index(e["candidate"]))
            for entry in registered:
                bundle = registry.open_bundle(entry["version"], scratch / entry["version"])
                smoke = smoke_test(bundle, self.data.ratings, settings.gate_latency_ms)
                decisions.append(
                    judge(entry["version"], entry["candidate"], entry["ndcg_a"], smoke,
                          baseline.ndcg_a if baseline else None, settings.gate_tolerance,
                          baseline.version if baseline else None, entry["ndcg_b"],
                          scores=entry["ndcg_a_by_seed"],
                          champion_scores=baseline.scores if baseline else None,
                          comparison=baseline.comparison if baseline else None,
                          comparison_note=baseline.note if baseline else None,
                          data_check=data_check)
                )  # fmt: skip
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        decisions = choose(decisions)
        for decision in decisions:
            # the chosen one is recorded `promoted` once it is champion (_export, as `movierec
            # promote` does): interrupted or killed before, it never was, and it passed
            registry.record_decision(
                decision.version,
                "passed" if decision.promoted else decision.decision,
                decision.reasons,
                gate_champion_before=self.champion_before or "",
                gate_comparison=decision.comparison or "",
            )
        self.decisions = [d.as_dict() for d in decisions]
        challenger = best_candidate(decisions)  # ranked as the gate ranks: on a tie on A, by B
        if challenger is not None:
            registry.set_alias(CHALLENGER, challenger.version)
        promoted = [d for d in decisions if d.promoted]
        self.promoted = promoted[0].version if promoted else None
        if self.promoted:  # the champion alias moves in _export, once its bundle is served
            logging.getLogger(__name__).info("version %s passed the gate: the new champion", self.promoted)
        else:
            logging.getLogger(__name__).warning(
                "no candidate passed the gate; champion stays %s", self.champion_before
            )

    def _export(self, registry: Any, settings: Any) -> None:
        """Put the champion's bundle in the serving model store, then move the alias; ask for a reload.

        A promoted version becomes ``champion`` only once its bundle is the model store's
        ``latest`` (:func:`promote_version`): when the export fails, the registry still names
        the champion the service serves, and the version's decision says why it was not promoted.
        """
        from app.pipeline.runner import RELEASE_UNFINISHED, UNFINISHED_AFTER_MOVE
        from app.registry.export import (
            export_version,
            promote_version,
            remember_reload,
            remove_old_bundles,
            request_reload,
            served_version,
        )

        champion = registry.get(self.promoted) if self.promoted else registry.champion()
        self.champion = champion.version if champion else None
        self.exported = None
        self.reloaded: bool | str = False  # request_reload's answer: True, False or "superseded"
        if champion is None:
            logging.getLogger(__name__).warning("no champion: nothing to export to %s", settings.model_dir)
            return
        changed = served_version(settings.model_dir) != champion.bundle_version
        try:
            if self.promoted:
                path = promote_version(registry, champion.version, settings.model_dir)
                self._record_promoted(registry)
            elif changed:
                path = export_version(registry, champion.version, settings.model_dir)
        except Exception as exc:
            if self.promoted:
                self._not_promoted(
                    registry,
                    f"not promoted: exporting its bundle to {settings.model_dir} or moving the champion "
                    f"alias failed: {exc}",
                )
            raise
        if changed:
            self.exported = str(path)
            # The champion moved: should the flow end from here on (the launcher stopped or timed
            # out while the service reloads, up to a minute), the launcher learns it from this
            # summary, not from a plain failure that reads as nothing changed, and has the reload
            # asked again (app/pipeline/runner.py, RELEASE_UNFINISHED).
            try:
                self._hand_over(self._summary() | {RELEASE_UNFINISHED: UNFINISHED_AFTER_MOVE})
            except OSError:  # the release goes on: its own summary is handed over at its end
                logging.getLogger(__name__).exception("could not hand the launcher the summary so far")
            # Owed from now on (reload-pending): a flow killed with its launcher before the service
            # answers has the next tick ask, not a service serving the old champion until it restarts
            remember_reload(settings, False)
            password = settings.admin_password.get_secret_value() if settings.admin_password else None
            self.reloaded = request_reload(settings.service_url, password, champion.bundle_version)
            remember_reload(settings, self.reloaded)
            try:  # after the reload: the workers' records name what each serves now
                remove_old_bundles(
                    registry, settings.model_dir, settings.model_keep_bundles, configured=settings.model_path
                )
            except Exception:  # the champion is served: a bundle left over is no failed run
                logging.getLogger(__name__).exception(
                    "could not remove old bundles from %s", settings.model_dir
                )

    def _record_promoted(self, registry: Any) -> None:
        """Record the gate's choice ``promoted`` now that it is the champion (the gate recorded it
        ``passed``). A failure is logged, not raised: the champion moved, and the release goes on."""
        decision = next(d for d in self.decisions if d["version"] == self.promoted)
        try:
            registry.record_decision(
                self.promoted, "promoted", decision["reasons"],
                gate_champion_before=self.champion_before or "",
                gate_comparison=decision["comparison"] or "",
            )  # fmt: skip
        except Exception:
            logging.getLogger(__name__).exception(
                "version %s is the champion, but recording its decision failed: the registry shows it passed",
                self.promoted,
            )

    def _not_promoted(self, registry: Any, note: str) -> None:
        """Record that the gate's choice did not become champion (its export or the alias move failed)."""
        decision = next(d for d in self.decisions if d["version"] == self.promoted)
        try:
            registry.record_decision(
                self.promoted, "passed", [*decision["reasons"], note],
                gate_champion_before=self.champion_before or "",
            )  # fmt: skip
        except Exception:
            logging.getLogger(__name__).exception(
                "could not record that version %s was not promoted", self.promoted
            )

    def _finish(self, registry: Any, settings: Any) -> None:
        """The run's summary; close the MLflow pipeline run with it.

        By now the gate's decisions are recorded and the champion may have moved (alias, model
        store, reload): a failure to close the MLflow run does not undo any of it, so it is not
        raised as a failed flow, which reads as nothing changed. It is logged and kept in the
        summary (``bookkeeping_error``); the launcher reports the run as released with failed
        bookkeeping (:class:`app.pipeline.runner.BookkeepingError`) and marks the MLflow run FAILED.
        """
        self.summary = self._summary()
        try:
            scratch = Path(tempfile.mkdtemp(prefix="summary-", dir=_scratch_root(settings)))
            try:
                summary_file = scratch / "summary.json"
                summary_file.write_text(json.dumps(self.summary, indent=2, default=str))
                registry.finish_pipeline_run(
                    self.pipeline_run_id,
                    {
                        "promoted": self.promoted or "",
                        "champion": self.champion or "",
                        "seconds": str(self.summary["seconds"]),
                    },
                    [summary_file],
                )
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        except Exception as exc:
            logging.getLogger(__name__).exception(
                "closing the MLflow pipeline run %s failed (champion v%s)",
                self.pipeline_run_id,
                self.champion,
            )
            self.summary["bookkeeping_error"] = (
                f"closing the MLflow pipeline run {self.pipeline_run_id} failed: {type(exc).__name__}: {exc}"
            )

    def _summary(self) -> dict[str, Any]:
        """What the release did so far: the gate's decisions, the champion, the export, the reload."""
        return {
            "metaflow_run_id": current.run_id,
            "mlflow_run_id": self.pipeline_run_id,
            "data_hash": self.data_hash,
            "code_version": self.code_version,
            "ingest": self.ingest_stats,
            "features_snapshot": self.snapshot_id,
            "db_user_features": self.db_user_features,
            "candidates": [
                {**entry, **next((d for d in self.decisions if d["version"] == entry["version"]), {})}
                for entry in self.registered
            ],
            "champion_before": self.champion_before,
            "promoted": self.promoted,
            "champion": self.champion,
            "exported": self.exported,
            "reloaded": self.reloaded,
            "seconds": round(time.time() - self.started, 1),
        }

    def _hand_over(self, summary: dict[str, Any] | None = None) -> None:
        """Write the summary (default: the run's, once the release is done) where the launcher
        reads it: should the flow fail after this (Metaflow storing the step's artifacts, the
        ``end`` step), the launcher still learns what the release changed instead of reporting a
        plain failure. :meth:`_export` hands one over as soon as the champion moved, too."""
        if not self.summary_path:
            return
        from app.durable import written_beside

        handed = self.summary if summary is None else summary
        with written_beside(Path(str(self.summary_path))) as partial:  # the launcher never reads half of one
            partial.write_text(json.dumps(handed, indent=2, default=str))

    @step
    def end(self) -> None:
        """Nothing left: ``release`` closed the MLflow run and handed the summary to the caller."""


def _data_size_check(registry: Any, champion: Any, ingest_stats: dict[str, int], min_fraction: float) -> Any:
    """The run's training-data size (its ingest's ``ingest_stats``) against the champion's: its
    tags, else (registered before they were recorded) the ratings its bundle's manifest counted."""
    from app.pipeline.gate import data_size, data_size_check

    champion_size, source = data_size(champion.tags), ""
    if not champion_size:
        champion_size = data_size(registry.manifest(champion.version) or {})
        source = " (its bundle's manifest)"
    check = data_size_check(champion.version, champion_size, data_size(ingest_stats), min_fraction, source)
    log = logging.getLogger(__name__)
    (log.warning if check.refused else log.info)("gate: %s", check.note)
    return check


def _scratch_root(settings: Any) -> Path:
    """The steps' scratch; what a killed flow leaves there the next run removes (runner.py)."""
    from app.pipeline.runner import STEP_SCRATCH

    root = Path(settings.var_dir) / "pipeline" / STEP_SCRATCH
    root.mkdir(parents=True, exist_ok=True)
    return root


if __name__ == "__main__":
    MovieRecTrainingFlow()
