"""Life-cycle defects found in review: CLI input errors, the cron semantics, one flow at a time."""

from __future__ import annotations

import json
import subprocess  # nosec B404 - the flow's subprocess.run is replaced by a fake here
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.config import Settings
from app.pipeline import runner
from app.pipeline.runner import PipelineError, run_flow
from app.pipeline.schedule import cron_trigger
from tests.helpers import free_port

pytestmark = pytest.mark.unit


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's settings from the environment, everything under ``tmp_path``."""
    for name, value in {
        "MOVIEREC_TESTING": "true",
        "MOVIEREC_VAR_DIR": str(tmp_path / "var"),
        "MOVIEREC_MODEL_DIR": str(tmp_path / "model"),
        "MOVIEREC_DATABASE_URL": f"sqlite:///{tmp_path / 'service.db'}",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MOVIEREC_MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _fires(expression: str, after: datetime, until: datetime) -> list[datetime]:
    trigger, previous, now = cron_trigger(expression), None, after
    fires: list[datetime] = []
    while True:
        now = trigger.get_next_fire_time(previous, now)
        if now is None or now > until:
            return fires
        fires.append(now)
        previous, now = now, now + timedelta(seconds=1)


def test_a_restricted_day_and_weekday_fire_on_either_as_in_cron() -> None:
    """'0 3 1 * 1' is cron's "the 1st and every Monday", not "a Monday that is the 1st"."""
    start = datetime(2026, 12, 3, tzinfo=UTC)  # a Thursday
    fires = _fires("0 3 1 * 1", start, datetime(2027, 1, 12, tzinfo=UTC))
    assert [f.date().isoformat() for f in fires] == [
        "2026-12-07", "2026-12-14", "2026-12-21", "2026-12-28", "2027-01-01", "2027-01-04", "2027-01-11",
    ]  # fmt: skip
    assert all(f.hour == 3 and f.minute == 0 for f in fires)
    # a field starting with '*' keeps cron's AND: every other day, Mondays only
    other = _fires("0 3 */2 * 1", start, datetime(2027, 1, 12, tzinfo=UTC))
    assert all(f.weekday() == 0 and f.day % 2 == 1 for f in other) and other


def test_schedule_refuses_a_bad_cron_expression_with_a_usage_error(cli_env: Path) -> None:
    from app.cli import cli

    result = CliRunner().invoke(cli, ["schedule", "--cron", "61 3 * * 1"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --cron" in result.output and "61" in result.output
    assert not isinstance(result.exception, ValueError)


def test_schedule_once_refuses_a_bad_cron_expression_before_running_anything(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/pipeline.md: an invalid expression is refused (exit 2), --once included."""
    from app.cli import cli

    monkeypatch.setenv("MOVIEREC_SCHEDULE_CRON", "61 * * * *")
    result = CliRunner().invoke(cli, ["schedule", "--once"])
    assert result.exit_code == 2, result.output
    assert "MOVIEREC_SCHEDULE_CRON" in result.output and "61" in result.output


def test_train_and_evaluate_refuse_unknown_models_and_empty_seeds(
    cli_env: Path, synthetic_data_dir: Path
) -> None:
    from app.cli import cli

    data = ["--data-dir", str(synthetic_data_dir)]
    for args in (
        ["train", *data, "--model-dir", str(cli_env / "m"), "--models", "most_liked,not_a_model"],
        ["evaluate", *data, "--models", "not_a_model", "--out", str(cli_env / "r.json")],
        ["evaluate", *data, "--models", "most_liked", "--seeds", ",", "--out", str(cli_env / "r.json")],
        ["evaluate", *data, "--models", "most_liked", "--seeds", "a", "--out", str(cli_env / "r.json")],
        ["train", *data, "--model-dir", str(cli_env / "m"), "--seeds", "0,x"],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert "Invalid value for --models" in result.output or "Invalid value for --seeds" in result.output
    assert not (cli_env / "m").exists()


def test_accuracy_reports_profiles_outside_the_segments_without_a_traceback(
    cli_env: Path, personal_model_store: Path
) -> None:
    from app.cli import cli

    bundle = (personal_model_store / "latest").resolve()
    good = json.loads((bundle / "test_data.json").read_text())
    for profile in (
        {"gender": "M", "occupation": "other"},
        {"age": 30, "gender": "M", "occupation": "astronaut"},
    ):
        bad = cli_env / "bad.json"
        bad.write_text(json.dumps(good | {"data": [profile], "target": [["x"]]}))
        result = CliRunner().invoke(cli, ["accuracy", str(bundle), str(bad)])
        assert result.exit_code == 1, result.output
        assert "Error: test data holds a profile that is not a known segment" in result.output
        assert isinstance(result.exception, SystemExit)


def test_pipeline_versions_never_prints_the_tracking_servers_password(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import cli
    from app.registry.mlflow_registry import Registry

    monkeypatch.setenv("MOVIEREC_MLFLOW_TRACKING_URI", "postgresql://mlflow:s3cr3t-pw@db.example:5432/mlflow")
    monkeypatch.setattr(Registry, "versions", lambda self: [])
    result = CliRunner().invoke(cli, ["pipeline", "versions"])
    assert result.exit_code == 0, result.output
    assert "s3cr3t-pw" not in result.output
    assert "no versions of movierec registered at postgresql://mlflow:" in result.output


def test_an_unreachable_tracking_server_s_error_never_prints_its_password(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The URI the command names was masked, but the MLflow error after it quotes the request's
    URL with the user and password ("API request to http://bob:pw@host/api/... failed"): the
    ``Error:`` line of every command that read the registry printed the password. A real client
    against a port where nothing listens."""
    import socket

    from app.cli import cli

    with socket.socket() as probe:  # bound, then released: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MOVIEREC_MLFLOW_TRACKING_URI", f"http://bob:S3cr3t-pw@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    result = CliRunner().invoke(cli, ["pipeline", "versions"])
    assert result.exit_code == 1, result.output
    assert "Error: cannot list the versions at http://bob:" in result.output
    assert "Connection refused" in result.output  # the cause is still told
    assert "S3cr3t-pw" not in result.output


@pytest.mark.parametrize("args", [["pipeline", "versions"], ["promote", "--version", "1", "--no-reload"]])
def test_a_tracking_server_that_is_down_fails_the_command_in_seconds(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """MLflow retries a request to a tracking server 7 times with backoff
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES): ``pipeline versions`` and ``promote`` waited about 4 minutes
    on a server that is down before saying so. Their first request now gives up after a few
    seconds; the variable is left as it was found (unset here), for the calls after it."""
    import os
    import socket
    import time

    from app.cli import cli

    with socket.socket() as probe:  # bound, then released: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MOVIEREC_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    started = time.monotonic()
    result = CliRunner().invoke(cli, args)
    elapsed = time.monotonic() - started
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert f"127.0.0.1:{port}" in result.output and "Connection refused" in result.output, result.output
    assert elapsed < 60, f"{elapsed:.0f} s"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def _fake_flows(monkeypatch: pytest.MonkeyPatch, fake_run: Callable[..., Any]) -> None:
    """Launch ``fake_run`` instead of the flow: it replaces ``runner._run``, which starts the
    flow's process (patching ``subprocess`` itself let a change of how it starts it launch real
    flows in these tests)."""

    def run(command: list[str], env: dict[str, str], *_args: Any, **_kwargs: Any) -> tuple[int, str]:
        assert "--summary-path" in command
        completed = fake_run(command, env=env)
        return completed.returncode, completed.stdout or ""

    monkeypatch.setattr(runner, "_run", run)


def test_a_second_flow_is_refused_while_one_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two flows on one registry would each gate against the champion they read and the last
    one would win the alias, however it compared with the other's promoted model."""
    settings = Settings(testing=True, var_dir=tmp_path / "var", data_dir=tmp_path / "data")
    launched: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        launched.append(command)
        if len(launched) == 1:  # another run (the scheduler's tick) starts while this one is going
            with pytest.raises(PipelineError, match="another training flow is running"):
                run_flow(settings, trigger="schedule")
        summary = Path(command[command.index("--summary-path") + 1])
        summary.write_text(json.dumps({"run": len(launched)}))
        return subprocess.CompletedProcess(command, 0, "", None)

    _fake_flows(monkeypatch, fake_run)
    assert run_flow(settings).summary == {"run": 1}
    assert len(launched) == 1
    assert run_flow(settings).summary == {"run": 2}  # released when the run ended


def test_runs_of_a_flow_killed_outright_are_closed_by_the_next_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher killed with SIGKILL never marks its runs FAILED: they stayed RUNNING for ever.
    The next flow of the same var root (it holds the lock, so none of its runs can be going)
    closes them; a run of another var root sharing the tracking server is left alone."""
    from app.registry.mlflow_registry import FLOW_OWNER_TAG, Registry

    settings = Settings(testing=True, var_dir=tmp_path / "var", data_dir=tmp_path / "data")
    owner = runner.flow_owner(settings)
    assert runner.flow_owner(settings) == owner and len(owner) == 32  # created once, then read
    registry = Registry.from_settings(settings)
    ours = registry.start_pipeline_run({FLOW_OWNER_TAG: owner, "trigger": "schedule"})
    theirs = registry.start_pipeline_run({FLOW_OWNER_TAG: "f" * 32, "trigger": "schedule"})
    envs: list[dict[str, str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        envs.append(kwargs["env"])
        Path(command[command.index("--summary-path") + 1]).write_text("{}")
        return subprocess.CompletedProcess(command, 0, "", None)

    _fake_flows(monkeypatch, fake_run)
    run_flow(settings)
    assert registry.client.get_run(ours).info.status == "KILLED"
    assert registry.client.get_run(theirs).info.status == "RUNNING"
    assert envs[0][runner.FLOW_OWNER_ENV] == owner  # the flow tags its own runs with it


def test_a_failed_flow_s_error_never_carries_a_password_its_output_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed flow's error quotes its output (the last exception line, and its last lines when
    captured): a flow that lost its tracking server mid-run printed MLflow's error, which names
    the request's URL with the user and password, and the launcher's Error: line, the scheduler's
    log line and its alert e-mail carried the password on."""
    settings = Settings(testing=True, var_dir=tmp_path / "var", data_dir=tmp_path / "data")
    output = (
        "Traceback (most recent call last):\n"
        "mlflow.exceptions.MlflowException: API request to http://bob:S3cr3t-pw@mlflow.internal:5000"
        "/api/2.0/mlflow/runs/log-batch failed with exception ConnectionError\n"
    )

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 1, output, None)

    _fake_flows(monkeypatch, fake_run)
    with pytest.raises(PipelineError) as failed:
        run_flow(settings)
    assert "MlflowException: API request to http://bob:" in str(failed.value)
    assert "mlflow.internal:5000" in str(failed.value)
    assert "S3cr3t-pw" not in str(failed.value)


class _TagClient:
    """The one MlflowClient call record_decision makes, kept in memory."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags[key] = value


def test_long_gate_reasons_stay_readable_json_within_mlflows_tag_limit() -> None:
    """A long --reason (or many rollbacks appending one each) used to be cut mid-JSON, and the
    next ``movierec promote`` of that version crashed reading it, after moving the alias."""
    from app.registry.mlflow_registry import Registry, VersionInfo

    registry = Registry("sqlite:///unused.db")
    client = _TagClient()
    registry._client = client  # type: ignore[assignment]
    history = [f"manual promotion: champion moved from v{i} to v1" for i in range(200)]
    for reasons in (["smoke tests passed", "rollback: " + "x" * 6000], history, ["é" * 3000]):
        registry.record_decision("1", "promoted", reasons)
        tag = client.tags["gate_reasons"]
        assert len(tag) <= 4900
        kept = json.loads(tag)
        assert kept[-1][:20] == reasons[-1][:20]  # the newest reason survives
    assert kept and len(json.loads(client.tags["gate_reasons"])) == 1
    info = VersionInfo("1", "c", "b", None, None, "", {"gate_reasons": '["cut mid-str'}, ())
    assert info.reasons == ['["cut mid-str']  # written by the old code: readable, not a crash


class _Runs:
    """A registry with a champion; the last finished pipeline run trained ``last``, all the
    finished runs on the same data and code together ``earlier`` too."""

    def __init__(self, last: str, earlier: str = "", seeds: str | None = None) -> None:
        self.last = {"data_hash": "d1", "code_version": "c1", "run_id": "r9", "candidates": last}
        if seeds is not None:  # the split seeds the last run evaluated (no tag: an older movierec's run)
            self.last["seeds"] = seeds
        self.earlier = {*last.split(","), *filter(None, earlier.split(","))}
        self.asked_seeds: list[tuple[int, ...]] = []

    def champion(self) -> object:
        return object()

    def last_pipeline_run(self) -> dict[str, str]:
        return self.last

    def trained_candidates(self, data_hash: str, code_version: str, seeds: Any = ()) -> set[str]:
        assert (data_hash, code_version) == ("d1", "c1")
        self.asked_seeds.append(tuple(seeds))
        return set() if self.last.get("seeds") == "0" else self.earlier


def test_the_schedule_trains_the_configured_candidates_a_manual_run_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an operator's `pipeline run --candidates segment_most_liked` on new data or code,
    the scheduler skipped for good: its own candidates were never trained on them."""
    from app.pipeline import schedule

    settings = Settings(testing=True, var_dir=tmp_path / "var", pipeline_candidates="most_liked,most_rated")
    ran: list[str] = []

    def fake_runner(s: Settings, trigger: str) -> runner.FlowRun:
        ran.append(trigger)
        return runner.FlowRun({"ok": True}, 0.0, "")

    def tick(registry: _Runs, candidates: list[str] | None = None) -> schedule.TickResult:
        monkeypatch.setattr(schedule.Registry, "from_settings", lambda s: registry)
        return schedule.tick(settings, fake_runner, lambda s: ("d1", "c1"), candidates)

    result = tick(_Runs("segment_most_liked"))
    assert result.ran and ran == ["schedule"]
    assert result.decision.reason == "most_liked, most_rated never trained on this data and code"
    # trained on the same data and code, by the last run or an earlier one: nothing new to learn
    assert not tick(_Runs("most_rated,most_liked,segment_most_liked")).ran
    assert not tick(_Runs("segment_most_liked", earlier="most_liked,most_rated")).ran
    assert not tick(_Runs("segment_most_liked"), candidates=["segment_most_liked"]).ran
    assert tick(_Runs("segment_most_liked"), candidates=["most_liked"]).ran


def test_the_schedule_evaluates_the_configured_seeds_a_manual_run_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an operator's quick `pipeline run --seeds 0` on new data, the scheduler skipped for
    good ("neither data nor code changed"): the configured split seeds were never evaluated on
    that data, and a champion that trial promoted had been gated on one split. Each pipeline
    run now records the seeds it evaluated (tag ``seeds``); a tick trains when no finished run
    on this data and code evaluated the configured ones, as it does for the candidates."""
    from app.pipeline import schedule

    settings = Settings(
        testing=True, var_dir=tmp_path / "var", pipeline_candidates="most_liked", pipeline_seeds="0,1,2"
    )

    def tick(registry: _Runs) -> schedule.TickResult:
        monkeypatch.setattr(schedule.Registry, "from_settings", lambda s: registry)
        return schedule.tick(settings, lambda s, trigger: runner.FlowRun({}, 0.0, ""), lambda s: ("d1", "c1"))

    trial = _Runs("most_liked", seeds="0")
    result = tick(trial)
    assert result.ran, result.decision.reason
    assert "split seeds 0,1,2" in result.decision.reason, result.decision.reason
    assert trial.asked_seeds == [(0, 1, 2)]
    assert not tick(_Runs("most_liked", seeds="0,1,2,7")).ran
    assert not tick(_Runs("most_liked")).ran  # an older movierec's run: taken as the configured seeds


def test_an_unreachable_registry_is_a_clear_error_without_its_password(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tracking URI naming a database that does not exist: `pipeline versions` and `promote`
    crashed with the SQLAlchemy traceback MLflow's client raises when it opens the store."""
    import mlflow

    from app.cli import cli

    def unreachable(**kwargs: Any) -> None:
        raise RuntimeError('connection failed: FATAL:  database "movierec_no_such_db" does not exist')

    monkeypatch.setattr(mlflow, "MlflowClient", unreachable)
    monkeypatch.setenv(
        "MOVIEREC_MLFLOW_TRACKING_URI",
        "postgresql+psycopg://postgres:s3cr3t-pw@127.0.0.1:5432/movierec_no_such_db",
    )
    for args in (["pipeline", "versions"], ["promote", "--version", "1", "--no-reload"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output, result.exception)
        assert isinstance(result.exception, SystemExit)
        assert "Error: cannot open the registry at postgresql+psycopg://postgres:" in result.output
        assert "movierec_no_such_db" in result.output and "s3cr3t-pw" not in result.output


def test_an_unknown_log_level_is_a_usage_error_naming_the_levels(cli_env: Path) -> None:
    """`movierec --log-level bogus …` was a ValueError traceback from logging (exit 1)."""
    from app.cli import cli

    result = CliRunner().invoke(cli, ["--log-level", "bogus", "db", "--help"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Invalid value for '--log-level'" in result.output and "'warning'" in result.output
    assert not isinstance(result.exception, ValueError)
    # the level stays case-insensitive, as it was
    result = CliRunner().invoke(cli, ["--log-level", "debug", "db", "--help"])
    assert result.exit_code == 0, (result.output, result.exception)


def test_pipeline_run_names_the_option_it_refuses(cli_env: Path) -> None:
    """`pipeline run` said only "Invalid value: …", where train and evaluate name --models/--seeds."""
    from app.cli import cli

    for option, value in (("--candidates", "not_a_model"), ("--seeds", "x"), ("--seeds", ",")):
        result = CliRunner().invoke(cli, ["pipeline", "run", option, value])
        assert result.exit_code == 2, (option, value, result.output, result.exception)
        assert f"Invalid value for {option}" in result.output, result.output


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1"])
def test_serve_refuses_a_port_outside_1_to_65535_before_starting(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, port: str
) -> None:
    """`movierec serve --port 99999` served on 34463 (the socket layer keeps the low 16 bits), and
    `python main.py --port -1` died in bind() with an OverflowError traceback."""
    from app.cli import cli
    from main import main

    monkeypatch.setenv("SESSION_PASSWORD", "test")
    monkeypatch.setattr("app.run_development_server", _no_server)
    monkeypatch.setattr("main.run_development_server", _no_server)
    result = CliRunner().invoke(cli, ["serve", "--port", port, "--debug"])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Invalid value for '--port'" in result.output
    with pytest.raises(SystemExit) as exited:
        main(["--port", port, "--debug"])
    assert exited.value.code == 2


def _no_server(*args: Any) -> None:
    raise AssertionError("the server was started")


@pytest.mark.parametrize(
    ("args", "environment", "expected"),
    [
        (["--log-level", "debug"], "WARNING", "DEBUG"),  # the option given wins
        ([], "WARNING", "WARNING"),  # not given: the setting's level, as under uwsgi
    ],
)
def test_serve_runs_the_app_at_the_log_level_given(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], environment: str, expected: str
) -> None:
    """`movierec --log-level DEBUG serve` served at MOVIEREC_LOG_LEVEL's level: the app set its
    logging from the settings once built, and the option given was silently ignored."""
    from app.cli import cli

    served: list[Any] = []
    monkeypatch.setenv("SESSION_PASSWORD", "test")
    monkeypatch.setenv("MOVIEREC_LOG_LEVEL", environment)
    monkeypatch.setattr("app.run_development_server", lambda app, *rest: served.append(app))
    result = CliRunner().invoke(cli, [*args, "serve", "--debug", "--port", str(free_port())])
    assert result.exit_code == 0, (result.output, result.exception)
    assert served[0].extensions["movierec"].settings.log_level == expected


def test_serve_names_a_host_or_port_it_cannot_listen_on_before_starting(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`movierec serve --host no-such-host` built the app, then printed werkzeug's bare "Name or
    service not known" (a host it could not bind: "Cannot assign requested address") and exited 1,
    naming neither the option nor the value. Both are one Error: line now, before the app is built
    (its database migrated), as `python main.py` does too."""
    import socket

    from app.cli import cli
    from main import main

    monkeypatch.setenv("SESSION_PASSWORD", "test")
    monkeypatch.setattr("app.run_development_server", _no_server)
    monkeypatch.setattr("main.run_development_server", _no_server)
    monkeypatch.setattr("app.create_app", _no_server)
    monkeypatch.setattr("main.create_app", _no_server)
    result = CliRunner().invoke(cli, ["serve", "--host", "no-such-host.invalid", "--debug"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.output.startswith("Error: --host 'no-such-host.invalid' is not an address to listen on: ")
    assert len(result.output.splitlines()) == 1, result.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--port", str(port), "--debug"])
        assert result.exit_code == 1, (result.output, result.exception)
        assert result.output == (
            f"Error: cannot listen on 127.0.0.1:{port}: Address already in use "
            "(another process listens there: stop it, or choose another port)\n"
        )
        assert main(["--host", "no-such-host.invalid", "--debug"]) == 1
        assert main(["--port", str(port), "--debug"]) == 1


def test_serve_check_only_checks_the_address(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`movierec serve --check` (what `make run` runs before it prints how to log in): the address
    check's one Error: line and exit 1 for a port taken, nothing and exit 0 for a free one; never
    an app built nor a server started."""
    import socket

    from app.cli import cli

    monkeypatch.setattr("app.run_development_server", _no_server)
    monkeypatch.setattr("app.create_app", _no_server)
    result = CliRunner().invoke(cli, ["serve", "--check", "--port", str(free_port())])
    assert (result.exit_code, result.output) == (0, ""), (result.output, result.exception)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["serve", "--check", "--port", str(port)])
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_trained_candidates_counts_only_runs_that_evaluated_the_seeds(tmp_path: Path) -> None:
    """The registry's answer behind the skip check: a finished run on this data and code trained
    a candidate on the seeds asked for only when its ``seeds`` tag holds them all."""
    from app.registry.mlflow_registry import Registry, default_artifact_root, default_tracking_uri

    var = tmp_path / "var"
    (var / "mlflow").mkdir(parents=True)
    registry = Registry(default_tracking_uri(var), artifact_root=default_artifact_root(var))
    for candidates, seeds in (("most_liked", "0"), ("most_rated", "0,1,2"), ("ease", None)):
        tags = {"data_hash": "d1", "code_version": "c1", "candidates": candidates}
        registry.finish_pipeline_run(
            registry.start_pipeline_run(tags | ({"seeds": seeds} if seeds else {})), {}, []
        )
    assert registry.trained_candidates("d1", "c1", [0, 1, 2]) == {"most_rated", "ease"}
    assert registry.trained_candidates("d1", "c1", [0]) == {"most_liked", "most_rated", "ease"}
    assert registry.trained_candidates("d1", "c1") == {"most_liked", "most_rated", "ease"}
