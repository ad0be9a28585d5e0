"""Launching the flow (environment, command line) and the scheduler's decisions."""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.pipeline.runner import flow_command, flow_environment, resolve_candidates
from app.pipeline.schedule import JOB_ID, build_scheduler, should_run
from app.recommender.models import CANDIDATES, DEFAULT_CANDIDATES
from app.recommender.seeds import parse_seeds

pytestmark = pytest.mark.unit

SECRET = "a-secret-that-must-stay-off-the-command-line"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "testing": True,
        "admin_password": SECRET,
        "model_path": tmp_path / "store",
        "data_dir": tmp_path / "data",
        "var_dir": tmp_path / "var",
        "database_url": "postgresql://u:pw@db/movierec",
        "pipeline_seeds": "0,1",
    }
    return Settings(**(values | overrides))


def _flow_runs_with(monkeypatch: pytest.MonkeyPatch, run_flow: Any, settings: Settings) -> None:
    """The CLI's `pipeline run` and `schedule --once` run ``run_flow`` with ``settings``, the
    scheduler deciding to run (new data) without a registry."""
    import app.pipeline.commands as commands
    import app.pipeline.runner as runner
    import app.pipeline.schedule as schedule

    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    monkeypatch.setattr(runner, "run_flow", run_flow)
    # tick's defaults: the flow runner and the fingerprint (bound when it was defined)
    monkeypatch.setattr(schedule.tick, "__defaults__", (run_flow, lambda s: ("data", "code"), None))
    monkeypatch.setattr(schedule.Registry, "from_settings", classmethod(lambda cls, s: object()))
    monkeypatch.setattr(
        schedule, "should_run", lambda *a, **k: schedule.RunDecision(True, "new data", "d", "c")
    )


def _run_reporting(
    summary: dict[str, Any],
    command: list[str],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> tuple[str, str]:
    """Run ``command`` (``pipeline run`` or ``schedule --once``) over a flow that hands over
    ``summary``; what it printed (it must succeed) and what the scheduler logged of the run."""
    import logging

    from click.testing import CliRunner

    import app.pipeline.runner as runner
    from app.cli import cli

    def run_flow(*_a: Any, **_k: Any) -> Any:
        return runner.FlowRun(summary=summary, seconds=0.0, output="")

    _flow_runs_with(monkeypatch, run_flow, settings)
    with caplog.at_level(logging.INFO, logger="app.pipeline.schedule"):
        result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    logged = " ".join(r.getMessage() for r in caplog.records if "training finished" in r.getMessage())
    return result.output, logged


def test_pipeline_run_help_says_each_default_in_the_users_terms() -> None:
    """``movierec pipeline run --help`` said ``(default: DEFAULT_CANDIDATES)``, a Python constant
    a user cannot look up, and ``Default: MOVIEREC_DATA_DIR.`` without what applies when the
    variable is unset (``train --help`` says both)."""
    from click.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["pipeline", "run", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "DEFAULT_CANDIDATES" not in text
    defaults = Settings.model_fields
    assert f"MOVIEREC_DATA_DIR, else {defaults['data_dir'].default}" in text
    assert f"MOVIEREC_MODEL_DIR, else {defaults['model_dir'].default}" in text
    assert f"MOVIEREC_PIPELINE_SEEDS, else {defaults['pipeline_seeds'].default}" in text
    assert "MOVIEREC_PIPELINE_CANDIDATES, else every candidate of docs/models.md" in text
    assert set(DEFAULT_CANDIDATES) == set(CANDIDATES)  # "every candidate" stays true


def test_candidates_default_to_the_models_package_and_typos_fail_early() -> None:
    assert resolve_candidates(None) == list(DEFAULT_CANDIDATES)
    assert resolve_candidates("") == list(DEFAULT_CANDIDATES)
    some = list(CANDIDATES)[:2]
    assert resolve_candidates(",".join([*some, some[0]])) == some
    with pytest.raises(ValueError, match="unknown candidate"):
        resolve_candidates("most_liked,not_a_model")


def test_seeds_parse_and_refuse_garbage() -> None:
    assert parse_seeds("0, 1,4") == [0, 1, 4]
    with pytest.raises(ValueError):
        parse_seeds("0,x")
    with pytest.raises(ValueError):
        parse_seeds("")


@pytest.mark.parametrize("value", ["-1", "0,-3", [2, -1]])
def test_a_negative_seed_is_refused_before_any_work(value: str | list[int]) -> None:
    """numpy's default_rng takes no negative seed: the flow failed in its first split, with
    'ValueError: expected non-negative integer' and no word of the seeds setting."""
    with pytest.raises(ValueError, match="non-negative"):
        parse_seeds(value)


def test_a_repeated_seed_counts_once() -> None:
    """0,0,1 evaluated split 0 twice and weighted it double in the mean every candidate is ranked by."""
    assert parse_seeds("0,0,1,0") == [0, 1]
    assert parse_seeds([3, 3]) == [3]


def test_every_setting_reaches_the_flow_through_the_environment(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    env = flow_environment(
        settings,
        base={
            "SESSION_PASSWORD": "stale",
            "MOVIEREC_REDIS_URL": "redis://stale",
            "SESSION_PASSWORD_FILE": "/run/secrets/stale",
            "MOVIEREC_ADMIN_PASSWORD_FILE": "/run/secrets/admin",  # what the settings read it from
            "MOVIEREC_DATABASE_URL_FILE": "/run/secrets/database-url",
            "MOVIEREC_REDIS_URL_FILE": "/run/secrets/redis-url",
        },
    )
    assert env["ADMIN_PASSWORD"] == SECRET and env["MOVIEREC_ADMIN_PASSWORD"] == SECRET
    assert "SESSION_PASSWORD" not in env  # unset in the settings: a stale value must not leak through
    # the value read from a file is passed on instead: both would be refused by the flow's settings
    assert not {"SESSION_PASSWORD_FILE", "MOVIEREC_ADMIN_PASSWORD_FILE"} & set(env)
    assert not {"MOVIEREC_DATABASE_URL_FILE", "MOVIEREC_REDIS_URL_FILE"} & set(env)  # URLs hold passwords
    assert "MOVIEREC_REDIS_URL" not in env
    assert env["ML_MODEL_PATH"] == env["MOVIEREC_MODEL_PATH"] == str(tmp_path / "store")
    assert env["MOVIEREC_DATABASE_URL"] == "postgresql://u:pw@db/movierec"
    assert env["MOVIEREC_TESTING"] == "true"
    metaflow_root = (tmp_path / "var" / "metaflow").resolve()
    assert env["METAFLOW_DATASTORE_SYSROOT_LOCAL"] == str(metaflow_root)
    assert env["METAFLOW_DEFAULT_METADATA"] == env["METAFLOW_DEFAULT_DATASTORE"] == "local"
    assert env["METAFLOW_USER"] and env["METAFLOW_USER"] != "root"


def test_the_flow_reads_back_the_same_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, gate_tolerance=0.02, service_url="", mlflow_tracking_uri=None)
    env = flow_environment(settings, base={})
    for name in list(os.environ):
        if name.startswith(("MOVIEREC_", "ML_MODEL_PATH", "SESSION_PASSWORD", "ADMIN_PASSWORD")):
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    assert again.model_dump() == settings.model_dump()


def _clean_settings_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("MOVIEREC_", "ML_MODEL_PATH", "SESSION_PASSWORD", "ADMIN_PASSWORD")):
            monkeypatch.delenv(name, raising=False)


def test_a_tracking_uri_from_a_file_reaches_the_flow_as_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MOVIEREC_MLFLOW_TRACKING_URI_FILE (the URI may carry a database's or a server's password):
    the launcher passes on the file, not the URI it read, which would be in the flow's
    /proc/<pid>/environ (and in every step's: Metaflow's subprocesses inherit it)."""
    uri = "postgresql://mlflow:pw/with-a-slash@db.internal/mlflow"
    path = tmp_path / "mlflow-uri"
    path.write_text(uri + "\n")
    _clean_settings_environment(monkeypatch)
    monkeypatch.setenv("MOVIEREC_MLFLOW_TRACKING_URI_FILE", str(path))
    settings = Settings(testing=True, var_dir=tmp_path / "var")
    assert settings.mlflow_tracking_uri == uri
    env = flow_environment(settings)
    assert env["MOVIEREC_MLFLOW_TRACKING_URI_FILE"] == str(path)
    assert "MOVIEREC_MLFLOW_TRACKING_URI" not in env
    assert not [name for name, value in env.items() if uri in value]
    monkeypatch.delenv("MOVIEREC_MLFLOW_TRACKING_URI_FILE")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().mlflow_tracking_uri == uri


def test_secrets_read_from_files_reach_the_flow_as_those_files_not_as_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As docker-compose.yml's scheduler has them (/run/secrets): the flow, a process of the same
    container, reads the same files, and no process's environment holds a secret; a setting that
    no longer matches its file (given another value since) is passed as its value, alone."""
    files = {
        "MOVIEREC_ADMIN_PASSWORD_FILE": SECRET,
        "MOVIEREC_DATABASE_URL_FILE": "postgresql://u:pw@db/movierec",
        "SESSION_PASSWORD_FILE": "the-session-password",
    }
    base = {}
    for name, value in files.items():
        path = tmp_path / name
        path.write_text(value + "\n")
        base[name] = str(path)
    _clean_settings_environment(monkeypatch)
    for name, value in base.items():
        monkeypatch.setenv(name, value)
    settings = Settings(testing=True, var_dir=tmp_path / "var", model_path=tmp_path / "store")
    assert settings.admin_password is not None and settings.admin_password.get_secret_value() == SECRET
    env = flow_environment(settings, base=base)
    assert {name: env.get(name) for name in base} == base
    assert not [name for name, value in env.items() for secret in files.values() if secret in value]
    for name in base:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == settings.model_dump()

    changed = settings.model_copy(update={"database_url": "postgresql://u:other@db/movierec"})
    env = flow_environment(changed, base=base)
    assert "MOVIEREC_DATABASE_URL_FILE" not in env
    assert env["MOVIEREC_DATABASE_URL"] == "postgresql://u:other@db/movierec"
    assert env["MOVIEREC_ADMIN_PASSWORD_FILE"] == base["MOVIEREC_ADMIN_PASSWORD_FILE"]


def test_metaflow_never_runs_as_root_or_without_a_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import getpass

    monkeypatch.setattr(getpass, "getuser", lambda: "root")
    assert flow_environment(_settings(tmp_path), base={})["METAFLOW_USER"] == "movierec"

    def no_user() -> str:
        raise KeyError("no passwd entry")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert flow_environment(_settings(tmp_path), base={})["METAFLOW_USER"] == "movierec"
    assert flow_environment(_settings(tmp_path), base={"METAFLOW_USER": "ci"})["METAFLOW_USER"] == "ci"


def test_the_command_line_is_an_argument_list_without_secrets(tmp_path: Path) -> None:
    command = flow_command(["most_liked"], [0, 1], tmp_path / "s.json", tmp_path / "id", "schedule", 2)
    assert command[1:3] == ["-m", "app.pipeline.flow"]
    assert command[command.index("--candidates") + 1] == "most_liked"
    assert command[command.index("--seeds") + 1] == "0,1"
    assert command[command.index("--max-workers") + 1] == "2"
    assert not any(SECRET in part or "pw@" in part for part in command)


class _History:
    """The two registry questions the schedule asks, answered from fixed values."""

    def __init__(self, champion: bool, last: dict[str, str] | None) -> None:
        self._champion, self._last = champion, last

    def champion(self) -> object | None:
        return object() if self._champion else None

    def last_pipeline_run(self) -> dict[str, str] | None:
        return self._last


LAST = {"data_hash": "d1", "code_version": "c1", "run_id": "r9"}


@pytest.mark.parametrize(
    ("champion", "last", "data", "code", "runs", "reason"),
    [
        (False, LAST, "d1", "c1", True, "no champion yet"),
        (True, None, "d1", "c1", True, "no finished pipeline run yet"),
        (True, LAST, "d1", "c1", False, "neither data nor code changed since pipeline run r9"),
        (True, LAST, "d2", "c1", True, "data changed (d1 → d2)"),
        (True, LAST, "d1", "c2", True, "code changed (c1 → c2)"),
        (True, LAST, "d2", "c2", True, "data changed (d1 → d2); code changed (c1 → c2)"),
    ],
)
def test_the_schedule_runs_only_when_something_changed(
    champion: bool, last: dict[str, str] | None, data: str, code: str, runs: bool, reason: str
) -> None:
    decision = should_run(_History(champion, last), data, code)  # type: ignore[arg-type]
    assert (decision.run, decision.reason) == (runs, reason)


def test_the_scheduler_fires_on_the_configured_cron_one_run_at_a_time(tmp_path: Path) -> None:
    calls: list[int] = []
    scheduler = build_scheduler(
        _settings(tmp_path, schedule_cron="30 4 * * 1"), lambda: calls.append(1), blocking=False
    )
    job = scheduler.get_job(JOB_ID)
    assert job.max_instances == 1 and job.coalesce is True
    after = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday
    assert job.trigger.get_next_fire_time(None, after) == datetime(
        2026, 1, 5, 4, 30, tzinfo=UTC
    )  # next Monday
    job.func()
    assert calls == [1]


def test_a_tick_due_while_the_machine_slept_runs_late_once_rather_than_never(tmp_path: Path) -> None:
    """The scheduler waits on a monotonic clock, which stops while the machine sleeps: it wakes
    after the tick's time, by the sleep's length, and a clock stepped forward does the same.
    Such a tick more than an hour late was dropped ("missed by"), so the day's training waited
    for the next day's tick; it runs once, late."""
    import threading

    ran = threading.Event()
    scheduler = build_scheduler(_settings(tmp_path, schedule_cron="0 3 * * *"), ran.set, blocking=False)
    scheduler.start(paused=True)
    try:
        # the scheduler wakes five hours after the tick was due
        late = datetime.now(UTC) - timedelta(hours=5)
        scheduler.modify_job(JOB_ID, next_run_time=late)
        scheduler.resume()
        assert ran.wait(10), "the late tick was dropped"
    finally:
        scheduler.shutdown(wait=True)


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("*", "*"),
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("0,6", "sun,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("mon-fri", "mon,tue,wed,thu,fri"),
        # a start with a step runs to the field's end, 7 (= Sunday) as in cron's 0-7: it stopped
        # at 6, so "every other day from Monday" left Sunday out
        ("5/2", "sun,fri"),
        ("1/2", "sun,mon,wed,fri"),
        ("fri/1", "sun,fri,sat"),
    ],
)
def test_crontab_weekday_numbers_mean_what_cron_means(field: str, names: str) -> None:
    from app.pipeline.schedule import crontab_weekdays

    assert crontab_weekdays(field) == names


def test_bad_cron_expressions_are_refused() -> None:
    from app.pipeline.schedule import cron_trigger

    with pytest.raises(ValueError, match="5 fields"):
        cron_trigger("0 3 * *")
    with pytest.raises(ValueError, match="day-of-week"):
        cron_trigger("0 3 * * 9")


def test_candidates_run_longest_first_and_new_ones_lead() -> None:
    from app.pipeline.runner import longest_first

    seconds = {"slow": 90.0, "fast": 2.0, "medium": 30.0}
    assert longest_first(["fast", "new", "slow", "medium"], seconds) == ["new", "slow", "medium", "fast"]
    assert longest_first(["b", "a"], {}) == ["b", "a"]  # no history: the configured order


def test_parallel_candidates_share_the_cores(tmp_path: Path) -> None:
    env = flow_environment(_settings(tmp_path), base={}, workers=os.cpu_count() or 1)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert (
        flow_environment(_settings(tmp_path), base={"OMP_NUM_THREADS": "4"}, workers=2)["OMP_NUM_THREADS"]
        == "4"
    )


@pytest.mark.parametrize(("command", "trigger"), [(["pipeline", "run", "--if-changed"], "manual"),
                                                  (["schedule", "--once"], "schedule")])  # fmt: skip
def test_the_recorded_trigger_says_what_started_the_run(
    command: list[str], trigger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pipeline run --if-changed` is an operator's run that skips when nothing changed; it was
    recorded as trigger "schedule", as if the scheduler had started it."""
    from click.testing import CliRunner

    from app.cli import cli
    from app.pipeline.runner import FlowRun

    started: list[str] = []

    def run_flow(
        settings: Any, names: Any = None, seeds: Any = None, trigger: str = "manual", **_: Any
    ) -> Any:
        started.append(trigger)
        return FlowRun({"candidates": [], "seconds": 0}, 0.0, "")

    _flow_runs_with(monkeypatch, run_flow, _settings(tmp_path))
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    assert started == [trigger]


@pytest.mark.parametrize(
    "command",
    [["pipeline", "versions"], ["schedule", "--once"], ["promote", "--version", "1", "--no-reload"]],
)
def test_a_registry_store_that_cannot_be_created_is_a_clear_error_not_a_traceback(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default MLflow store is created under ``var/mlflow``; when that cannot be done (the
    var root is not writable by this user, a file is in the way) these commands ended in an
    ``OSError`` traceback instead of the "cannot open the registry" message they give for an
    unreachable tracking server."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli

    settings = _settings(tmp_path, database_url=f"sqlite:///{tmp_path / 'service.db'}")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "mlflow").write_text("a file where the MLflow store's directory should be")
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "cannot open the registry" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("blocked", "role", "other_role"),
    [("model_dir", "the model store", "var directory"), ("var_dir", "the var directory", "model store")],
)
def test_promote_where_it_cannot_write_is_a_clear_error_naming_the_path_that_failed(
    blocked: str, role: str, other_role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`movierec promote` with a model store it cannot create or write (a file in the way, no
    permission) ended in a NotADirectoryError/PermissionError traceback; the alias stays put.
    Then every OSError was reported as the model store's, also when the var directory, where
    promote takes the flow lock before it exports anything, was what could not be written."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    import app.registry.mlflow_registry as mlflow_registry
    from app.cli import cli
    from app.registry.mlflow_registry import VersionInfo

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("the model store cannot be created under a file")
    settings = _settings(tmp_path, **{blocked: blocker / "location"})
    target = VersionInfo(
        "2", "most_liked", "20261204T000000-abcdef-most_liked", 0.4, None, "", {"gate_decision": "passed"}, ()
    )
    moved: list[str] = []

    class FakeRegistry:
        def get(self, version: str) -> VersionInfo:
            return target

        def champion(self) -> None:
            return None

        def set_alias(self, alias: str, version: str) -> None:
            moved.append(version)

    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    monkeypatch.setattr(mlflow_registry.Registry, "from_settings", classmethod(lambda cls, s: FakeRegistry()))
    result = CliRunner().invoke(cli, ["promote", "--version", "2", "--no-reload"])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert role in result.output and str(blocker / "location") in result.output
    assert other_role not in result.output
    assert moved == []


@pytest.mark.parametrize("stream", [True, False])
def test_a_failed_flow_names_its_cause_in_the_first_line(
    stream: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`movierec pipeline run` streams the flow's output; when a step failed (database down,
    model store unwritable) the error it ended with was only "the training flow failed (exit 1)
    after 4s", the cause buried in a long traceback above it — and the scheduler's one-line log
    of a failed run said no more."""
    import sys

    import app.pipeline.runner as runner

    script = (
        "import sys\n"
        "print('2026-12-04 20:12:55.116 [1/start/1 (pid 1)] Traceback (most recent call last):')\n"
        "print('2026-12-04 20:12:55.116 [1/start/1 (pid 1)] sqlalchemy.exc.OperationalError: "
        "connection to server at 127.0.0.1 failed: Connection refused')\n"
        "print('2026-12-04 20:12:55.117 [1/start/1 (pid 1)] Task failed.')\n"
        "print('    Step failure:')\n"
        "sys.exit(1)\n"
    )
    monkeypatch.setattr(runner, "flow_command", lambda *a, **k: [sys.executable, "-c", script])
    monkeypatch.setattr(runner, "_close_abandoned", lambda *a: None)
    with pytest.raises(runner.PipelineError) as failed:
        runner.run_flow(_settings(tmp_path), stream=stream, timeout=60)
    first = str(failed.value).splitlines()[0]
    assert first.startswith("the training flow failed (exit 1)")
    assert first.endswith(
        "sqlalchemy.exc.OperationalError: connection to server at 127.0.0.1 failed: Connection refused"
    )
    if stream:  # the output was shown as it came, and is not repeated in the error
        assert "Task failed." in capsys.readouterr().out
        assert "Task failed." not in str(failed.value)


@pytest.mark.parametrize(
    "command", [["pipeline", "run"], ["pipeline", "run", "--if-changed"], ["schedule", "--once"]]
)
def test_a_run_released_before_its_bookkeeping_failed_shows_what_it_released(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow that promoted a new champion and then failed to close its MLflow run was reported
    as "the training flow failed" alone: nothing said that the champion had moved."""
    from click.testing import CliRunner

    import app.pipeline.runner as runner
    from app.cli import cli

    summary = {"candidates": [], "seconds": 0, "champion": "2", "champion_before": "1", "promoted": "2",
               "exported": None, "reloaded": False, "bookkeeping_error": "closing failed: boom"}  # fmt: skip

    def run_flow(*_a: Any, **_k: Any) -> Any:
        raise runner.BookkeepingError(runner.released_but(summary, summary["bookkeeping_error"]), summary)

    _flow_runs_with(monkeypatch, run_flow, _settings(tmp_path, service_url=""))
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "champion: v2 (before: v1, promoted now: 2)" in result.output  # the run's table
    assert "the champion is now v2" in result.output and "boom" in result.output


@pytest.mark.parametrize("command", [["pipeline", "run"], ["schedule", "--once"]])
@pytest.mark.parametrize(
    ("champion", "promoted", "line"),
    [
        ("1", "1", "champion: v1 (before: none, promoted now: 1)"),  # a first run's champion
        (None, None, "champion: none (before: none, promoted now: none)"),  # every one rejected
    ],
)
def test_a_run_without_a_champion_before_it_says_none_not_vnone(
    command: list[str],
    champion: str | None,
    promoted: str | None,
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first `make pipeline` of a new user printed and logged ``champion: v1 (before: vNone,
    …)``, and a run whose every candidate the gate rejected ``champion: vNone``: Python's None
    in the one summary line a user reads."""
    import app.pipeline.runner as runner

    summary = {"candidates": [], "seconds": 0, "champion": champion, "champion_before": None,
               "promoted": promoted, "exported": None, "reloaded": False}  # fmt: skip
    settings = _settings(tmp_path, service_url="")
    output, logged = _run_reporting(summary, command, settings, monkeypatch, caplog)
    assert line in output
    assert "(before: none, promoted now: " in logged
    assert "vNone" not in output + logged
    bookkeeping = runner.released_but(summary | {"promoted": "1", "champion": "1"}, "closing failed")
    assert "the champion is now v1 (promoted by this run; before: none)" in bookkeeping


@pytest.mark.parametrize("command", [["pipeline", "run"], ["schedule", "--once"]])
def test_a_run_that_exported_nothing_does_not_say_the_service_was_not_reloaded(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run that promoted nothing (every candidate rejected, the champion's bundle already served)
    printed and logged ``exported: no change  reloaded: False``: a failed reload to an operator,
    where none was asked (nothing new to load). A reload is named only beside an export."""
    summary = {"candidates": [], "seconds": 0, "champion": "4", "champion_before": "4",
               "promoted": None, "exported": None, "reloaded": False}  # fmt: skip
    settings = _settings(tmp_path, service_url="http://127.0.0.1:9")
    output, logged = _run_reporting(summary, command, settings, monkeypatch, caplog)
    for text in (output, logged):
        assert "exported: no change (no reload asked)" in text, text
        assert "reloaded:" not in text, text


def test_a_flow_failing_after_it_closed_its_mlflow_run_does_not_say_the_run_is_marked_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metaflow failing after ``release`` handed over the summary (its ``end`` step, storing the
    step's artifacts): the MLflow pipeline run was closed FINISHED by ``release``, and the launcher
    marks only RUNNING ones FAILED. The error said it was marked FAILED so that the next tick trains
    again; that tick skips (nothing changed since a finished run)."""
    import json
    import sys

    import app.pipeline.runner as runner

    summary = {"candidates": [], "seconds": 1, "champion": "2", "champion_before": "1", "promoted": "2",
               "exported": str(tmp_path / "model" / "b"), "reloaded": True}  # fmt: skip

    def command(_candidates: Any, _seeds: Any, summary_path: Path, *_a: Any, **_k: Any) -> list[str]:
        script = (
            f"import pathlib, sys\npathlib.Path({str(summary_path)!r}).write_text({json.dumps(summary)!r})\n"
            "print('2026-12-05 20:12:55.116 [1/end/3 (pid 1)] OSError: [Errno 28] No space left on device')\n"
            "sys.exit(1)\n"
        )
        return [sys.executable, "-c", script]

    monkeypatch.setattr(runner, "flow_command", command)
    monkeypatch.setattr(runner, "_close_abandoned", lambda *a: None)
    with pytest.raises(runner.BookkeepingError) as failed:
        runner.run_flow(_settings(tmp_path), timeout=60)
    first = str(failed.value).splitlines()[0]
    assert "the champion is now v2" in first and "No space left on device" in first
    assert "marked FAILED" not in first and "trains again" not in first, first
    assert "closed" in first, first


@pytest.mark.parametrize("command", [["pipeline", "run"], ["pipeline", "run", "--if-changed"]])
def test_json_out_gets_the_summary_of_a_run_released_before_its_bookkeeping_failed(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--json-out`` was written only on success: a run that promoted a new champion, then failed
    to close its MLflow run, left the file as an earlier run wrote it (a stale champion for
    whatever reads it) although the summary of what was released was in hand."""
    import json

    from click.testing import CliRunner

    import app.pipeline.runner as runner
    from app.cli import cli

    summary = {"candidates": [], "seconds": 0, "champion": "2", "champion_before": "1", "promoted": "2",
               "exported": None, "reloaded": False, "bookkeeping_error": "closing failed: boom"}  # fmt: skip

    def run_flow(*_a: Any, **_k: Any) -> Any:
        raise runner.BookkeepingError(runner.released_but(summary, summary["bookkeeping_error"]), summary)

    out = tmp_path / "run.json"
    out.write_text(json.dumps({"champion": "1", "promoted": None}))  # an earlier run's
    _flow_runs_with(monkeypatch, run_flow, _settings(tmp_path, service_url=""))
    result = CliRunner().invoke(cli, [*command, "--json-out", str(out)])
    assert result.exit_code == 1, result.output
    assert json.loads(out.read_text()) == summary


def test_a_json_out_cut_short_leaves_the_earlier_summary_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--json-out`` was written in place: a write cut short (a full disk, a file-size limit,
    Ctrl-C) left a truncated summary over an earlier run's complete one, which whatever reads it
    took for a summary. Written beside its name and renamed now: the earlier file stays whole and
    no partial one is left. The child writes under a file-size limit smaller than the summary."""
    import json
    import resource
    import signal

    from click.testing import CliRunner

    import app.pipeline.runner as runner
    from app.cli import cli
    from tests.helpers import in_forked_child

    summary = {"candidates": [{"version": str(n), "candidate": "most_rated"} for n in range(200)],
               "seconds": 1, "champion": "2", "champion_before": "1", "promoted": "2",
               "exported": None, "reloaded": False}  # fmt: skip
    _flow_runs_with(
        monkeypatch, lambda *_a, **_k: runner.FlowRun(summary, 1.0, ""), _settings(tmp_path, service_url="")
    )
    monkeypatch.setattr("app.pipeline.schedule.report_run", lambda *_a: None)
    out = tmp_path / "out" / "run.json"
    out.parent.mkdir()
    earlier = json.dumps({"champion": "1", "promoted": None, "note": "x" * 400})
    out.write_text(earlier)

    def cut_short() -> bool:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(earlier),) * 2)
        result = CliRunner().invoke(cli, ["pipeline", "run", "--json-out", str(out)])
        return result.exit_code == 1 and "File too large" in result.output

    assert in_forked_child(cut_short, timeout=60) == 0
    assert [path.name for path in out.parent.iterdir()] == ["run.json"]
    assert out.read_text() == earlier


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
def test_a_json_out_that_cannot_be_written_is_refused_before_the_flow_runs(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--json-out`` naming a directory (or a path under a file) was found out once the flow had
    trained, registered and released its models: IsADirectoryError's (NotADirectoryError's)
    traceback in place of the run's table. Now one ``Error:`` line naming it, before the flow."""
    from click.testing import CliRunner

    from app.cli import cli

    def run_flow(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the flow ran although --json-out cannot be written")

    (tmp_path / "file").write_text("")
    out = tmp_path if where == "directory" else tmp_path / "file" / "run.json"
    _flow_runs_with(monkeypatch, run_flow, _settings(tmp_path, service_url=""))
    result = CliRunner().invoke(cli, ["pipeline", "run", "--json-out", str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: --json-out {out} cannot be written"), line


def _hanging_flow(pids: Path, summary: dict[str, Any] | None) -> Any:
    """A flow command that starts a worker (as Metaflow starts its tasks), writes both pids to
    ``pids`` (and ``summary`` to the summary file, as release does) and hangs."""
    import json
    import sys

    def command(_candidates: Any, _seeds: Any, summary_path: Path, *_a: Any, **_k: Any) -> list[str]:
        script = (
            "import pathlib, subprocess, sys, time\n"
            "worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
            f"pathlib.Path({str(pids)!r}).write_text(f'{{__import__(\"os\").getpid()}} {{worker.pid}}')\n"
            + (
                f"pathlib.Path({str(summary_path)!r}).write_text({json.dumps(summary)!r})\n"
                if summary
                else ""
            )
            + "print('started', flush=True)\ntime.sleep(120)\n"
        )
        return [sys.executable, "-c", script]

    return command


def _assert_killed(pids: Path) -> None:
    """The flow and the worker whose pids _hanging_flow wrote are gone (within 60 s)."""
    import time

    flow, worker = (int(pid) for pid in pids.read_text().split())
    deadline = time.monotonic() + 60
    while (_alive(flow) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(flow) and not _alive(worker), "the flow or its worker outlived the timeout"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, not yet reaped


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("released", [False, True])
def test_a_flow_that_times_out_is_killed_and_reported_as_a_pipeline_error(
    stream: bool, released: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run_flow(timeout=...)`` let ``subprocess.TimeoutExpired`` escape (no PipelineError, the
    summary a release step had handed over lost), and the flow's workers went on running. A
    timeout is a PipelineError saying so (a BookkeepingError when the flow had released), and
    the flow and its workers are killed."""
    import time

    import app.pipeline.runner as runner

    summary = {"candidates": [], "seconds": 1, "champion": "2", "champion_before": "1", "promoted": "2",
               "exported": None, "reloaded": False}  # fmt: skip
    pids = tmp_path / "pids"
    monkeypatch.setattr(runner, "flow_command", _hanging_flow(pids, summary if released else None))
    monkeypatch.setattr(runner, "_close_abandoned", lambda *a: None)
    started = time.monotonic()
    with pytest.raises(runner.PipelineError) as failed:
        runner.run_flow(_settings(tmp_path), stream=stream, timeout=3)
    assert time.monotonic() - started < 60
    first = str(failed.value).splitlines()[0]
    assert "timed out after 3s" in first, first
    if released:
        assert isinstance(failed.value, runner.BookkeepingError)
        assert failed.value.summary == summary
        assert "the champion is now v2" in first, first
    else:
        assert not isinstance(failed.value, runner.BookkeepingError)
    _assert_killed(pids)


def test_a_scheduler_tick_whose_flow_hangs_is_killed_at_the_pipeline_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler (and ``schedule --once``, ``pipeline run``) launched the flow without a
    timeout: a flow that hung (a task stuck in a deadlocked OpenMP pool, a tracking server that
    accepts and never answers) held the flow lock for good, every later tick was dropped
    ("maximum number of running instances reached") and nothing was ever trained again until an
    operator noticed. A flow now runs at most MOVIEREC_PIPELINE_TIMEOUT_SECONDS, then it is
    killed with its workers and the tick reports it; the next tick trains again."""
    import time

    import app.pipeline.runner as runner
    from app.pipeline import schedule

    pids = tmp_path / "pids"
    monkeypatch.setattr(runner, "flow_command", _hanging_flow(pids, None))
    monkeypatch.setattr(runner, "_close_abandoned", lambda *a: None)
    monkeypatch.setattr(
        schedule, "should_run", lambda *a: schedule.RunDecision(True, "no champion yet", "d", "c")
    )
    settings = _settings(tmp_path, pipeline_timeout_seconds=3)
    started = time.monotonic()
    result = schedule.tick(settings, fingerprint=lambda s: ("d", "c"))
    assert time.monotonic() - started < 60
    assert result.error is not None and "timed out after 3s" in result.error, result.error
    _assert_killed(pids)
    assert Settings(testing=True).pipeline_timeout_seconds == 7200


class _WithChampion:
    def champion(self) -> object:
        return object()


@pytest.mark.parametrize(
    ("last_tick_age", "runs_at_start"),
    [
        (None, False),  # never ticked in this var root: nothing is known to be missed
        ("2 days", True),  # down at the last cron time (a deploy, a crash, a reboot): run it now
        ("just now", False),  # ticked since the last cron time: wait for the next one
    ],
)
def test_a_tick_missed_while_the_scheduler_was_down_runs_when_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, last_tick_age: str | None, runs_at_start: bool
) -> None:
    """The schedule's timing was kept in memory only: a scheduler restarted across its cron time
    (down from 02:59 to 03:01, or restarted by every nightly deploy at 03:00) skipped that day's
    training, and a tick killed halfway was not retried. The time of the last tick that finished
    is kept in the var root; at start, a cron time passed since it runs one tick."""
    import app.pipeline.schedule as schedule

    monkeypatch.setattr(schedule.Registry, "from_settings", staticmethod(lambda _s: _WithChampion()))
    settings = _settings(tmp_path, schedule_cron="0 3 * * *")
    if last_tick_age == "2 days":
        schedule.record_tick(settings, datetime.now(UTC) - timedelta(days=2))
    elif last_tick_age == "just now":
        schedule.record_tick(settings, datetime.now(UTC))
    calls: list[str] = []
    scheduler = schedule.serve(settings, job=lambda: calls.append("tick"), blocking=False)
    scheduler.shutdown(wait=False)
    assert calls == (["tick"] if runs_at_start else [])
    # whatever happened, a restart now has nothing to catch up on
    calls.clear()
    schedule.serve(settings, job=lambda: calls.append("tick"), blocking=False).shutdown(wait=False)
    assert calls == []


class _Registry:
    """A registry whose champion is whatever the test's ticks made it."""

    def __init__(self) -> None:
        self.version: str | None = None

    def champion(self) -> str | None:
        return self.version


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> _Registry:
    """The scheduler's registry, without a champion until a test's tick names one."""
    import app.pipeline.schedule as schedule

    registry = _Registry()
    monkeypatch.setattr(schedule.Registry, "from_settings", staticmethod(lambda _s: registry))
    return registry


@pytest.mark.parametrize("first_failure", ["at start", "at a cron tick"])
def test_without_a_champion_a_failed_tick_is_tried_again_soon_until_one_is_trained(
    tmp_path: Path,
    registry: _Registry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    first_failure: str,
) -> None:
    """With no champion the scheduler trained once at start; when that failed (PostgreSQL not up
    yet, a transient error), the next try was the next cron time, hours later, and the registry
    had nothing to serve meanwhile. While there is no champion, a tick that failed (the one at
    start or a cron tick's) is tried again after MOVIEREC_SCHEDULE_RETRY_SECONDS, the wait doubling
    up to MOVIEREC_SCHEDULE_RETRY_MAX_SECONDS, one INFO line per try (the tick's own ERROR is the
    alert); a tick that trained a champion ends the retries."""
    import logging
    import threading

    from apscheduler.events import EVENT_JOB_EXECUTED

    import app.pipeline.schedule as schedule

    decision = schedule.RunDecision(True, "no champion yet", "d", "c")
    failed = schedule.TickResult(decision, error="could not decide whether to train: database down")
    trained = schedule.TickResult(decision, {"champion": "1"})
    outcomes = [failed, failed, failed, trained]
    if first_failure == "at a cron tick":  # the run at start finished, promoting nothing: not retried
        outcomes.insert(0, schedule.TickResult(decision, {"champion": None}))
    calls: list[schedule.TickResult] = []

    def job() -> schedule.TickResult:
        outcome = outcomes[min(len(calls), len(outcomes) - 1)]
        calls.append(outcome)
        if outcome is trained:
            registry.version = "1"
        return outcome

    over = threading.Event()  # the last tick has finished, with whatever follows it in its job
    built = schedule.build_scheduler

    def build(*args: Any, **kwargs: Any) -> Any:
        scheduler = built(*args, **kwargs)
        scheduler.add_listener(
            lambda _event: over.set() if len(calls) >= len(outcomes) else None, EVENT_JOB_EXECUTED
        )
        return scheduler

    monkeypatch.setattr(schedule, "build_scheduler", build)
    settings = _settings(
        tmp_path, schedule_cron="0 3 * * *", schedule_retry_seconds=0.05, schedule_retry_max_seconds=0.1
    )
    with caplog.at_level(logging.INFO, logger="app.pipeline.schedule"):
        scheduler = schedule.serve(settings, job=job, blocking=False)
        try:
            if first_failure == "at a cron tick":
                assert scheduler.get_job(schedule.RETRY_JOB_ID) is None
                scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))  # the cron time comes
            assert over.wait(60), calls
            assert scheduler.get_job(schedule.RETRY_JOB_ID) is None, "retried after the champion"
            due = scheduler.get_job(JOB_ID).next_run_time
        finally:
            scheduler.shutdown(wait=False)
    assert len(calls) == len(outcomes), calls
    assert due == schedule.cron_trigger("0 3 * * *").get_next_fire_time(None, due - timedelta(seconds=1))
    retries = [r for r in caplog.records if "tried again" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.INFO] * 3, [r.getMessage() for r in retries]
    assert [r.getMessage().split("(in ")[1].split(";")[0] for r in retries] == ["0.05 s", "0.1 s", "0.1 s"]


def test_a_missed_tick_that_fails_at_start_is_tried_again_until_one_does_not_fail(
    tmp_path: Path, registry: _Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A scheduler down at its cron time (most often a reboot) ticks once at start for it. After a
    reboot Docker starts every container at once, whatever depends_on says (docs/docker.md):
    PostgreSQL still recovering, or MLflow not answering yet, failed that tick; with a champion it
    was not tried again, and it was recorded as done, so the day's training waited for the next
    cron time, the very loss the missed tick exists to avoid. It is tried again as while there is
    no champion, until a tick does not fail; a cron tick failing afterwards is not."""
    import logging
    import threading

    from apscheduler.events import EVENT_JOB_EXECUTED

    import app.pipeline.schedule as schedule

    registry.version = "1"  # a champion serves: only the missed tick is tried again
    decision = schedule.RunDecision(False, "neither data nor code changed", "d", "c")
    failed = schedule.TickResult(decision, error="could not decide whether to train: database down")
    outcomes = [failed, failed, schedule.TickResult(decision), failed]
    calls: list[schedule.TickResult] = []

    def job() -> schedule.TickResult:
        outcome = outcomes[min(len(calls), len(outcomes) - 1)]
        calls.append(outcome)
        return outcome

    executed = threading.Semaphore(0)
    built = schedule.build_scheduler

    def build(*args: Any, **kwargs: Any) -> Any:
        scheduler = built(*args, **kwargs)
        scheduler.add_listener(lambda _event: executed.release(), EVENT_JOB_EXECUTED)
        return scheduler

    monkeypatch.setattr(schedule, "build_scheduler", build)
    settings = _settings(
        tmp_path, schedule_cron="0 3 * * *", schedule_retry_seconds=0.05, schedule_retry_max_seconds=0.1
    )
    schedule.record_tick(settings, datetime.now(UTC) - timedelta(days=2))  # down at the last 03:00
    with caplog.at_level(logging.INFO, logger="app.pipeline.schedule"):
        scheduler = schedule.serve(settings, job=job, blocking=False)
        try:
            assert all(executed.acquire(timeout=60) for _ in range(2)), calls  # the two tries
            assert len(calls) == 3, calls
            assert scheduler.get_job(schedule.RETRY_JOB_ID) is None, "tried again after a tick that worked"
            scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))  # the cron time comes, and fails
            assert executed.acquire(timeout=60)
            assert len(calls) == 4 and scheduler.get_job(schedule.RETRY_JOB_ID) is None
        finally:
            scheduler.shutdown(wait=False)
    retries = [r.getMessage() for r in caplog.records if "tried again" in r.getMessage()]
    assert len(retries) == 2 and all("missed tick" in r for r in retries), retries


def test_a_missed_tick_is_not_tried_again_past_the_next_cron_time(
    tmp_path: Path, registry: _Registry
) -> None:
    """The tries of a missed tick end at the next cron time, whose own tick takes over."""
    import app.pipeline.schedule as schedule

    registry.version = "1"
    decision = schedule.RunDecision(False, "skip", "d", "c")
    settings = _settings(tmp_path, schedule_cron="*/5 * * * *", schedule_retry_seconds=3600)
    schedule.record_tick(settings, datetime.now(UTC) - timedelta(days=2))
    calls: list[str] = []

    def job() -> schedule.TickResult:
        calls.append("tick")
        return schedule.TickResult(decision, error="could not decide whether to train: database down")

    scheduler = schedule.serve(settings, job=job, blocking=False)
    try:
        assert calls == ["tick"] and scheduler.get_job(schedule.RETRY_JOB_ID) is None
    finally:
        scheduler.shutdown(wait=False)


@pytest.mark.usefixtures("registry")
def test_a_cron_tick_due_while_a_try_runs_is_dropped(tmp_path: Path) -> None:
    """The tries of a failed tick are a job of their own beside the cron one: a cron time coming
    while a try runs is dropped, as one coming during a cron tick is (max_instances=1), not a
    second tick at once whose flow met the first one's lock and failed."""
    import threading

    from apscheduler.events import EVENT_JOB_EXECUTED

    import app.pipeline.schedule as schedule

    decision = schedule.RunDecision(True, "no champion yet", "d", "c")
    calls: list[str] = []
    trying, go_on = threading.Event(), threading.Event()
    over = {JOB_ID: threading.Event(), schedule.RETRY_JOB_ID: threading.Event()}

    def job() -> schedule.TickResult:
        calls.append(threading.current_thread().name)
        if len(calls) == 2:  # the first try: it runs until the cron tick is over
            trying.set()
            go_on.wait(60)
        return schedule.TickResult(decision, error="could not decide whether to train: database down")

    scheduler = schedule.serve(_settings(tmp_path, schedule_retry_seconds=3600), job=job, blocking=False)
    try:
        scheduler.add_listener(lambda event: over[event.job_id].set(), EVENT_JOB_EXECUTED)
        scheduler.modify_job(schedule.RETRY_JOB_ID, next_run_time=datetime.now(UTC))  # the try is due
        assert trying.wait(60)
        scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))  # and so is the cron time
        assert over[JOB_ID].wait(60)
        assert len(calls) == 2, calls
    finally:
        go_on.set()
        over[schedule.RETRY_JOB_ID].wait(60)  # the try has failed and scheduled the next
        scheduler.shutdown(wait=False)


def test_the_same_refusal_of_the_data_is_an_error_once_and_no_other_failure_is_hidden(
    tmp_path: Path, registry: _Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a champion, a tick refused for too little data is tried again up to hourly, and each
    try logged the same ERROR (mailed by the monitor) though only more data can change it. The same
    refusal as the tick before (its reason names the data hash) is a WARNING; new data refused, or
    the refusal after any other failure, is an ERROR again."""
    import logging

    import app.pipeline.schedule as schedule
    from app.pipeline.runner import DataRefusedError, FlowRun, PipelineError

    refusal = "too little data to train on (data d1: 9 ratings, 2 users): protocol A, split seed 0"
    failures = [
        DataRefusedError(refusal),
        DataRefusedError(refusal),  # a retry on the same data
        PipelineError("training flow failed (exit 1): the features step"),
        DataRefusedError(refusal),  # after another failure: not hidden behind it
        DataRefusedError(refusal.replace("d1: 9", "d2: 10")),  # the data grew, still too little
    ]

    def runner(_settings: Settings, trigger: str) -> FlowRun:
        raise failures.pop(0)

    monkeypatch.setattr(schedule.flow_runner, "repair_release", lambda _s: True)
    settings = _settings(tmp_path)
    with caplog.at_level(logging.INFO, logger="app.pipeline.schedule"):
        for _ in range(5):
            assert schedule.tick(settings, runner, lambda _s: ("d", "c")).error is not None
    failed = [r for r in caplog.records if r.name == "app.pipeline.schedule" and "failed" in r.getMessage()]
    levels = [r.levelno for r in failed]
    assert levels == [logging.ERROR, logging.WARNING, logging.ERROR, logging.ERROR, logging.ERROR], [
        r.getMessage() for r in failed
    ]


def test_a_cron_tick_that_trains_a_champion_cancels_the_try_waiting(
    tmp_path: Path, registry: _Registry
) -> None:
    """The cron time coming between two tries, its tick training a champion: the try waiting is
    dropped, the cron expression alone ticks from then on."""
    import threading

    from apscheduler.events import EVENT_JOB_EXECUTED

    import app.pipeline.schedule as schedule

    decision = schedule.RunDecision(True, "no champion yet", "d", "c")
    calls: list[str] = []

    def job() -> schedule.TickResult:
        calls.append("tick")
        if len(calls) == 1:
            return schedule.TickResult(decision, error="could not decide whether to train: database down")
        registry.version = "1"
        return schedule.TickResult(decision, {"champion": "1"})

    scheduler = schedule.serve(_settings(tmp_path, schedule_retry_seconds=3600), job=job, blocking=False)
    try:
        assert scheduler.get_job(schedule.RETRY_JOB_ID) is not None  # the tick at start failed
        cron_over = threading.Event()
        scheduler.add_listener(lambda _event: cron_over.set(), EVENT_JOB_EXECUTED)
        scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))  # the cron time comes
        assert cron_over.wait(60)
        assert calls == ["tick", "tick"]
        assert scheduler.get_job(schedule.RETRY_JOB_ID) is None
    finally:
        scheduler.shutdown(wait=False)


@pytest.mark.usefixtures("registry")
def test_a_tick_stopped_by_sigterm_is_not_tried_again(tmp_path: Path) -> None:
    """A tick that failed because the scheduler is stopping (SIGTERM, Ctrl-C) is no failure to
    retry: the stop must end the scheduler, not schedule another tick."""
    import app.pipeline.runner as runner
    import app.pipeline.schedule as schedule

    decision = schedule.RunDecision(True, "no champion yet", "d", "c")

    def job() -> schedule.TickResult:
        runner.request_stop()  # SIGTERM during the tick at start: its flow is killed
        return schedule.TickResult(decision, error="the launcher was asked to stop (SIGTERM)")

    scheduler = schedule.serve(_settings(tmp_path, schedule_retry_seconds=3600), job=job, blocking=False)
    assert not scheduler.running and scheduler.get_job(schedule.RETRY_JOB_ID) is None


@pytest.mark.usefixtures("registry")
def test_sigterm_stops_the_scheduler_while_a_retry_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`movierec schedule` waiting for its next try (no champion, the tick at start failed) stops
    on SIGTERM as it does otherwise: the try waiting is not run, nor waited for."""
    import threading

    import app.pipeline.runner as runner
    import app.pipeline.schedule as schedule

    monkeypatch.setattr(schedule, "stop_on_sigterm", lambda: None)  # pytest's own handlers stay
    decision = schedule.RunDecision(True, "no champion yet", "d", "c")
    calls: list[str] = []

    def job() -> schedule.TickResult:
        calls.append("tick")
        threading.Timer(0.2, runner.request_stop).start()
        return schedule.TickResult(decision, error="could not decide whether to train: database down")

    schedule.serve(_settings(tmp_path, schedule_retry_seconds=3600), job=job)
    assert calls == ["tick"]


@pytest.mark.usefixtures("registry")
@pytest.mark.parametrize("due", [JOB_ID, "training-retry"])
def test_a_tick_due_after_sigterm_is_not_started(tmp_path: Path, due: str) -> None:
    """`movierec schedule` looks for SIGTERM every half second, then shuts the scheduler down: a
    cron time or a try coming due in between started a whole tick after the stop (the release
    repair, a reload asked of the service, the ingest), which the stop then waited for. SIGTERM
    starts no other tick (stop_on_sigterm): one due after it is dropped."""
    import threading

    from apscheduler.events import EVENT_JOB_EXECUTED

    import app.pipeline.runner as runner
    import app.pipeline.schedule as schedule

    decision = schedule.RunDecision(True, "no champion yet", "d", "c")
    calls: list[str] = []

    def job() -> schedule.TickResult:
        calls.append("tick")
        return schedule.TickResult(decision, error="could not decide whether to train: database down")

    # no champion: the tick at start fails, and its try waits an hour beside the cron job
    scheduler = schedule.serve(_settings(tmp_path, schedule_retry_seconds=3600), job=job, blocking=False)
    try:
        assert calls == ["tick"] and scheduler.get_job(schedule.RETRY_JOB_ID) is not None
        over = threading.Event()
        scheduler.add_listener(lambda event: over.set() if event.job_id == due else None, EVENT_JOB_EXECUTED)
        runner.request_stop()  # SIGTERM: the main thread has not looked yet
        scheduler.modify_job(due, next_run_time=datetime.now(UTC))
        assert over.wait(60)
    finally:
        scheduler.shutdown(wait=False)
    assert calls == ["tick"]


def test_the_scheduler_says_when_it_trains_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`movierec schedule` logged only "training scheduled on '0 3 * * *' (UTC)" (and
    APScheduler's "Added job serve.<locals>.scheduled"): whoever started it had to work out
    the next cron time. Its line now says when the next tick is due."""
    import logging

    import app.pipeline.schedule as schedule

    monkeypatch.setattr(schedule.Registry, "from_settings", staticmethod(lambda _s: _WithChampion()))
    settings = _settings(tmp_path, schedule_cron="0 3 * * *")
    with caplog.at_level(logging.INFO, logger="app.pipeline.schedule"):
        before = datetime.now(UTC)
        schedule.serve(settings, job=lambda: None, blocking=False).shutdown(wait=False)
        after = datetime.now(UTC)
    due = {
        f"{schedule.cron_trigger('0 3 * * *').get_next_fire_time(None, moment):%Y-%m-%d %H:%M} UTC"
        for moment in (before, after)
    }
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training scheduled")]
    assert len(lines) == 1 and any(
        lines[0] == f"training scheduled on '0 3 * * *' (UTC): next at {at}" for at in due
    ), lines


@pytest.mark.parametrize("expression", ["0 3 30 2 *", "0 3 31 4,6,9,11 *"])
def test_a_cron_expression_that_never_fires_is_a_usage_error(
    expression: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """February 30th is a valid crontab line that never fires: its next time is None, and the
    scheduler's start line formatted it, so `movierec schedule` ended in a TypeError traceback
    (after its training at start when there was no champion). It is refused as a typo is."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    import app.pipeline.schedule as schedule
    from app.cli import cli

    monkeypatch.setattr(
        commands, "settings_for_cli", lambda **_: _settings(tmp_path, schedule_cron=expression)
    )
    monkeypatch.setattr(schedule.Registry, "from_settings", staticmethod(lambda _s: _WithChampion()))
    for args in (["schedule"], ["schedule", "--once"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert "MOVIEREC_SCHEDULE_CRON" in result.output and "never fires" in result.output


def test_apscheduler_s_lines_name_the_training_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """APScheduler names a job after its function unless told: `movierec schedule` logged
    `Added job "serve.<locals>.scheduled" to job store "default"`, an internal name."""
    import logging

    import app.pipeline.schedule as schedule

    monkeypatch.setattr(schedule.Registry, "from_settings", staticmethod(lambda _s: _WithChampion()))
    with caplog.at_level(logging.INFO, logger="apscheduler"):
        schedule.serve(_settings(tmp_path), job=lambda: None, blocking=False).shutdown(wait=False)
    added = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Added job")]
    assert added == [f'Added job "{JOB_ID}" to job store "default"'], added


@pytest.mark.parametrize("flow_runs", [False, True])
def test_the_scheduler_says_a_flow_is_killed_only_when_one_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, flow_runs: bool
) -> None:
    """`movierec schedule` stopped between ticks logged (a WARNING) "stopping (a running training
    flow is killed and reported)" when no flow was running. It says so only when one runs."""
    import logging
    import subprocess
    import sys
    import threading

    import app.pipeline.runner as runner
    import app.pipeline.schedule as schedule

    monkeypatch.setattr(schedule.Registry, "from_settings", staticmethod(lambda _s: _WithChampion()))
    monkeypatch.setattr(schedule, "stop_on_sigterm", lambda: None)  # pytest's own handlers stay
    flow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) if flow_runs else None
    monkeypatch.setattr(runner, "_flow", flow)  # what runner._run holds while its flow runs
    try:
        threading.Timer(0.2, runner.request_stop).start()
        with caplog.at_level(logging.INFO, logger="app.pipeline.schedule"):
            schedule.serve(_settings(tmp_path), job=lambda: None)
    finally:
        if flow is not None:
            flow.kill()
            flow.wait()
    (line,) = [r for r in caplog.records if r.getMessage().startswith("stopping")]
    if flow_runs:
        assert line.levelno == logging.WARNING and "killed" in line.getMessage(), line.getMessage()
    else:
        assert line.levelno == logging.INFO and "killed" not in line.getMessage(), line.getMessage()


@pytest.mark.parametrize("outcome", ["trained", "skipped", "failed"])
def test_a_tick_of_schedule_once_is_recorded_as_the_scheduler_records_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """`movierec schedule --once` (cron calling it at the cron time, or an operator) ran a tick
    without recording it in var/pipeline/schedule-last-tick: a `movierec schedule` started
    afterwards found the older time there, took the cron time `--once` had just ticked for as
    missed and ticked again at start. A finished `--once` tick is recorded as the scheduler's
    own are (trained, skipped or failed: the next cron time retries a failure)."""
    from click.testing import CliRunner

    import app.pipeline.runner as runner
    import app.pipeline.schedule as schedule
    from app.cli import cli

    settings = _settings(tmp_path, schedule_cron="0 3 * * *", service_url="")
    summary = {"candidates": [], "seconds": 0, "champion": "1", "champion_before": None, "promoted": "1",
               "exported": None, "reloaded": False}  # fmt: skip

    def run_flow(*_a: Any, **_k: Any) -> Any:
        if outcome == "failed":
            raise runner.PipelineError("the training flow failed (exit 1) after 0s")
        return runner.FlowRun(summary, 0.0, "")

    _flow_runs_with(monkeypatch, run_flow, settings)
    if outcome == "skipped":
        monkeypatch.setattr(
            schedule, "should_run", lambda *a, **k: schedule.RunDecision(False, "nothing changed", "d", "c")
        )
    schedule.record_tick(settings, datetime.now(UTC) - timedelta(days=2))  # the scheduler's last
    assert schedule.missed_tick(settings) is not None
    began = datetime.now(UTC)
    result = CliRunner().invoke(cli, ["schedule", "--once"])
    assert result.exit_code == (1 if outcome == "failed" else 0), result.output
    recorded = schedule.last_tick(settings)
    assert recorded is not None and began <= recorded <= datetime.now(UTC), recorded
    assert schedule.missed_tick(settings) is None
    monkeypatch.setattr(schedule.Registry, "from_settings", staticmethod(lambda _s: _WithChampion()))
    calls: list[str] = []
    schedule.serve(settings, job=lambda: calls.append("tick"), blocking=False).shutdown(wait=False)
    assert calls == [], "the scheduler ticked at start for the cron time `--once` ticked for"


_SCHEDULER_SCRIPT = """
import pathlib, sys
from datetime import UTC, datetime, timedelta

import app.pipeline.runner as runner
import app.pipeline.schedule as schedule
from tests.unit.test_pipeline_runner import _WithChampion, _hanging_flow, _settings

tmp, when = pathlib.Path(sys.argv[1]), sys.argv[2]
settings = _settings(tmp, schedule_cron="0 3 * * *")
runner.flow_command = _hanging_flow(tmp / "pids", None)
runner._close_abandoned = lambda *a: None
schedule.Registry.from_settings = staticmethod(lambda _s: _WithChampion())
if when == "once":  # `movierec schedule --once` from cron: one tick that decides to train
    import app.pipeline.commands as commands
    from app.cli import cli

    import app.pipeline.ingest as ingest

    commands.settings_for_cli = lambda **_k: settings
    ingest.ingest = lambda *a, **k: type("Ingested", (), {"data_hash": "d"})()  # no data, no database
    schedule.should_run = lambda *a: schedule.RunDecision(True, "data changed", "d", "c")
    cli(["schedule", "--once"], prog_name="movierec", standalone_mode=False)
elif when == "start":  # a tick missed while it was down: run at start, in the main thread
    schedule.record_tick(settings, datetime.now(UTC) - timedelta(days=2))
else:  # a cron tick, in the scheduler's worker thread
    if when == "held":  # SIGTERM comes while the scheduler's loop holds its wake-up event's lock
        import threading
        import time

        import apscheduler.schedulers.background as background
        import apscheduler.schedulers.blocking as blocking

        # The scheduler's loop waits on this event and clears it: a few bytecodes inside its
        # non-reentrant lock each time, stretched here so that the signal surely lands there.
        class HeldEvent(threading.Event):
            def wait(self, timeout=None):
                with self._cond:
                    time.sleep(1.0)
                return super().wait(0.01)

        blocking.Event = background.Event = HeldEvent
    schedule.record_tick(settings, datetime(2000, 1, 1, tzinfo=UTC))
    built = schedule.build_scheduler

    def soon(*args, **kwargs):
        scheduler = built(*args, **kwargs)
        scheduler.modify_job(schedule.JOB_ID, next_run_time=datetime.now(UTC) + timedelta(seconds=1))
        return scheduler

    schedule.build_scheduler = soon
    schedule.missed_tick = lambda *a, **k: None


def job():
    try:
        runner.run_flow(settings, trigger="schedule")
    except runner.PipelineError as exc:
        print("flow:", str(exc).splitlines()[0], flush=True)


if when != "once":
    schedule.serve(settings, job=job)
    print("scheduler stopped", flush=True)
"""


def _interrupt(process: Any, how: str) -> str:
    """SIGTERM to the launcher, or Ctrl-C: SIGINT to its whole process group (the terminal's
    foreground group: the flow and its workers get it too). The signal's name, as reported."""
    import signal

    if how == "SIGTERM":
        process.send_signal(signal.SIGTERM)
        return "SIGTERM"
    os.killpg(process.pid, signal.SIGINT)
    return "SIGINT"


def _launch_until_its_flow_runs(
    script: str, tmp_path: Path, *args: str, until: str = "pids"
) -> tuple[Any, Path]:
    """Start a launcher script (its own session, as a terminal's job) and wait until the hanging
    flow it starts has written its and its worker's pids; the process and that pid file.
    ``until``: another file of ``tmp_path`` to wait for (a launcher that starts no flow)."""
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), *args],
        cwd=Path(app_root := Path(__file__).resolve().parents[2]),
        env={**os.environ, "PYTHONPATH": str(app_root)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    started = tmp_path / until
    deadline = time.monotonic() + 60
    while not started.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert started.is_file(), process.communicate(timeout=10)[0]
    return process, tmp_path / "pids"


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("when", ["start", "cron", "once", "held"])
def test_sigterm_during_a_tick_kills_the_flow_and_stops_the_scheduler_cleanly(
    tmp_path: Path, when: str, how: str
) -> None:
    """SIGTERM (docker stop, systemctl stop) killed the scheduler outright in the middle of a tick:
    its flow, left without a reader, died at its next line of output (a broken pipe) in whatever
    step it was, its MLflow runs stayed RUNNING and its scratch directory stayed behind. Now the
    flow is killed with its workers and reported, the scheduler stops and exits 0, and the
    interrupted tick is not recorded as done (the next start runs it again). The handler only
    sets a flag: it used to stop the scheduler itself, taking the lock of the event its loop
    waits on, and a SIGTERM landing while the loop held that lock deadlocked the scheduler.
    Ctrl-C (SIGINT) ended `movierec schedule` with a KeyboardInterrupt (a traceback, or click's
    "Aborted!"), the interrupted tick recorded as done and its MLflow runs not marked; it now
    stops as on SIGTERM."""
    import contextlib
    import signal
    import subprocess

    import app.pipeline.schedule as schedule

    settings = _settings(tmp_path)
    process, pids = _launch_until_its_flow_runs(_SCHEDULER_SCRIPT, tmp_path, when)
    recorded = schedule.last_tick(settings)
    name = _interrupt(process, how)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # deadlocked in its SIGTERM handler, say
        process.kill()
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        pytest.fail(f"the scheduler did not stop within 30 s of {how}:\n" + process.communicate()[0])
    if when == "once":  # the tick's failure, as any other: exit 1 with the reason
        assert process.returncode == 1, output
        logged = [line for line in output.splitlines() if "training (schedule) failed" in line]
        assert logged and all('"level":"WARNING"' in line for line in logged), (
            output
        )  # a deploy, not an error
        assert f"the launcher was asked to stop ({name})" in output, output
    else:
        assert process.returncode == 0, output
        assert f"flow: the launcher was asked to stop ({name})" in output, output
        assert "scheduler stopped" in output, output
    flow, worker = (int(pid) for pid in pids.read_text().split())
    assert not _alive(flow) and not _alive(worker), "the flow or its worker outlived the scheduler"
    assert not list((tmp_path / "var" / "pipeline").glob("run-*")), "the flow's scratch directory was left"
    assert schedule.last_tick(settings) == recorded, "the interrupted tick was recorded as done"


_PIPELINE_RUN_REAL_INGEST = """
import pathlib, sys

import app.pipeline.commands as commands
import app.pipeline.ingest as ingest
import app.pipeline.runner as runner
import app.pipeline.schedule as schedule
from app.cli import cli
from tests.unit.test_pipeline_runner import _WithChampion, _hanging_flow, _settings

tmp = pathlib.Path(sys.argv[1])
settings = _settings(tmp)
runner.flow_command = _hanging_flow(tmp / "pids", None)
runner._close_abandoned = lambda *a: None
commands.settings_for_cli = lambda **_k: settings
# --if-changed: the tick decides to train (no registry; no data, no database: below)
schedule.Registry.from_settings = staticmethod(lambda _s: _WithChampion())
schedule.should_run = lambda *a: schedule.RunDecision(True, "data changed", "d", "c")
"""
_PIPELINE_RUN_SETUP = (
    _PIPELINE_RUN_REAL_INGEST + 'ingest.ingest = lambda *a, **k: type("Ingested", (), {"data_hash": "d"})()\n'
)
_PIPELINE_RUN_CALL = 'cli(["pipeline", "run", *sys.argv[2:]], prog_name="movierec")\n'
_PIPELINE_RUN_SCRIPT = _PIPELINE_RUN_SETUP + _PIPELINE_RUN_CALL


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("options", [[], ["--if-changed"]])
def test_sigterm_during_pipeline_run_kills_the_flow_and_exits_non_zero_saying_why(
    tmp_path: Path, options: list[str], how: str
) -> None:
    """``movierec pipeline run`` died outright on SIGTERM (a CI job's timeout, ``docker stop``):
    its flow, left without a reader, died at its next line of output (a broken pipe) in whatever
    step it was, its MLflow runs stayed RUNNING and its scratch directory stayed behind. It now
    stops as the scheduler does: the flow is killed with its workers and reported, and the
    command exits 1 saying it was stopped. Ctrl-C does the same, as it does to `movierec schedule`
    (it ended with click's "Aborted!", the flow's MLflow runs not marked FAILED)."""
    import time

    process, pids = _launch_until_its_flow_runs(_PIPELINE_RUN_SCRIPT, tmp_path, *options)
    name = _interrupt(process, how)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 1, (process.returncode, output)
    assert f"Error: the launcher was asked to stop ({name})" in output, output
    flow, worker = (int(pid) for pid in pids.read_text().split())
    deadline = time.monotonic() + 60
    while (_alive(flow) or _alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(flow) and not _alive(worker), "the flow or its worker outlived the command"
    assert not list((tmp_path / "var" / "pipeline").glob("run-*")), "the flow's scratch directory was left"


_SLOW_INGEST_SCRIPT = (
    _PIPELINE_RUN_REAL_INGEST
    + """
settings = _settings(tmp, data_dir=tmp / "data", database_url=f"sqlite:///{tmp / 'feedback.db'}")
read_feedback = ingest.read_feedback


def marked(*args, **kwargs):  # the test's signal to stop: the feedback read has begun
    (tmp / "ingesting").write_text("")
    return read_feedback(*args, **kwargs)


ingest.read_feedback = marked
"""
    + _PIPELINE_RUN_CALL
)


def _feedback_database(path: Path, n_requests: int, per_request: int = 10) -> None:
    """A service database at ``path`` holding ``n_requests`` scored lists of ``per_request`` movies."""
    import sqlite3

    from app.storage.db import Database

    database = Database(f"sqlite:///{path}")
    database.upgrade()
    database.dispose()
    stamp = "2026-12-01 12:00:00.000000"
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executemany(
            "INSERT INTO recommendation_requests (id, created_at, age, gender, occupation, user_id, "
            "max_recs, model_version, strategy, items) VALUES (?, ?, 30, 'M', 'writer', NULL, ?, 'v', "
            "'segment', '[]')",
            ((f"r{i:08d}", stamp, per_request) for i in range(n_requests)),
        )
        connection.executemany(
            "INSERT INTO feedback (request_id, movie_id, title, score, model_version, created_at, "
            "updated_at) VALUES (?, ?, ?, 4.0, 'v', ?, ?)",
            (
                (f"r{i:08d}", movie, f"Movie {movie}", stamp, stamp)
                for i in range(n_requests)
                for movie in range(1, per_request + 1)
            ),
        )


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_stop_during_the_decisions_ingest_ends_it_between_chunks(tmp_path: Path, how: str) -> None:
    """``pipeline run --if-changed`` (and every scheduler tick) ingests the raw files and the
    feedback to decide whether to train. A stop landing there waited for the whole ingest (the
    feedback read, seconds on a large table), and only then refused to start the flow; the
    ingest now looks at the stop flag between its phases and between chunks of the feedback
    read, and the command stops at once, exit 1 with the stop's message, as during the flow."""
    import re

    from tests.synthetic import write_grouplens

    write_grouplens(tmp_path / "data")
    _feedback_database(tmp_path / "feedback.db", 30_000)  # 300,000 scores: a read of seconds
    process, pids = _launch_until_its_flow_runs(
        _SLOW_INGEST_SCRIPT, tmp_path, "--if-changed", until="ingesting"
    )
    name = _interrupt(process, how)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, (process.returncode, output)
    assert f"Error: the launcher was asked to stop ({name})" in output, output
    assert not re.search(r"ingested \d+ ratings", output), "the ingest ran to its end after the stop"
    assert not pids.is_file(), "a flow was started after the stop"


_SECOND_CTRL_C_SCRIPT = (
    _PIPELINE_RUN_SETUP
    + """
import time


def hang(*_a, **_k):
    (tmp / "stopping").write_text("")
    time.sleep(120)


slow = sys.argv.pop(2)
if slow == "killing":  # the first stop has not killed the flow yet
    runner._kill_tree = hang
elif slow == "bookkeeping":  # it killed the flow; marking its MLflow runs FAILED takes minutes
    runner._mark_failed = hang  # (MLflow retries a tracking server that does not answer ~4 min)
else:  # the decision's ingest (pipeline run --if-changed) is not over before the flow starts

    def slow_ingest(*_a, **_k):
        (tmp / "ingesting").write_text("")
        while not runner.STOPPING.is_set():
            time.sleep(0.05)
        hang()

    ingest.ingest = slow_ingest
"""
    + _PIPELINE_RUN_CALL
)


@pytest.mark.parametrize("during", ["killing", "bookkeeping", "ingest"])
def test_a_second_ctrl_c_quits_at_once_and_kills_a_flow_still_running(tmp_path: Path, during: str) -> None:
    """The first Ctrl-C only sets the stop flag (stop_on_sigterm), and a second one did nothing:
    a launcher whose stop took its time (its flow not killed yet, a tracking server that does not
    answer while the flow's MLflow runs are marked FAILED, an ingest not over) could not be
    made to quit but with SIGKILL, which left its flow running. The first Ctrl-C now says that a
    second one quits at once; the second ends the launcher with exit 130 and says so, killing
    its flow and the flow's workers first when they still run."""
    import signal
    import subprocess
    import time

    options = ["--if-changed"] if during == "ingest" else []
    process, pids = _launch_until_its_flow_runs(
        _SECOND_CTRL_C_SCRIPT, tmp_path, during, *options, until="ingesting" if during == "ingest" else "pids"
    )
    try:
        process.send_signal(signal.SIGINT)
        stopping = tmp_path / "stopping"
        deadline = time.monotonic() + 30
        while not stopping.is_file() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert stopping.is_file(), "the first Ctrl-C did not reach the stop under test"
        time.sleep(0.3)
        assert process.poll() is None, "the launcher ended before its stop was over"
        process.send_signal(signal.SIGINT)
        quitting = time.monotonic()
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the second Ctrl-C did not end the launcher:\n" + process.communicate()[0])
    finally:
        if pids.is_file():  # whatever happened, no flow outlives the test
            for pid in pids.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    assert time.monotonic() - quitting < 10
    assert process.returncode == 130, (process.returncode, output)
    assert "Ctrl-C again to quit at once" in output, output
    # the first Ctrl-C said a flow is killed when none ran too (a stop during the ingest)
    first = (
        "no training flow running, and none starts"
        if during == "ingest"
        else "the training flow running is killed"
    )
    assert f"stopping (SIGINT): {first}" in output, output
    assert "SIGINT again: quitting at once" in output, output
    if during == "killing":
        flow, worker = (int(pid) for pid in pids.read_text().split())
        assert f"killed the training flow (pid {flow}) and its workers" in output, output
        deadline = time.monotonic() + 60
        while (_alive(flow) or _alive(worker)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(flow) and not _alive(worker), "the flow or its worker outlived the launcher"
    else:
        assert "no training flow running" in output, output
