"""The whole ML life cycle on synthetic data: Metaflow flow, MLflow registry, gate, serving.

Real components throughout: the flow runs as a Metaflow subprocess, the registry is MLflow
on SQLite with local artifacts, the service is the Flask app behind a real HTTP server on
loopback, feedback goes through the API. The stages build on each other (module-scoped
fixtures): first run → a worse candidate → rollback → feedback → code change.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.config import Settings
from app.pipeline.features_store import FeatureStore
from app.pipeline.ingest import FEEDBACK_USER_BASE
from app.pipeline.runner import FlowRun, PipelineError, features_root, flow_lock, run_flow
from app.pipeline.schedule import JOB_ID, serve, tick
from app.recommender.bundle import LATEST, load_bundle
from app.recommender.segments import Segment
from app.registry.export import served_version
from app.registry.mlflow_registry import CHALLENGER, Registry
from app.storage.db import Database
from app.storage.user_features import user_features_snapshot
from tests.helpers import ADMIN_PASSWORD, JWT_SECRET, SESSION_PASSWORD, login
from tests.synthetic import write_grouplens

pytestmark = pytest.mark.integration

FLOW_TIMEOUT = 600
# A segment no synthetic user belongs to: before feedback it backs off to coarser segments.
PROFILE = {"age": 30, "gender": "F", "occupation": "writer"}
N_FEEDBACK_REQUESTS = 12


class Lifecycle:
    def __init__(self, root: Path) -> None:
        store = root / "model"
        self.settings = Settings(
            testing=True,
            session_password=SESSION_PASSWORD,
            admin_password=ADMIN_PASSWORD,
            jwt_secret=JWT_SECRET,
            data_dir=write_grouplens(root / "data"),
            model_path=store,
            model_dir=store,
            var_dir=root / "var",
            database_url=f"sqlite:///{root / 'service.db'}",
            pipeline_candidates="most_liked,segment_most_liked",
            pipeline_seeds="0,1",
            service_url="",
        )
        self.store = store
        self.registry = Registry.from_settings(self.settings)
        self.runs: list[FlowRun] = []

    def run(self, **kwargs: Any) -> FlowRun:
        flow = run_flow(self.settings, timeout=FLOW_TIMEOUT, **kwargs)
        self.runs.append(flow)
        return flow


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Lifecycle:
    return Lifecycle(tmp_path_factory.mktemp("lifecycle"))


@pytest.fixture(scope="module")
def first_run(lifecycle: Lifecycle) -> dict[str, Any]:
    return lifecycle.run().summary


@pytest.fixture(scope="module")
def worse_run(lifecycle: Lifecycle, first_run: dict[str, Any]) -> dict[str, Any]:
    return lifecycle.run(candidates=["most_rated"]).summary


@pytest.fixture
def live_service(lifecycle: Lifecycle, make_app: Any) -> Iterator[tuple[str, Any]]:
    """The app on the lifecycle's model store and database, behind a real HTTP server."""
    from werkzeug.serving import make_server

    app = make_app(
        model_path=lifecycle.store, model_dir=lifecycle.store, data_dir=lifecycle.settings.data_dir,
        database_url=lifecycle.settings.database_url,
    )  # fmt: skip
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _served_version(app: Any) -> str:
    client = app.test_client()
    response = client.post("/api/recommend", json=PROFILE, headers=login(client))
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["model_version"])


def test_first_run_registers_every_candidate_and_serves_the_champion(
    lifecycle: Lifecycle, first_run: dict[str, Any]
) -> None:
    registry = lifecycle.registry
    by_candidate = {c["candidate"]: c for c in first_run["candidates"]}
    assert set(by_candidate) == {"most_liked", "segment_most_liked"}
    best = max(first_run["candidates"], key=lambda c: c["ndcg_a"])
    assert best["decision"] == "promoted", best["reasons"]
    assert first_run["promoted"] == best["version"] == first_run["champion"]
    champion = registry.champion()
    assert champion is not None and champion.version == best["version"]
    assert registry.alias(CHALLENGER).version == best["version"]

    # Every version carries its gate decision, reasons, code version and data hash.
    for entry in first_run["candidates"]:
        info = registry.get(entry["version"])
        assert info.decision == entry["decision"]
        assert any("smoke tests passed" in r for r in info.reasons)
        assert info.tags["code_version"] == first_run["code_version"]
        assert info.tags["data_hash"] == first_run["data_hash"]
        run = registry.client.get_run(info.run_id)
        assert run.data.metrics["A.ndcg_at_10_mean"] == pytest.approx(entry["ndcg_a"])
        assert "A.precision_at_10_mean" in run.data.metrics
        artifacts = {a.path for a in registry.client.list_artifacts(info.run_id, "reports")}
        assert {"reports/protocol-A.json", "reports/protocol-A.png"} <= artifacts
        if entry["summary_b"]:  # models that score known users are measured on protocol B too
            assert run.data.metrics["B.ndcg_at_10_mean"] == pytest.approx(entry["ndcg_b"])
            assert {"reports/protocol-B.json", "reports/protocol-B.png"} <= artifacts
        bundle_files = {a.path for a in registry.client.list_artifacts(info.run_id, "bundle")}
        assert {"bundle/manifest.json", "bundle/model.pkl", "bundle/segment_top.npy"} <= bundle_files

    # The champion's bundle is what the model store serves, and it loads.
    assert served_version(lifecycle.store) == champion.bundle_version
    assert load_bundle(lifecycle.store).manifest["served_model"] == champion.candidate
    assert (lifecycle.store / LATEST).resolve().name == champion.bundle_version

    # Features: a Parquet snapshot and the service's user_features table.
    store = FeatureStore(features_root(lifecycle.settings))
    assert store.latest() == first_run["features_snapshot"]
    assert store.meta()["data_hash"] == first_run["data_hash"]
    db = Database(lifecycle.settings.sqlalchemy_url)
    try:
        assert user_features_snapshot(db) == (first_run["features_snapshot"], 120)
    finally:
        db.dispose()

    assert len(first_run["code_version"]) == 12 and first_run["code_version"] != "0ld-code"

    # The pipeline run itself is tracked, finished, with what the scheduler compares.
    last = registry.last_pipeline_run()
    assert last is not None and last["run_id"] == first_run["mlflow_run_id"]
    assert (last["data_hash"], last["code_version"]) == (first_run["data_hash"], first_run["code_version"])


def test_a_worse_candidate_is_rejected_and_the_champion_stays(
    lifecycle: Lifecycle, first_run: dict[str, Any], worse_run: dict[str, Any]
) -> None:
    [entry] = worse_run["candidates"]
    assert entry["candidate"] == "most_rated"
    assert entry["decision"] == "rejected"
    assert worse_run["promoted"] is None
    assert worse_run["champion"] == worse_run["champion_before"] == first_run["champion"]
    info = lifecycle.registry.get(entry["version"])
    assert info.decision == "rejected"
    assert any(f"worse than champion v{first_run['champion']}" in r for r in info.reasons), info.reasons
    assert lifecycle.registry.champion().version == first_run["champion"]
    assert lifecycle.registry.alias(CHALLENGER).version == entry["version"]
    champion_bundle = lifecycle.registry.get(first_run["champion"]).bundle_version
    assert served_version(lifecycle.store) == champion_bundle
    assert worse_run["exported"] is None


def test_rollback_moves_the_alias_and_the_service_serves_the_older_version(
    lifecycle: Lifecycle, first_run: dict[str, Any], worse_run: dict[str, Any], live_service: tuple[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from app.cli import cli

    url, app = live_service
    registry = lifecycle.registry
    champion = registry.get(first_run["champion"])
    older = next(
        registry.get(c["version"]) for c in first_run["candidates"] if c["version"] != champion.version
    )
    assert _served_version(app) == champion.bundle_version

    for name, value in {
        "ADMIN_PASSWORD": ADMIN_PASSWORD, "MOVIEREC_VAR_DIR": str(lifecycle.settings.var_dir),
        "MOVIEREC_MODEL_DIR": str(lifecycle.store), "MOVIEREC_SERVICE_URL": url,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    result = runner.invoke(cli, ["promote", "--version", older.version, "--reason", "rollback test"])
    assert result.exit_code == 0, result.output
    assert "service reloaded" in result.output
    assert registry.champion().version == older.version
    assert served_version(lifecycle.store) == older.bundle_version
    assert _served_version(app) == older.bundle_version  # the running service swapped bundles
    assert any("rollback test: champion moved from" in r for r in registry.get(older.version).reasons)

    forward = runner.invoke(cli, ["promote", "--version", champion.version])
    assert forward.exit_code == 0, forward.output
    assert registry.champion().version == champion.version
    assert _served_version(app) == champion.bundle_version

    unknown = runner.invoke(cli, ["promote", "--version", "999"])
    assert unknown.exit_code == 1 and "has no version 999" in unknown.output
    assert registry.champion().version == champion.version

    # while a flow runs (it holds the var root's lock), a promotion would be overwritten by its gate
    with flow_lock(lifecycle.settings):
        busy = runner.invoke(cli, ["promote", "--version", older.version, "--no-reload"])
    assert busy.exit_code == 1 and "a training flow is running" in busy.output, busy.output
    assert registry.champion().version == champion.version
    assert served_version(lifecycle.store) == champion.bundle_version


def _rank_in_segment(registry: Registry, version: str, movie_id: int, tmp_path: Path) -> int:
    bundle = load_bundle(registry.download_bundle(version, tmp_path / f"v{version}"))
    served = bundle.recommend_segment(Segment.of(**PROFILE), len(bundle.catalogue))
    return [r.movie_id for r in served].index(movie_id)


def test_feedback_changes_the_next_model_and_unchanged_reruns_are_skipped(
    lifecycle: Lifecycle, first_run: dict[str, Any], worse_run: dict[str, Any], make_app: Any, tmp_path: Path
) -> None:
    registry = lifecycle.registry
    # Nothing changed since the last run: the schedule skips.
    skipped = tick(lifecycle.settings, runner=_no_run)
    assert not skipped.ran and skipped.decision.reason.startswith("neither data nor code changed")

    # People of one profile like a movie the current champion ranks near the bottom for them.
    app = make_app(
        model_path=lifecycle.store, model_dir=lifecycle.store, data_dir=lifecycle.settings.data_dir,
        database_url=lifecycle.settings.database_url,
    )  # fmt: skip
    client = app.test_client()
    headers = login(client)
    for _ in range(N_FEEDBACK_REQUESTS):
        response = client.post("/api/recommend", json={**PROFILE, "max_recs": 50}, headers=headers)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        target = body["items"][-1]
        score = {"id": body["id"], "movie": target["title"], "score": 5}
        scored = client.post("/api/recommend/score", json=score, headers=headers)
        assert scored.status_code == 200, scored.get_json()
    movie_id = int(target["movie_id"])
    segment_version = next(
        c["version"] for c in first_run["candidates"] if c["candidate"] == "segment_most_liked"
    )
    assert _rank_in_segment(registry, segment_version, movie_id, tmp_path) >= 40
    app.extensions["movierec"].close()

    # New feedback is new data: the schedule runs the flow.
    ran = tick(lifecycle.settings)
    assert ran.error is None, ran.error
    assert ran.ran and ran.decision.reason.startswith("data changed")
    summary = ran.summary or {}
    assert summary["ingest"]["feedback_ratings"] == N_FEEDBACK_REQUESTS
    assert summary["ingest"]["feedback_users"] == N_FEEDBACK_REQUESTS
    # The feedback rows are in the training set the run recorded.
    store = FeatureStore(features_root(lifecycle.settings))
    feedback = store.read("feedback", summary["features_snapshot"])
    assert len(feedback) == N_FEEDBACK_REQUESTS and set(feedback["movie_id"]) == {movie_id}
    assert (feedback["user_id"] > FEEDBACK_USER_BASE).all()
    training = store.read("ratings", summary["features_snapshot"])
    assert (
        len(training[(training["movie_id"] == movie_id) & (training["user_id"] > FEEDBACK_USER_BASE)]) == 12
    )

    # ... and the next model learned from it: that movie is now first for that profile.
    retrained = next(c["version"] for c in summary["candidates"] if c["candidate"] == "segment_most_liked")
    assert _rank_in_segment(registry, retrained, movie_id, tmp_path) == 0

    again = tick(lifecycle.settings, runner=_no_run)
    assert not again.ran and again.decision.reason.startswith("neither data nor code changed")


def test_a_code_change_triggers_a_new_run_and_a_new_model_version(
    lifecycle: Lifecycle, first_run: dict[str, Any], worse_run: dict[str, Any]
) -> None:
    registry = lifecycle.registry
    before = {v.version for v in registry.versions()}
    last = registry.last_pipeline_run()
    assert last is not None
    # The last run was made by an older version of the training code.
    registry.client.set_tag(last["run_id"], "code_version", "0ld-code")
    settings = lifecycle.settings.model_copy(update={"pipeline_candidates": "most_liked"})
    result = tick(settings)
    assert result.error is None, result.error
    # What the tick computed (the shared working tree may be edited while the tests run).
    current = result.decision.code_version
    assert len(current) == 12 and int(current, 16) >= 0
    assert result.ran and result.decision.reason == f"code changed (0ld-code → {current})"
    new_versions = [v for v in registry.versions() if v.version not in before]
    assert [v.candidate for v in new_versions] == ["most_liked"]
    assert new_versions[0].tags["code_version"] == current == (result.summary or {})["code_version"]
    assert json.loads(new_versions[0].tags["gate_reasons"])
    assert not tick(settings, runner=_no_run).ran


def test_the_scheduler_trains_at_start_only_when_there_is_no_champion(
    lifecycle: Lifecycle, first_run: dict[str, Any], tmp_path: Path
) -> None:
    calls: list[str] = []
    empty = lifecycle.settings.model_copy(update={"var_dir": tmp_path / "var"})  # a registry without versions
    for settings, expected in ((empty, ["job"]), (lifecycle.settings, [])):
        calls.clear()
        scheduler = serve(settings, job=lambda: calls.append("job"), blocking=False)
        try:
            assert calls == expected
            assert scheduler.running and scheduler.get_job(JOB_ID).next_run_time is not None
        finally:
            scheduler.shutdown(wait=False)


def test_a_failed_flow_is_reported_and_its_runs_never_count_as_finished(
    lifecycle: Lifecycle, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the features store cannot be created under a file")
    settings = lifecycle.settings.model_copy(
        update={
            "var_dir": tmp_path / "var",
            "features_root": str(blocker / "features"),
            "model_dir": tmp_path / "m",
        }
    )
    with pytest.raises(PipelineError, match="the training flow failed"):
        run_flow(settings, candidates=["most_liked"], timeout=FLOW_TIMEOUT)
    registry = Registry.from_settings(settings)
    runs = registry.client.search_runs([registry.experiment_id])
    assert {r.data.tags["kind"] for r in runs} == {"pipeline", "candidate"}
    assert {r.info.status for r in runs} == {"FAILED"}
    assert registry.last_pipeline_run() is None and registry.champion() is None
    assert not (tmp_path / "m").exists()


def _no_run(*_args: Any, **_kwargs: Any) -> FlowRun:
    raise AssertionError("the schedule should have skipped this tick")


def test_scheduled_runs_still_promote_after_a_champion_measured_on_other_seeds(tmp_path: Path) -> None:
    """The first run was a trial with `--seeds 42` (no champion: promoted). Every later run on the
    configured seeds (the scheduler's, MOVIEREC_PIPELINE_SEEDS=0,1) has no seed in common with
    that champion and is refused as not comparable: the scheduler trains at each data/code change
    and never promotes again, whatever the candidates score."""
    from app.pipeline.runner import run_flow
    from tests.helpers import flow_settings

    settings = flow_settings(tmp_path, seeds="0,1")
    trial = run_flow(settings, ["most_liked"], [42], "manual", timeout=600).summary
    assert trial["promoted"]
    scheduled = run_flow(settings, None, None, "schedule", timeout=600).summary
    decision = scheduled["candidates"][0]
    assert scheduled["promoted"], json.dumps(decision.get("reasons"))
    # The champion's recipe was re-evaluated on the configured seeds: no candidate needed its 42.
    assert decision["comparison"] == "same_data"
    assert set(Registry.from_settings(settings).get(decision["version"]).ndcg_a_by_seed or {}) == {0, 1}


def test_the_gate_compares_with_the_champion_on_this_runs_data(tmp_path: Path) -> None:
    """The champion's stored NDCG was measured on the data it was trained on. After the data
    changed, a candidate better than the champion's own recipe on the new data was refused
    against that stale figure: the gate re-evaluates the champion's recipe on the run's splits."""
    from app.pipeline.gate import SAME_DATA
    from tests.helpers import flow_settings

    settings = flow_settings(tmp_path, seeds="0,1")
    write_grouplens(settings.data_dir, seed=4)  # the data the champion is trained and measured on
    first = run_flow(settings, ["most_liked"], None, "manual", timeout=FLOW_TIMEOUT).summary
    assert first["promoted"]
    stored = first["candidates"][0]["ndcg_a"]

    write_grouplens(settings.data_dir, seed=7)  # the data drifted: every model scores lower on it
    second = run_flow(settings, ["most_rated"], None, "schedule", timeout=FLOW_TIMEOUT).summary
    [entry] = second["candidates"]
    assert entry["ndcg_a"] < stored - settings.gate_tolerance  # worse than the stale figure ...
    assert entry["decision"] == "promoted", entry["reasons"]  # ... not than the champion's recipe today
    assert entry["comparison"] == SAME_DATA
    assert any("re-evaluated on this run's data" in r for r in entry["reasons"]), entry["reasons"]
    info = Registry.from_settings(settings).get(entry["version"])
    assert info.tags["gate_comparison"] == SAME_DATA


def test_a_run_on_a_subset_of_the_data_does_not_replace_the_champion(tmp_path: Path) -> None:
    """The gate measures the champion's recipe on the run's own data: with the raw files swapped
    for half of them, the run's candidate was "not worse" on that half and replaced a champion
    trained on twice the data. The run is refused, until the operator allows it for one run."""
    from tests.helpers import flow_settings

    settings = flow_settings(tmp_path, seeds="0,1")
    first = run_flow(settings, ["most_liked"], None, "manual", timeout=FLOW_TIMEOUT).summary
    assert first["promoted"]
    full = first["ingest"]
    for name, separator in (("u.data", "\t"), ("u.user", "|")):  # the first half of the users
        path = settings.data_dir / name
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(line for line in lines if int(line.split(separator)[0]) <= 60))

    second = run_flow(settings, ["most_liked"], None, "schedule", timeout=FLOW_TIMEOUT).summary
    [entry] = second["candidates"]
    assert second["promoted"] is None and second["champion"] == first["champion"], entry["reasons"]
    assert entry["decision"] == "rejected"
    why = entry["reasons"][-1]
    assert why.startswith(f"less training data than champion v{first['champion']}")
    assert f"vs champion v{first['champion']}'s {full['n_ratings']} ratings, 120 users" in why
    registry = Registry.from_settings(settings)
    assert registry.get(entry["version"]).reasons == entry["reasons"]
    assert registry.get(entry["version"]).tags["n_users"] == "60"

    allowed = settings.model_copy(update={"gate_min_data_fraction": 0.0})  # pipeline run --allow-less-data
    third = run_flow(allowed, ["most_liked"], None, "manual", timeout=FLOW_TIMEOUT).summary
    assert third["promoted"] and third["champion"] == third["promoted"], third["candidates"][0]["reasons"]
    assert any("the data-size check is off" in r for r in third["candidates"][0]["reasons"])


def test_too_little_data_fails_a_run_in_one_line_and_later_ticks_train_nothing(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Data too small for a split failed every candidate's train step in evaluation, after the
    features snapshot was published and the MLflow runs opened: `pipeline run` showed a traceback
    per candidate, the scheduler logged and mailed the output's tail, and each tick did it again.
    The flow's first step refuses such data in one line, and nothing is trained or written."""
    import logging

    import app.pipeline.commands as commands
    from app.cli import cli

    full = write_grouplens(tmp_path / "full")
    tiny = tmp_path / "tiny"  # two users: round(0.2 * 2) = 0 test users in protocol A
    tiny.mkdir()
    for name, separator in (("u.data", "\t"), ("u.user", "|")):
        lines = (full / name).read_text().splitlines(keepends=True)
        (tiny / name).write_text("".join(line for line in lines if line.split(separator)[0] in ("1", "2")))
    (tiny / "u.item").write_bytes((full / "u.item").read_bytes())
    settings = Settings(
        testing=True, session_password=SESSION_PASSWORD, admin_password=ADMIN_PASSWORD, jwt_secret=JWT_SECRET,
        data_dir=tiny, model_path=tmp_path / "model", model_dir=tmp_path / "model", var_dir=tmp_path / "var",
        database_url=postgres_url, pipeline_candidates="most_liked", pipeline_seeds="0", service_url="",
        pipeline_timeout_seconds=FLOW_TIMEOUT,
    )  # fmt: skip
    reason = "too little data to train on (data "
    cause = "protocol A, split seed 0: no test user (0 of 2 users) rated a movie 4 or more"

    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    result = CliRunner().invoke(cli, ["pipeline", "run"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith(f"Error: {reason}") and cause in errors[0], errors

    with caplog.at_level(logging.INFO, logger="app.pipeline.schedule"):
        ticks = [tick(settings), tick(settings)]  # the next tick: the same data, the same refusal
        ratings = tiny / "u.data"  # one rating fewer: new data, still too little
        ratings.write_text("".join(ratings.read_text().splitlines(keepends=True)[:-1]))
        ticks.append(tick(settings))
    for done in ticks:
        assert not done.ran and done.error is not None
        assert done.error.startswith(reason) and cause in done.error and "\n" not in done.error
    assert ticks[2].error != ticks[1].error  # another data hash
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failed) == 3 and all("\n" not in r.getMessage() for r in failed), failed
    assert all(cause in r.getMessage() for r in failed), failed
    # an ERROR (mailed) when the refusal is new, a WARNING when a retry meets the same data refused
    # the same way: without a champion the scheduler retries up to hourly, and each try mailed it
    assert [r.levelno for r in failed] == [logging.ERROR, logging.WARNING, logging.ERROR], failed
    assert "the data has not changed" in failed[1].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    registry = Registry.from_settings(settings)
    assert registry.client.search_runs([registry.experiment_id]) == []  # nothing recorded as a run
    assert registry.champion() is None and not (tmp_path / "model").exists()
    assert FeatureStore(features_root(settings)).latest() is None  # no snapshot published
