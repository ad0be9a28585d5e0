"""Model versions and aliases in MLflow: tracking runs plus the model registry.

Every candidate of every pipeline run is one MLflow run (params, metrics of protocols A and
B per seed and summarised, the evaluation reports as JSON + PNG, the bundle directory as an
artifact, code version and data hash as tags) and one version of the registered model
(default ``movierec``). The registered-model alias ``champion`` names the version the
service should serve; ``challenger`` the best candidate of the latest run. Gate decisions
and their reasons are version tags; a version is registered ``pending`` (in the same request
that creates it) until its decision is recorded, so one whose run died in between is never
read as having passed. Once that run has ended (failed, killed, or finished without deciding),
the launcher marks such a version ``abandoned`` (:meth:`Registry.abandon_pending_versions`).

By default the backend is SQLite and artifacts are local files under the var root
(``var/mlflow``); a team points ``MOVIEREC_MLFLOW_TRACKING_URI`` at a tracking server
instead. Serving never needs MLflow: it loads a bundle exported to the model store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlparse
from urllib.request import url2pathname

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
BUNDLE_ARTIFACT: Final = "bundle"
REPORTS_ARTIFACT: Final = "reports"
TOTAL_SECONDS: Final = "seconds.total"
PENDING: Final = "pending"  # gate_decision of a version the gate has not decided on yet
ABANDONED: Final = "abandoned"  # gate_decision of a pending version whose pipeline run ended undecided
DECISIONS: Final = ("promoted", "passed", "rejected")  # what the gate (or an operator) decides
FLOW_OWNER_TAG: Final = "flow_owner"  # the var root whose flow opened a run (app/pipeline/runner.py)
_MAX_PARAM = 500
_MAX_REASONS_TAG = 4900  # MLflow refuses tag values over 5000 characters


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown version, no bundle, unreachable server).

    The message is scrubbed: the tracking URI it names is masked (``display_uri``), but the
    MLflow error it quotes names the request's URL whole ("API request to http://user:password@
    host/api/... failed"), and every command printed it on its ``Error:`` line.
    """

    def __init__(self, message: str) -> None:
        from app.monitoring.logs import scrub_text

        super().__init__(scrub_text(message))


def _number(tag: str | None) -> float | None:
    """A numeric tag, or None when missing or not a number: a hand-edited one ("n/a") raised
    ValueError while listing versions, so the champion lookup and every pipeline run failed."""
    try:
        return float(tag) if tag else None
    except ValueError:
        return None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as the pipeline and the CLI need it."""

    version: str
    candidate: str
    bundle_version: str
    ndcg_a: float | None
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @classmethod
    def of(cls, mv: ModelVersion) -> VersionInfo:
        tags = dict(mv.tags or {})
        return cls(
            version=str(mv.version),
            candidate=tags.get("candidate", ""),
            bundle_version=tags.get("bundle_version", ""),
            ndcg_a=_number(tags.get("ndcg_a")),
            run_id=mv.run_id,
            source=mv.source or "",
            tags=tags,
            aliases=tuple(mv.aliases or ()),
        )

    @property
    def decision(self) -> str | None:
        return self.tags.get("gate_decision")

    @property
    def decided(self) -> bool:
        """Whether the gate (or an operator) recorded a decision: not ``pending`` (its run ended
        between registering it and recording the decision) and not missing (registered so by
        an older movierec)."""
        return self.decision in DECISIONS

    @property
    def ndcg_a_by_seed(self) -> dict[int, float] | None:
        """Protocol-A NDCG@10 per split seed (tag ``ndcg_a_by_seed``); None for a version
        registered before it was recorded, or an unreadable tag."""
        raw = self.tags.get("ndcg_a_by_seed")
        try:
            scores = json.loads(raw) if raw else None
            return {int(seed): float(value) for seed, value in scores.items()} if scores else None
        except (ValueError, TypeError, AttributeError):
            return None

    @property
    def reasons(self) -> list[str]:
        raw = self.tags.get("gate_reasons", "[]")
        try:
            return list(json.loads(raw))
        except ValueError:  # cut mid-JSON by an older record_decision: keep the text, do not crash
            return [raw]


FIRST_REQUEST_RETRIES: Final = 2
"""How often a command's first request to a tracking server is retried (MLflow's default, 7
with backoff, is about 4 minutes on a server that is down): a few seconds in all."""


@contextlib.contextmanager
def first_request() -> Iterator[None]:
    """For a command's first request to the registry: MLflow retries a request to a tracking
    server FIRST_REQUEST_RETRIES times in the block, unless MLFLOW_HTTP_REQUEST_MAX_RETRIES is
    set (the operator's choice stays). ``pipeline versions`` and ``promote`` waited about 4
    minutes on a server that is down before saying so; once it has answered, their later
    requests (``promote``'s writes) get MLflow's retries again. Read by MLflow at each request."""
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES as retries

    if retries.defined:
        yield
        return
    retries.set(FIRST_REQUEST_RETRIES)
    try:
        yield
    finally:
        retries.unset()


def default_tracking_uri(var_dir: Path | str) -> str:
    """SQLite file under the var root: no server to run for one machine."""
    return f"sqlite:///{(Path(var_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def default_artifact_root(var_dir: Path | str) -> str:
    return (Path(var_dir) / "mlflow" / "artifacts").resolve().as_uri()


SEEDS_TAG = "seeds"  # a pipeline run's tag: the split seeds it evaluated, comma-separated


def covers_seeds(tags: Mapping[str, str], seeds: Iterable[int]) -> bool:
    """Whether the pipeline run whose tags are ``tags`` evaluated every one of ``seeds``. A run
    without the tag (an older movierec's) is taken to have evaluated the configured ones."""
    recorded = tags.get(SEEDS_TAG)
    if not recorded:
        return True
    return set(seeds) <= {int(seed) for seed in recorded.split(",") if seed.strip().isdigit()}


def _local_artifact_dir(artifact_uri: str) -> Path | None:
    """The directory of a ``file://`` artifact URI (or a plain path), None for remote stores."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" and artifact_uri:
        return Path(artifact_uri)
    return None


def _tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it is gone)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _not_found(exc: Exception) -> bool:
    """Whether an MlflowException says the model, version or alias does not exist, rather than
    that the store could not be read (MLflow answers a missing alias INVALID_PARAMETER_VALUE)."""
    return getattr(exc, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def reasons_tag(reasons: list[str], limit: int = _MAX_REASONS_TAG) -> str:
    """``reasons`` as a JSON list of at most ``limit`` characters that is still valid JSON.

    Cutting the JSON text at the limit left an unterminated string that every later reader
    (``VersionInfo.reasons``: ``movierec promote`` of that version) failed on. Each promotion
    appends a reason, so a version rolled back and forth often grows past the limit: the
    oldest reasons are dropped first (the newest say why the version is served), and a single
    reason too long on its own is shortened.
    """
    kept, dropped = [str(reason) for reason in reasons], 0
    while True:
        shown = [f"({dropped} earlier reasons dropped)", *kept] if dropped else kept
        text = json.dumps(shown)
        if len(text) <= limit:
            return text
        if len(kept) > 1:
            kept.pop(0)
            dropped += 1
        else:
            kept[0] = kept[0][: len(kept[0]) * 3 // 4]


def metric_key(name: str) -> str:
    """MLflow metric names allow no '@': ``A.ndcg@10_mean`` → ``A.ndcg_at_10_mean``."""
    return name.replace("@", "_at_")


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``params`` as a candidate run records them: nested keys joined by dots, values as text."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM]
    return flat


class Registry:
    """The registered model ``model_name`` in the experiment ``experiment`` at ``tracking_uri``."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "movierec",
        model_name: str = "movierec",
        artifact_root: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.model_name = model_name
        self.artifact_root = artifact_root
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._artifact_uris: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> Registry:
        """The registry the settings name (SQLite under the var root unless a server is set)."""
        uri = settings.mlflow_tracking_uri or default_tracking_uri(settings.var_dir)
        root = None if settings.mlflow_tracking_uri else default_artifact_root(settings.var_dir)
        if not settings.mlflow_tracking_uri:
            store = Path(settings.var_dir) / "mlflow"
            try:
                store.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # the var root is not writable, a file is in the way
                raise RegistryError(f"cannot open the registry at {uri}: {exc}") from exc
        return cls(uri, settings.mlflow_experiment, settings.registered_model, root)

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            # MLflow's SQLite store checks its schema with Alembic on every client: not news.
            logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger("alembic").level))
            try:
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            except Exception as exc:  # a database store is opened here: wrong URI, server down, no database
                raise RegistryError(f"cannot open the registry at {self.display_uri}: {exc}") from exc
        return self._client

    @property
    def display_uri(self) -> str:
        """The tracking URI without the password a database or server URI may carry."""
        from app.monitoring.logs import scrub_text

        return scrub_text(self.tracking_uri)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                self._experiment_id = self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_root
                )
        return self._experiment_id

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.model_name, description="movierec recommendation bundles; alias 'champion' is served"
                )
            except MlflowException:  # created concurrently
                self.client.get_registered_model(self.model_name)

    # ------------------------------------------------------------------ runs

    def start_pipeline_run(self, tags: Mapping[str, str]) -> str:
        """The parent run of one flow execution (its tags drive the scheduler's skip check)."""
        run = self.client.create_run(
            self.experiment_id, run_name=f"pipeline-{datetime.now(UTC):%Y%m%dT%H%M%S}",
            tags={"kind": "pipeline", **{k: str(v) for k, v in tags.items()}},
        )  # fmt: skip
        return run.info.run_id

    def finish_pipeline_run(
        self,
        run_id: str,
        tags: Mapping[str, str] | None = None,
        artifacts: Iterable[Path] = (),
        failed: bool = False,
    ) -> None:
        for key, value in (tags or {}).items():
            self.client.set_tag(run_id, key, str(value))
        for path in artifacts:
            self.client.log_artifact(run_id, str(path), REPORTS_ARTIFACT)
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def close_abandoned_runs(self, owner: str) -> list[str]:
        """Mark KILLED the runs still RUNNING that flows of ``owner`` opened; their ids.

        Called while holding ``owner``'s flow lock, when no flow of it can be running: a run
        left RUNNING belongs to a flow whose launcher was killed (SIGKILL, a host reboot)
        before it could close it, and would otherwise read as in progress for ever.
        """
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{FLOW_OWNER_TAG} = '{owner}' and attributes.status = 'RUNNING'",
            max_results=1000,
        )
        for run in runs:
            self.client.set_terminated(run.info.run_id, "KILLED")
        return [run.info.run_id for run in runs]

    def abandon_pending_versions(self) -> list[str]:
        """Mark ``abandoned`` the ``pending`` versions whose pipeline run has ended; their numbers.

        A flow that died between registering its candidates and recording the gate's decisions
        (the tracking store failed, the launcher was killed) left them ``pending`` for ever, as
        if a gate were still deciding. Only a run that is no longer RUNNING is judged ended: a
        flow of another var root sharing this registry may be deciding now. ``abandoned`` is
        not a decision (:attr:`VersionInfo.decided`): ``movierec promote`` still refuses such a
        version unless forced. The launcher calls this when it closes a failed flow's runs and,
        for a launcher killed outright, when the next flow closes them.
        """
        from mlflow.exceptions import MlflowException

        abandoned: list[str] = []
        status: dict[str, str] = {}
        for info in self.versions():
            if info.decision != PENDING:
                continue
            run_id = info.tags.get("pipeline_run") or self._parent_run(info.run_id)
            if not run_id:
                continue  # nothing says which flow registered it: not known to have ended
            if run_id not in status:
                try:
                    status[run_id] = self.client.get_run(run_id).info.status
                except MlflowException as exc:
                    if not _not_found(exc):
                        raise
                    status[run_id] = "DELETED"
            if status[run_id] == "RUNNING":
                continue
            note = (
                f"abandoned: its pipeline run {run_id} ended ({status[run_id]}) before the gate "
                "recorded a decision; its bundle was never smoke-tested nor compared with the champion"
            )
            self.record_decision(info.version, ABANDONED, [note])
            abandoned.append(info.version)
        return abandoned

    def _parent_run(self, run_id: str | None) -> str | None:
        """The pipeline run that opened candidate run ``run_id`` (None when it cannot be read)."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            return self.client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        except MlflowException:
            return None

    def candidate_seconds(self, names: Iterable[str], lookback: int = 200) -> dict[str, float]:
        """Training time of each candidate's most recent run (those never run are absent)."""
        wanted = set(names)
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string="tags.kind = 'candidate' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=lookback,
        )
        seconds: dict[str, float] = {}
        for run in runs:
            name = run.data.tags.get("candidate", "")
            if name in wanted and name not in seconds and TOTAL_SECONDS in run.data.metrics:
                seconds[name] = float(run.data.metrics[TOTAL_SECONDS])
        return seconds

    def last_pipeline_run(self, lookback: int = 200) -> dict[str, str] | None:
        """Tags of the newest pipeline run that finished, or None.

        Newest by the versions it registered (every finished run registered its candidates): their
        numbers are a sequence the tracking store counts up, where a run's start time is the
        launcher's wall clock. A run made while the clock was ahead (then set right) was the
        newest until the clock caught up with it, and the scheduler, comparing the data with that
        run's, trained again at every tick. Among the newest ``lookback`` versions; without one
        naming a finished run (none registered yet, or by an older movierec), the newest start time.
        """
        from mlflow.exceptions import MlflowException

        try:
            versions = list(
                self.client.search_model_versions(
                    f"name = '{self.model_name}'", max_results=lookback, order_by=["version_number DESC"]
                )
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            versions = []
        looked_at: set[str] = set()
        for mv in versions:
            run_id = (mv.tags or {}).get("pipeline_run")
            if not run_id or run_id in looked_at:
                continue
            looked_at.add(run_id)
            try:
                run = self.client.get_run(run_id)
            except MlflowException as exc:
                if _not_found(exc):
                    continue
                raise
            tags = dict(run.data.tags)
            finished = run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
            if finished and tags.get("kind") == "pipeline" and run.info.experiment_id == self.experiment_id:
                return tags | {"run_id": run_id}
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string="tags.kind = 'pipeline' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return dict(runs[0].data.tags) | {"run_id": runs[0].info.run_id} if runs else None

    def trained_candidates(
        self, data_hash: str, code_version: str, seeds: Iterable[int] = (), lookback: int = 100
    ) -> set[str]:
        """Candidates trained by the finished pipeline runs on this data hash and code version that
        evaluated every one of ``seeds`` (:func:`covers_seeds`)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                "tags.kind = 'pipeline' and attributes.status = 'FINISHED' and "
                f"tags.data_hash = '{data_hash}' and tags.code_version = '{code_version}'"
            ),
            max_results=lookback,
        )
        wanted = list(seeds)
        return {
            name
            for run in runs
            if covers_seeds(run.data.tags, wanted)
            for name in run.data.tags.get("candidates", "").split(",")
            if name
        }

    def _all_runs(self, filter_string: str, **kwargs: Any) -> list[Any]:
        """Every run of the experiment ``filter_string`` selects, page after page, newest first."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000,
                order_by=["attributes.start_time DESC"], page_token=token, **kwargs,
            )  # fmt: skip
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def old_pipeline_runs(self, owner: str, keep: int) -> list[tuple[Any, list[Any]]]:
        """The ended pipeline runs of ``owner``'s flows older than its newest ``keep``, newest
        first, each with its candidate runs. Runs still RUNNING (a flow of another var root, or
        one being closed) are neither counted nor returned."""
        pipelines = [
            run
            for run in self._all_runs(f"tags.kind = 'pipeline' and tags.{FLOW_OWNER_TAG} = '{owner}'")
            if run.info.status != "RUNNING"
        ]
        return [
            (run, self._all_runs(f"tags.mlflow.parentRunId = '{run.info.run_id}'"))
            for run in pipelines[keep:]
        ]

    def delete_run(self, run: Any, versions: Iterable[VersionInfo] = ()) -> int:
        """Remove ``run``'s artifacts and mark it deleted (as ``mlflow gc`` does, keeping the
        run's record: it is marked deleted, not erased). First its registered ``versions`` get the
        tag ``artifacts_removed``, which says why their bundle can no longer be had, then the
        artifacts go, then the run is marked deleted: killed part way, the run is still active and
        the next pass (which lists only active runs) does it again, and a version's bundle is never
        gone without the tag saying why. The bytes freed (0 when the artifact store is not a local
        directory: not measured)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        local = _local_artifact_dir(run.info.artifact_uri)
        size = _tree_size(local) if local is not None else 0
        when = datetime.now(UTC).isoformat(timespec="seconds")
        for info in versions:
            if info.tags.get("artifacts_removed"):  # tagged by a pass killed before it ended
                continue
            self.tag_version(
                info.version,
                {"artifacts_removed": f"{when}: its run's artifacts (the bundle) were removed by the "
                 "registry's retention (MOVIEREC_PIPELINE_KEEP_RUNS)"},
            )  # fmt: skip
        get_artifact_repository(run.info.artifact_uri, tracking_uri=self.tracking_uri).delete_artifacts()
        if local is not None:
            with contextlib.suppress(OSError):  # <run id>/artifacts went; <run id>/ is left empty
                local.parent.rmdir()
        self.client.delete_run(run.info.run_id)
        return size

    def start_candidate_run(self, parent_run_id: str, name: str, tags: Mapping[str, str]) -> str:
        """Open the run of one candidate (before training, so its branch can upload artifacts)."""
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={"kind": "candidate", "candidate": name, "mlflow.parentRunId": parent_run_id,
                  **{k: str(v) for k, v in tags.items()}},
        )  # fmt: skip
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    def artifact_uri(self, run_id: str) -> str:
        """Where the run's artifacts are stored (``file://…`` for the default local store)."""
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = self.client.get_run(run_id).info.artifact_uri
        return self._artifact_uris[run_id]

    def upload_candidate_artifacts(
        self, run_id: str, bundle_dir: Path, report_files: Iterable[Path], artifact_uri: str | None = None
    ) -> None:
        """The bundle directory and the report files: artifact storage only, no tracking writes,
        so parallel training branches can do it at the same time.

        With the run's ``artifact_uri`` (from :meth:`artifact_uri`, looked up once by the flow's
        first step) and a local artifact store, the files are copied where MLflow's local
        artifact repository would put them, without importing MLflow and opening its tracking
        store: that start-up cost ~2–4 s of CPU in every training branch. Any other store goes
        through the MLflow client.
        """
        local = _local_artifact_dir(artifact_uri) if artifact_uri else None
        if local is not None:
            reports_dir = local / REPORTS_ARTIFACT
            reports_dir.mkdir(parents=True, exist_ok=True)
            for path in report_files:
                shutil.copy2(path, reports_dir / Path(path).name)
            shutil.copytree(bundle_dir, local / BUNDLE_ARTIFACT, dirs_exist_ok=True)
            return
        for path in report_files:
            self.client.log_artifact(run_id, str(path), REPORTS_ARTIFACT)
        self.client.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACT)

    def finish_candidate_run(
        self,
        run_id: str,
        name: str,
        params: Mapping[str, Any],
        reports: Mapping[str, dict[str, Any]],
        timings: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Params, per-seed and summary metrics of both protocols, timings; then close the run."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(datetime.now(UTC).timestamp() * 1000)
        metrics: list[Metric] = []
        for protocol, report in reports.items():
            entry = report.get("models", {}).get(name)
            if not entry:
                continue
            for key, value in entry["summary"].items():
                if isinstance(value, int | float) and math.isfinite(value):
                    metrics.append(Metric(metric_key(f"{protocol}.{key}"), float(value), now, 0))
            for seed, per_seed in entry["per_seed"].items():
                for key, value in per_seed.items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        metrics.append(
                            Metric(metric_key(f"{protocol}.seed.{key}"), float(value), now, int(seed))
                        )
        for key, seconds in (timings or {}).items():
            metrics.append(Metric(f"seconds.{key}", float(seconds), now, 0))
        if timings:
            metrics.append(Metric(TOTAL_SECONDS, float(sum(timings.values())), now, 0))
        flat = [Param(k, v) for k, v in flat_params(params).items()]
        run_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limits: 1000 metrics, 100 params
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        for start in range(0, max(len(flat), len(run_tags)), 100):
            self.client.log_batch(
                run_id, params=flat[start : start + 100], tags=run_tags[start : start + 100]
            )
        self.client.set_terminated(run_id, "FINISHED")

    # ------------------------------------------------------------------ versions and aliases

    def register(self, run_id: str, tags: Mapping[str, str], description: str = "") -> VersionInfo:
        """A new version of the registered model whose source is the run's bundle artifact.

        It is created ``pending`` (tag ``gate_decision``, in the same request): when the tracking
        store fails, or the flow dies, before :meth:`record_decision`, the version says the gate
        never decided on it, and ``movierec promote`` refuses it unless forced.
        """
        self._ensure_registered_model()
        run = self.client.get_run(run_id)
        pending = {
            "gate_decision": PENDING,
            "gate_reasons": reasons_tag(["registered; the gate has not decided yet"]),
        }
        mv = self.client.create_model_version(
            self.model_name, source=f"{run.info.artifact_uri}/{BUNDLE_ARTIFACT}", run_id=run_id,
            tags=pending | {k: str(v) for k, v in tags.items()}, description=description,
        )  # fmt: skip
        return VersionInfo.of(mv)

    def get(self, version: str | int) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            return VersionInfo.of(self.client.get_model_version(self.model_name, str(version)))
        except MlflowException as exc:
            if _not_found(exc):
                raise RegistryError(f"{self.model_name} has no version {version}") from exc
            raise RegistryError(f"cannot read version {version} at {self.display_uri}: {exc}") from exc

    def run_params(self, info: VersionInfo) -> dict[str, str] | None:
        """The hyper-parameters recorded with the version's candidate run (as :func:`flat_params`
        writes them); None when the version has no run or the run cannot be read."""
        from mlflow.exceptions import MlflowException

        if not info.run_id:
            return None
        try:
            return dict(self.client.get_run(info.run_id).data.params)
        except MlflowException:
            return None

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{self.model_name}'", max_results=10_000)
            aliases = self.client.get_registered_model(self.model_name).aliases or {}
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # nothing registered yet
                return []
            # an unreachable server is not "no versions": say so
            raise RegistryError(f"cannot list the versions at {self.display_uri}: {exc}") from exc
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():  # search results do not carry aliases
            by_version.setdefault(str(version), []).append(alias)
        infos = [VersionInfo.of(mv) for mv in found]
        infos = [replace(info, aliases=tuple(sorted(by_version.get(info.version, [])))) for info in infos]
        return sorted(infos, key=lambda v: int(v.version))

    def alias(self, alias: str) -> VersionInfo | None:
        """The version ``alias`` names; None when it names none (or no model is registered yet).

        RegistryError when the registry cannot be read: an unreachable tracking server is not
        "no champion" — the gate would judge the run's candidates against nothing and promote
        the best of them whatever it scored, and the scheduler would train "for a first champion".
        """
        from mlflow.exceptions import MlflowException

        try:
            return VersionInfo.of(self.client.get_model_version_by_alias(self.model_name, alias))
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise RegistryError(f"cannot read the {alias} alias at {self.display_uri}: {exc}") from exc

    def champion(self) -> VersionInfo | None:
        return self.alias(CHAMPION)

    def set_alias(self, alias: str, version: str | int) -> None:
        self.get(version)  # RegistryError for an unknown version
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def tag_version(self, version: str | int, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            text = value if isinstance(value, str) else json.dumps(value)
            self.client.set_model_version_tag(self.model_name, str(version), key, text)

    def record_decision(self, version: str | int, decision: str, reasons: list[str], **extra: Any) -> None:
        """Store the gate's (or an operator's) decision and its reasons with the version.

        The tags are written one request each, ``gate_decision`` last: a tracking store failing
        part way leaves the version's previous decision (``pending``, or the one ``promote``
        replaces) rather than the new one beside the old reasons.
        """
        self.tag_version(
            version,
            {"gate_reasons": reasons_tag(reasons),
             "gate_checked_at": datetime.now(UTC).isoformat(timespec="seconds"), **extra,
             "gate_decision": decision},
        )  # fmt: skip

    def download_bundle(self, version: str | int, destination: Path | str) -> Path:
        """Copy the version's bundle directory to ``destination`` and return the bundle dir."""
        import mlflow.artifacts

        info = self.get(version)
        if info.tags.get("artifacts_removed"):  # no download to try: say why it is gone
            raise RegistryError(f"version {version} has no bundle left: {info.tags['artifacts_removed']}")
        Path(destination).mkdir(parents=True, exist_ok=True)
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=info.source, dst_path=str(destination), tracking_uri=self.tracking_uri
            )
        except Exception as exc:
            raise RegistryError(
                f"version {version}: bundle artifact {info.source} could not be downloaded: {exc}"
            ) from exc
        return Path(path)

    def manifest(self, version: str | int) -> dict[str, Any] | None:
        """The version's bundle manifest, fetched alone (not the bundle); None when it cannot be
        read (its artifacts removed, a store that does not answer, no manifest)."""
        import tempfile

        from app.recommender.bundle import MANIFEST, read_manifest

        info = self.get(version)
        if info.tags.get("artifacts_removed"):
            return None
        manifest = None
        try:
            local = _local_artifact_dir(info.source)
            if local is not None:
                manifest = read_manifest(local)
            else:
                import mlflow.artifacts

                with tempfile.TemporaryDirectory(prefix="manifest-") as scratch:
                    path = mlflow.artifacts.download_artifacts(
                        artifact_uri=f"{info.source}/{MANIFEST}",
                        dst_path=scratch,
                        tracking_uri=self.tracking_uri,
                    )
                    manifest = read_manifest(Path(path).parent)
        except Exception:  # a store that does not answer: the caller goes on without it
            log.warning("could not fetch version %s's manifest at %s", version, info.source, exc_info=True)
            return None
        if manifest is None:
            log.warning("could not read version %s's manifest at %s", version, info.source)
        return manifest

    def open_bundle(self, version: str | int, scratch: Path | str) -> Path:
        """A readable directory of the version's bundle: the artifact itself when it is a local
        file (no copy), else a download into ``scratch``. For reading only."""
        info = self.get(version)
        local = _local_artifact_dir(info.source)
        if local is not None and local.is_dir():
            return local
        return self.download_bundle(version, scratch)
