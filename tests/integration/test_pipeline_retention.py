"""Retention of the registry's runs and the Metaflow datastore after each pipeline run.

Every pipeline run kept each candidate's MLflow run with its bundle and reports, and Metaflow's
run directory and data blobs, under the var root for good: a daily schedule filled the disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.pipeline import retention
from app.pipeline.runner import FLOW_NAME, PipelineError, flow_lock, run_flow
from app.registry.mlflow_registry import CHALLENGER, CHAMPION, Registry, RegistryError
from tests.helpers import flow_settings

pytestmark = pytest.mark.integration

FLOW_TIMEOUT = 600


def _settings(tmp_path: Path, keep: int) -> Settings:
    return flow_settings(tmp_path).model_copy(update={"pipeline_keep_runs": keep})


def _metaflow_root(settings: Settings) -> Path:
    return Path(settings.var_dir) / "metaflow" / ".metaflow" / FLOW_NAME


def _referenced_blobs(flow_root: Path) -> set[str]:
    return {
        sha
        for data in flow_root.glob("*/*/*/*.data.json")
        for sha in json.loads(data.read_text())["objects"].values()
    }


def _stored_blobs(flow_root: Path) -> set[str]:
    return {blob.name for blob in (flow_root / "data").glob("*/*") if not blob.name.endswith("_meta")}


def _add_version(registry: Registry, tmp_path: Path, name: str, decision: str) -> str:
    """One pipeline run with one candidate run (a bundle artifact) and its version, decided."""
    parent = registry.start_pipeline_run({"flow_owner": "owner"})
    run_id = registry.start_candidate_run(parent, name, {"flow_owner": "owner"})
    bundle = tmp_path / f"bundle-{name}"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"version": name}))
    registry.upload_candidate_artifacts(run_id, bundle, [], registry.artifact_uri(run_id))
    registry.finish_candidate_run(run_id, name, {}, {})
    registry.finish_pipeline_run(parent)
    version = registry.register(run_id, {"candidate": name, "bundle_version": name}).version
    registry.record_decision(version, decision, [decision])
    return version


def test_old_runs_go_but_every_version_in_use_keeps_its_artifacts(tmp_path: Path) -> None:
    settings = _settings(tmp_path, keep=1)
    registry = Registry.from_settings(settings)
    previous = _add_version(registry, tmp_path, "b-previous", "promoted")
    champion = _add_version(registry, tmp_path, "b-champion", "promoted")
    old = _add_version(registry, tmp_path, "b-old", "rejected")
    aliased = _add_version(registry, tmp_path, "b-aliased", "rejected")
    stored = _add_version(registry, tmp_path, "b-stored", "rejected")
    newest = _add_version(registry, tmp_path, "b-newest", "rejected")
    registry.set_alias(CHAMPION, champion)
    registry.set_alias(CHALLENGER, newest)
    registry.set_alias("canary", aliased)
    (Path(settings.model_dir) / "b-stored").mkdir(parents=True)  # a bundle the model store holds

    removed = retention.prune_mlflow(settings, owner="owner")

    assert removed == [registry.get(old).run_id]
    for version in (previous, champion, aliased, stored, newest):
        assert (registry.open_bundle(version, tmp_path / "scratch") / "manifest.json").is_file(), version
    gone = registry.get(old)  # the version's record stays, saying why its bundle cannot be had
    assert "MOVIEREC_PIPELINE_KEEP_RUNS" in gone.tags["artifacts_removed"]
    assert registry.client.get_run(gone.run_id).info.lifecycle_stage == "deleted"
    with pytest.raises(RegistryError, match=f"version {old} has no bundle left: .*KEEP_RUNS"):
        registry.open_bundle(old, tmp_path / "scratch")
    local = Path(registry.artifact_uri(gone.run_id).removeprefix("file://"))
    assert not local.exists() and not local.parent.exists()
    assert retention.prune_mlflow(settings, owner="owner") == []  # nothing more to remove


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Four flows with ``pipeline_keep_runs=2``: the disk use after each. Each promotes its model
    (the same data, as good as the champion); the model store keeps the served bundle and the
    previous champion's only, so the versions in use are those of the newest two runs."""
    settings = _settings(tmp_path_factory.mktemp("retention"), keep=2)
    settings = settings.model_copy(update={"model_keep_bundles": 1})
    mp = pytest.MonkeyPatch()
    mp.setattr(retention, "QUIET_SECONDS", 0.0)  # these runs are seconds apart, not hours
    sizes, flows = [], []
    try:
        for _ in range(4):
            flows.append(run_flow(settings, timeout=FLOW_TIMEOUT).summary)
            var = Path(settings.var_dir)
            sizes.append(
                sum(f.stat().st_size for f in var.rglob("*") if f.is_file() and "mlflow.db" not in f.name)
            )
    finally:
        mp.undo()
    return {"settings": settings, "sizes": sizes, "flows": flows}


def test_the_var_dir_stops_growing_after_the_kept_runs(bounded: dict[str, Any]) -> None:
    settings, sizes = bounded["settings"], bounded["sizes"]
    registry = Registry.from_settings(settings)
    live = registry.client.search_runs([registry.experiment_id], "tags.kind = 'pipeline'")
    champion_run = registry.get(registry.champion().version).tags.get("pipeline_run")
    newest = {flow["mlflow_run_id"] for flow in bounded["flows"][-2:]}
    assert {run.info.run_id for run in live} == newest | {champion_run}
    flow_root = _metaflow_root(settings)
    runs = sorted(p.name for p in flow_root.iterdir() if p.name.isdigit())
    assert runs == sorted(str(flow["metaflow_run_id"]) for flow in bounded["flows"][-2:])
    assert _stored_blobs(flow_root) == _referenced_blobs(flow_root)
    # each run removes as much as it adds: the fourth run grows the var dir by less than a tenth
    # of what the second added (the champion's first run is kept beside the newest two)
    assert sizes[3] - sizes[2] < (sizes[1] - sizes[0]) / 10, sizes


def test_a_failing_retention_is_logged_and_the_run_still_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> list[str]:
        raise OSError("disk on fire")

    monkeypatch.setattr(retention, "prune_mlflow", broken)
    monkeypatch.setattr(retention, "prune_metaflow", broken)
    with caplog.at_level(logging.ERROR, logger="app.pipeline.retention"):
        flow = run_flow(_settings(tmp_path, keep=1), timeout=FLOW_TIMEOUT)
    assert flow.summary["champion"]
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("MLflow" in m and "MOVIEREC_PIPELINE_KEEP_RUNS" in m for m in messages), messages
    assert any("Metaflow" in m for m in messages), messages
    assert all(
        r.exc_info and "disk on fire" in str(r.exc_info[1])
        for r in caplog.records
        if r.levelno >= logging.ERROR
    )


def test_retention_runs_while_the_launcher_holds_the_flow_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No other flow (nor a promote) can start, and use what is removed, while retention runs."""
    settings = _settings(tmp_path, keep=1)
    seen: list[str] = []

    def check_lock(*_args: Any, **_kwargs: Any) -> list[str]:
        with pytest.raises(PipelineError, match="another training flow is running"), flow_lock(settings):
            pass
        seen.append("locked")
        return []

    monkeypatch.setattr(retention, "prune_mlflow", check_lock)
    monkeypatch.setattr(retention, "prune_metaflow", check_lock)
    run_flow(settings, timeout=FLOW_TIMEOUT)
    assert seen == ["locked", "locked"]


class _Killed(BaseException):
    """The process killed part way (a BaseException: no ``except Exception`` catches it)."""


def _kill_on_entering(target: Any, name: str) -> Any:
    def killed(*_args: Any, **_kwargs: Any) -> Any:
        raise _Killed(name)

    return killed


def _kill_on_leaving(target: Any, name: str) -> Any:
    real = getattr(target, name)

    def killed(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise _Killed(name)

    return killed


@pytest.mark.parametrize(
    ("where", "attribute", "kill"),
    [
        ("artifacts", "delete_artifacts", _kill_on_entering),  # the versions tagged, nothing removed yet
        ("artifacts", "delete_artifacts", _kill_on_leaving),  # the artifacts gone, the run still active
        ("client", "delete_run", _kill_on_entering),  # the same, from the client's side
        ("client", "delete_run", _kill_on_leaving),  # the run marked deleted: the last step
    ],
)
def test_a_prune_killed_part_way_is_finished_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, attribute: str, kill: Any
) -> None:
    """A kill between marking a run deleted and removing its artifacts left them for good: the next
    pass lists only active runs. Now the run is marked deleted last, so the next pass retries it."""
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.tracking import MlflowClient

    settings = _settings(tmp_path, keep=1)
    registry = Registry.from_settings(settings)
    old = _add_version(registry, tmp_path, "b-old", "rejected")
    champion = _add_version(registry, tmp_path, "b-champion", "promoted")
    registry.set_alias(CHAMPION, champion)
    target = LocalArtifactRepository if where == "artifacts" else MlflowClient
    monkeypatch.setattr(target, attribute, kill(target, attribute))
    with pytest.raises(_Killed):
        retention.prune_mlflow(settings, owner="owner")
    monkeypatch.undo()
    # whatever was done, promote of the version says its bundle is going, never a failed download
    assert "MOVIEREC_PIPELINE_KEEP_RUNS" in registry.get(old).tags["artifacts_removed"]
    with pytest.raises(RegistryError, match=f"version {old} has no bundle left: .*KEEP_RUNS"):
        registry.download_bundle(old, tmp_path / "scratch")

    retention.prune_mlflow(settings, owner="owner")  # the next pass finishes what the kill left

    gone = registry.get(old)
    assert registry.client.get_run(gone.run_id).info.lifecycle_stage == "deleted"
    local = Path(registry.artifact_uri(gone.run_id).removeprefix("file://"))
    assert not local.exists() and not local.parent.exists()
    live = registry.client.search_runs([registry.experiment_id], "tags.kind = 'pipeline'")
    kept = registry.client.get_run(registry.get(champion).run_id).data.tags["mlflow.parentRunId"]
    assert [run.info.run_id for run in live] == [kept]  # the old pipeline run went too
    assert retention.prune_mlflow(settings, owner="owner") == []
