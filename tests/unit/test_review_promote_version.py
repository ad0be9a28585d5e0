"""promote_version: when the champion alias cannot be moved after the export, the model store
serves what it served before -- also when it served nothing (a first promotion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.registry.export import promote_version, served_version
from tests.unit.test_review_registry_export import _registered

pytestmark = pytest.mark.unit


def test_an_alias_failure_on_an_empty_model_store_leaves_it_serving_nothing(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any
) -> None:
    registry, version, copy = _registered(tmp_path, personal_model_store)
    store = copy.parent
    assert not (store / "latest").exists()

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("tracking store down")

    monkeypatch.setattr(registry, "set_alias", broken)
    with pytest.raises(RuntimeError, match="tracking store down"):
        promote_version(registry, version, store)
    assert registry.champion() is None
    assert served_version(store) is None, "latest serves a version the registry does not name champion"
    assert not (store / "latest").is_symlink()


def test_promote_whose_decision_cannot_be_recorded_after_the_champion_moved_says_it_moved(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any
) -> None:
    """`movierec promote` moved the alias and the model store, then recording the `promoted`
    decision failed (the tracking store went away): it ended in an MlflowException traceback,
    which reads as nothing changed, and never asked the service to reload the new champion."""
    from click.testing import CliRunner
    from mlflow.exceptions import MlflowException

    from app.cli import cli
    from app.registry import export
    from app.registry.mlflow_registry import Registry

    registry, version, store = _passed_version_for_the_cli(
        tmp_path, personal_model_store, monkeypatch, service_url="http://127.0.0.1:9"
    )
    reloads: list[str | None] = []
    monkeypatch.setattr(
        export, "request_reload", lambda url, password, bundle: reloads.append(bundle) or False
    )

    def broken(*_a: Any, **_k: Any) -> None:
        raise MlflowException("the tracking store went away")

    monkeypatch.setattr(Registry, "record_decision", broken)
    result = CliRunner().invoke(cli, ["promote", "--version", version])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert f"champion is now v{version}" in result.output, result.output
    assert "recording the decision" in result.output and "the tracking store went away" in result.output
    champion = registry.champion()
    assert champion is not None and champion.version == version
    assert served_version(store) == champion.bundle_version
    assert reloads == [champion.bundle_version]  # the new champion is still asked to be served


def test_promote_whose_decision_is_recorded_only_in_part_shows_the_decision_it_names(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any
) -> None:
    """A decision is several version tags, written one by one, ``gate_decision`` first: when the
    tracking store went away after it, `promote` said "`movierec pipeline versions` still shows it
    passed" while the version read ``promoted`` beside its old reasons (and a gate interrupted so
    read as having decided). The decision is written last: it is there only with its reasons."""
    from click.testing import CliRunner
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from app.cli import cli

    registry, version, _store = _passed_version_for_the_cli(tmp_path, personal_model_store, monkeypatch)
    original = MlflowClient.set_model_version_tag

    def tags_then_gone(self: Any, name: str, number: Any, key: str, value: Any) -> Any:
        if key == "gate_reasons":
            raise MlflowException("the tracking store went away")
        return original(self, name, number, key, value)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", tags_then_gone)
    result = CliRunner().invoke(cli, ["promote", "--version", version, "--no-reload"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert "still shows it passed" in result.output, result.output
    monkeypatch.setattr(MlflowClient, "set_model_version_tag", original)
    after = registry.get(version)
    assert after.decision == "passed", (after.decision, after.reasons)
    assert after.reasons == ["smoke tests passed"]


def _passed_version_for_the_cli(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any, service_url: str = ""
) -> tuple[Any, str, Path]:
    """A registered version the gate passed, and the environment `movierec promote` reads: its
    registry under ``tmp_path / "var"``, its model store ``tmp_path / "store"``."""
    registry, version, _copy = _registered(tmp_path, personal_model_store)
    registry.record_decision(version, "passed", ["smoke tests passed"])
    store = tmp_path / "store"
    for name, value in {
        "MOVIEREC_TESTING": "true", "MOVIEREC_VAR_DIR": str(tmp_path / "var"),
        "MOVIEREC_MODEL_DIR": str(store), "MOVIEREC_SERVICE_URL": service_url,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    return registry, version, store


def test_promote_whose_alias_cannot_be_moved_says_nothing_was_moved(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any
) -> None:
    """The tracking store failing as `promote` moves the alias (an MlflowException, not a
    RegistryError) ended the command in a traceback, although ``latest`` was put back and nothing
    had moved. It exits 1 with one line saying nothing was moved, and why."""
    import shutil

    from click.testing import CliRunner
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from app.cli import cli
    from app.recommender.bundle import point_latest

    registry, version, store = _passed_version_for_the_cli(tmp_path, personal_model_store, monkeypatch)
    served = "20200101T000000-000000"  # what the model store serves before: a bundle of its own
    shutil.copytree((personal_model_store / "latest").resolve(), store / served)
    point_latest(store, served)

    def gone(*_a: Any, **_k: Any) -> None:
        raise MlflowException("the tracking store went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", gone)
    result = CliRunner().invoke(cli, ["promote", "--version", version, "--no-reload"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0] == result.output.strip().splitlines()[-1], result.output
    assert "nothing was moved" in error[0] and "the tracking store went away" in error[0], error
    assert served in error[0], error  # what the model store serves again
    assert registry.champion() is None
    assert (store / "latest").resolve().name == served
    assert registry.get(version).decision == "passed"


def test_promote_without_a_service_url_does_not_promise_a_reload_that_nobody_will_ask(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any
) -> None:
    """With MOVIEREC_SERVICE_URL empty (no service to tell), `movierec promote` printed 'service not
    reloaded (see the warning); it loads latest on start, and the scheduler's next tick asks it
    again': no warning was logged (an INFO line), and no reload-pending marker was left (no service,
    nothing pending), so no tick would ask anything."""
    from click.testing import CliRunner

    from app.cli import cli
    from app.registry.export import RELOAD_PENDING

    registry, version, store = _passed_version_for_the_cli(tmp_path, personal_model_store, monkeypatch)
    result = CliRunner().invoke(cli, ["promote", "--version", version])
    assert result.exit_code == 0, (result.output, result.exception)
    assert served_version(store) == registry.get(version).bundle_version
    assert not (tmp_path / "var" / "pipeline" / RELOAD_PENDING).exists()
    assert "next tick asks it again" not in result.output, result.output
    assert "see the warning" not in result.output, result.output
    assert (
        "no service asked to reload: MOVIEREC_SERVICE_URL is empty; a service loads latest when it starts"
        in result.output
    ), result.output


def test_promote_and_pipeline_run_while_the_scheduler_repairs_a_release_say_what_holds_the_lock(
    tmp_path: Path, personal_model_store: Path, monkeypatch: Any
) -> None:
    """A scheduler tick checks, under the flow lock, that the model store serves the champion, and
    may download its bundle from a slow tracking server meanwhile: `movierec promote` (and
    `pipeline run`) then failed with "a training flow is running", which none was. They name what
    holds the lock and say to try again."""
    import os
    import threading

    from click.testing import CliRunner

    from app.cli import cli
    from app.config import Settings
    from app.pipeline import runner
    from app.registry import export
    from tests.synthetic import write_grouplens

    _registry, version, _store = _passed_version_for_the_cli(tmp_path, personal_model_store, monkeypatch)
    monkeypatch.setenv("MOVIEREC_DATA_DIR", str(write_grouplens(tmp_path / "data")))
    settings = Settings()
    holding, done = threading.Event(), threading.Event()

    def slow_download(*_a: Any, **_k: Any) -> None:
        holding.set()
        done.wait(30)

    monkeypatch.setattr(export, "repair_served_champion", slow_download)
    repair = threading.Thread(target=runner.repair_release, args=(settings,))
    repair.start()
    try:
        assert holding.wait(30)
        promoted = CliRunner().invoke(cli, ["promote", "--version", version, "--no-reload"])
        with pytest.raises(runner.PipelineError) as flow:
            runner.run_flow(settings, timeout=60)
    finally:
        done.set()
        repair.join(30)
    assert promoted.exit_code == 1, (promoted.output, promoted.exception)
    for message in (promoted.output, str(flow.value)):
        assert "checking that the model store serves the registry's champion" in message, message
        assert f"pid {os.getpid()}" in message and "try again" in message, message
        assert "training flow is running" not in message, message
    promoted = CliRunner().invoke(cli, ["promote", "--version", version, "--no-reload"])
    assert promoted.exit_code == 0, (promoted.output, promoted.exception)  # free again once it ended
