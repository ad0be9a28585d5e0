"""The life cycle under failure: the tracking server down, the service not reloading."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.config import Settings
from app.pipeline import runner, schedule
from app.registry.mlflow_registry import Registry, RegistryError

pytestmark = pytest.mark.unit


@pytest.fixture
def closed_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> str:
    """A tracking server URI on a port nobody listens on; MLflow gives up at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_tracking_server_is_not_read_as_no_champion(closed_tracking_uri: str) -> None:
    """``champion()`` answered None for any MLflow error: the gate then judged the run's
    candidates against no champion at all, and ``get`` said a version did not exist."""
    registry = Registry(closed_tracking_uri)
    with pytest.raises(RegistryError, match=f"cannot read .* at {closed_tracking_uri}"):
        registry.champion()
    with pytest.raises(RegistryError) as raised:
        registry.get("3")
    assert "has no version" not in str(raised.value) and closed_tracking_uri in str(raised.value)


def test_a_missing_champion_or_version_is_still_none_or_unknown(tmp_path: Path) -> None:
    registry = Registry.from_settings(Settings(testing=True, var_dir=tmp_path / "var"))
    assert registry.champion() is None  # no registered model yet
    registry._ensure_registered_model()
    assert registry.champion() is None  # a registered model without the alias
    with pytest.raises(RegistryError, match="movierec has no version 3"):
        registry.get("3")


def test_the_schedule_does_not_train_when_it_cannot_read_the_champion(
    tmp_path: Path, closed_tracking_uri: str
) -> None:
    """With the tracking server down the tick read "no champion yet" and launched a flow."""
    settings = Settings(testing=True, var_dir=tmp_path / "var", mlflow_tracking_uri=closed_tracking_uri)
    launched: list[str] = []

    def fake_runner(s: Settings, trigger: str) -> runner.FlowRun:
        launched.append(trigger)
        return runner.FlowRun({}, 0.0, "")

    result = schedule.tick(settings, fake_runner, lambda s: ("d1", "c1"))
    assert launched == []
    assert result.decision.reason == "registry unavailable"
    assert result.error and closed_tracking_uri in result.error


def test_promote_says_the_tracking_server_is_unreachable_not_that_the_version_is_unknown(
    tmp_path: Path, closed_tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import cli

    for name, value in {
        "MOVIEREC_TESTING": "true",
        "MOVIEREC_VAR_DIR": str(tmp_path / "var"),
        "MOVIEREC_MODEL_DIR": str(tmp_path / "model"),
        "MOVIEREC_MLFLOW_TRACKING_URI": closed_tracking_uri,
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["promote", "--version", "3", "--no-reload"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert "has no version" not in result.output
    assert f"cannot read version 3 at {closed_tracking_uri}" in result.output
    assert not (tmp_path / "model" / "latest").exists()
