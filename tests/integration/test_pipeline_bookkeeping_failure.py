"""The registry's bookkeeping failing in the middle of a flow's ``release`` step.

Real flows (Metaflow subprocesses, MLflow on SQLite); the failure is injected into the flow's
processes by a ``sitecustomize`` module on their ``PYTHONPATH`` that makes one registry call
raise as a tracking store that went away would.

1. MLflow failing between registering the run's versions and recording the gate's decisions
   left the versions without any ``gate_decision``: ``pipeline versions`` showed ``-`` and
   ``movierec promote`` served one whose bundle the gate never smoke-tested, as if it passed.
2. MLflow failing after the champion moved (closing the pipeline run) was reported as a plain
   "the training flow failed", which reads as nothing changed, while the alias and the model
   store had moved to the new champion.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.pipeline.runner import BookkeepingError, PipelineError, run_flow
from app.registry.export import served_version
from app.registry.mlflow_registry import ABANDONED, Registry
from tests.helpers import flow_settings

pytestmark = pytest.mark.integration

FLOW_TIMEOUT = 600

_HOOK = """
from app.registry import mlflow_registry


def _broken(self, *args, **kwargs):
    from mlflow.exceptions import MlflowException

    raise MlflowException("injected: the tracking store went away")


setattr(mlflow_registry.Registry, {method!r}, _broken)
"""


def _fail_in_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """Make ``Registry.<method>`` raise in the flow's processes (not in this one)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_HOOK.format(method=method))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))


def test_versions_whose_gate_decision_was_not_recorded_cannot_be_promoted_as_if_they_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import cli

    settings = flow_settings(tmp_path)
    _fail_in_flow(tmp_path, monkeypatch, "record_decision")
    with pytest.raises(PipelineError, match="the training flow failed") as raised:
        run_flow(settings, timeout=FLOW_TIMEOUT)
    assert not isinstance(raised.value, BookkeepingError)  # nothing moved: a plain failure is the truth
    monkeypatch.delenv("PYTHONPATH")

    registry = Registry.from_settings(settings)
    versions = registry.versions()
    assert versions, "the flow failed before registering anything: not the failure under test"
    assert registry.champion() is None and served_version(settings.model_dir) is None
    version = versions[-1]
    # the launcher closed the failed run and, with it, its undecided versions
    assert version.decision == ABANDONED
    assert any("before the gate recorded a decision" in reason for reason in version.reasons)

    for name, value in {
        "MOVIEREC_TESTING": "true", "MOVIEREC_VAR_DIR": str(settings.var_dir),
        "MOVIEREC_MODEL_DIR": str(settings.model_dir), "MOVIEREC_SERVICE_URL": "",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    cli_runner = CliRunner()
    listed = cli_runner.invoke(cli, ["pipeline", "versions"])
    assert listed.exit_code == 0, listed.output
    assert ABANDONED in listed.output

    refused = cli_runner.invoke(cli, ["promote", "--version", version.version, "--no-reload"])
    assert refused.exit_code == 1, refused.output
    assert "no gate decision" in refused.output and "--force" in refused.output
    assert registry.champion() is None
    assert served_version(settings.model_dir) is None

    forced = cli_runner.invoke(cli, ["promote", "--version", version.version, "--no-reload", "--force"])
    assert forced.exit_code == 0, forced.output
    assert registry.champion() is not None and registry.champion().version == version.version
    promoted = registry.get(version.version)
    assert promoted.decision == "promoted"
    assert any("without a gate decision" in reason for reason in promoted.reasons), promoted.reasons


def test_a_run_whose_bookkeeping_fails_after_the_champion_moved_says_the_champion_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = flow_settings(tmp_path)
    _fail_in_flow(tmp_path, monkeypatch, "finish_pipeline_run")
    with pytest.raises(BookkeepingError) as raised:
        run_flow(settings, timeout=FLOW_TIMEOUT)
    monkeypatch.delenv("PYTHONPATH")

    registry = Registry.from_settings(settings)
    champion = registry.champion()
    assert champion is not None, "the failure came before the champion moved: not the failure under test"
    assert served_version(settings.model_dir) == champion.bundle_version
    summary = raised.value.summary
    assert summary["promoted"] == summary["champion"] == champion.version
    message = str(raised.value)
    assert f"champion is now v{champion.version}" in message, message
    assert "injected: the tracking store went away" in message, message
    # the pipeline run was not closed by the flow: the launcher marks it FAILED, so the
    # scheduler's skip check does not take it for a finished run
    runs = registry.client.search_runs(
        [registry.experiment_id], filter_string="tags.kind = 'pipeline'", max_results=10
    )
    assert [run.info.status for run in runs] == ["FAILED"]
    assert registry.last_pipeline_run() is None


_STUCK_RELOAD = """
import time
from pathlib import Path

from app.registry import export


def _stuck(*args, **kwargs):
    Path({reached!r}).write_text("asking the service to reload")
    time.sleep(600)  # a service that takes the request and never answers


export.request_reload = _stuck
"""


def test_a_flow_stopped_while_the_service_reloads_its_new_champion_says_the_champion_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher stopped (SIGTERM: a deploy; or its timeout) while the flow waited for the
    service to reload the champion it had just exported: the alias and the model store had moved,
    but the launcher said only 'the training flow was killed with its workers', which reads as
    nothing changed, and left no reload-pending marker, so the service kept the old model (and
    when the next run promoted nothing, nobody asked it again) until it restarted."""
    import threading

    import app.pipeline.runner as runner
    from app.pipeline.schedule import report_run
    from app.registry.export import RELOAD_PENDING

    settings = flow_settings(tmp_path).model_copy(update={"service_url": "http://127.0.0.1:9"})
    reached = tmp_path / "reload-reached"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_STUCK_RELOAD.format(reached=str(reached)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))

    def stop_once_the_reload_is_asked() -> None:
        for _ in range(FLOW_TIMEOUT * 10):
            if reached.is_file():
                runner.request_stop("SIGTERM")
                return
            threading.Event().wait(0.1)

    stopper = threading.Thread(target=stop_once_the_reload_is_asked, daemon=True)
    stopper.start()
    with pytest.raises(PipelineError) as raised:
        run_flow(settings, timeout=FLOW_TIMEOUT)
    stopper.join(timeout=5)
    monkeypatch.delenv("PYTHONPATH")
    assert reached.is_file(), f"the flow failed before asking for the reload: {raised.value}"

    registry = Registry.from_settings(settings)
    champion = registry.champion()
    assert champion is not None and served_version(settings.model_dir) == champion.bundle_version
    assert isinstance(raised.value, BookkeepingError), str(raised.value)
    message = str(raised.value)
    assert f"the champion is now v{champion.version} (promoted by this run" in message, message
    assert "the launcher was asked to stop (SIGTERM)" in message, message
    assert "during its release step, after exporting the champion's bundle" in message, message
    assert "marked FAILED" in message and "trains again" in message, message
    summary = raised.value.summary
    assert summary["champion"] == champion.version and summary["reloaded"] is False
    # the flow itself left the reload owed before asking (its launcher might have died with it)
    assert (Path(settings.var_dir) / "pipeline" / RELOAD_PENDING).is_file()
    # what a scheduler tick (or pipeline run) does with it: the service is asked again next tick
    report_run(settings, summary)
    assert (Path(settings.var_dir) / "pipeline" / RELOAD_PENDING).is_file()
    runs = registry.client.search_runs(
        [registry.experiment_id], filter_string="tags.kind = 'pipeline'", max_results=10
    )
    assert [run.info.status for run in runs] == ["FAILED"]
