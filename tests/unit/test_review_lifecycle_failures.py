"""The life cycle under failure: the tracking server down, the service not reloading."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from app.config import Settings
from app.pipeline import runner, schedule
from app.registry.mlflow_registry import Registry, RegistryError

pytestmark = pytest.mark.unit


@pytest.fixture
def closed_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> str:
    """A tracking server URI on a port nobody listens on; MLflow gives up at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return f"http://127.0.0.1:{_closed_port()}"


def _closed_port() -> int:
    """A local port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


class _Service:
    """A stand-in for the service's login and reload endpoints, on a real local HTTP port."""

    def __init__(self, password: str) -> None:
        import http.server
        import json
        import threading

        self.password = password
        self.reloads: list[object] = []
        self.reload_answer: tuple[int, dict[str, object]] = (200, {"state": "loaded"})
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self.path == "/api/login" and body.get("session_password") == service.password:
                    self._answer(200, {"access_token": "token"})
                elif self.path == "/api/admin/reload" and self.headers["Authorization"] == "Bearer token":
                    service.reloads.append(body.get("version"))
                    self._answer(*service.reload_answer)
                else:
                    self._answer(401, {"error": "unauthorized"})

            def _answer(self, status: int, payload: dict[str, object]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class _Registry:
    """The scheduler's view of a registry: a champion or none, and the last finished run."""

    def __init__(self, champion: bool) -> None:
        self.has_champion = champion

    def champion(self) -> object | None:
        return object() if self.has_champion else None

    def last_pipeline_run(self) -> dict[str, str]:
        return {"data_hash": "d1", "code_version": "c1", "run_id": "r1", "candidates": "most_liked"}

    def trained_candidates(self, data_hash: str, code_version: str) -> set[str]:
        return {"most_liked"}


def test_a_champion_the_service_did_not_reload_is_reloaded_at_the_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run exported a new champion but the service refused the reload (a wrong admin
    password: 401): the scheduler logged nothing about it, and since nothing else changed
    every later tick skipped — the service kept serving the old model until restarted."""
    service = _Service(password="right")
    model_dir = tmp_path / "model"
    (model_dir / "b-new").mkdir(parents=True)
    (model_dir / "b-new" / "manifest.json").write_text('{"version": "b-new"}')
    (model_dir / "latest").symlink_to("b-new")
    settings = Settings(
        testing=True, var_dir=tmp_path / "var", model_dir=model_dir, service_url=service.url,
        admin_password="wrong", pipeline_candidates="most_liked",
    )  # fmt: skip
    summary = {"champion": "2", "champion_before": "1", "promoted": "2", "exported": str(model_dir / "b-new"),
               "reloaded": False}  # fmt: skip
    ran: list[str] = []

    def fake_runner(s: Settings, trigger: str) -> runner.FlowRun:  # the flow's reload got a 401
        ran.append(trigger)
        return runner.FlowRun(summary, 1.0, "")

    def tick(settings: Settings, champion: bool) -> schedule.TickResult:
        monkeypatch.setattr(schedule.Registry, "from_settings", lambda s: _Registry(champion))
        return schedule.tick(settings, fake_runner, lambda s: ("d1", "c1"))

    with caplog.at_level("INFO", logger="app"):
        assert tick(settings, champion=False).ran
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("did not reload champion v2 (b-new)" in message for message in warned), warned
    assert service.reloads == []
    # the operator fixes the password; nothing new to train, but the reload is asked again
    fixed = settings.model_copy(update={"admin_password": SecretStr("right")})
    assert not tick(fixed, champion=True).ran
    assert service.reloads == ["b-new"]
    assert not tick(fixed, champion=True).ran
    assert service.reloads == ["b-new"]  # once done, not asked again
    assert ran == ["schedule"]


_LAUNCHER = """
import sys
from pathlib import Path
from typing import Any
from app.config import Settings
from app.pipeline import runner

var_dir, started = sys.argv[1], sys.argv[2]
flow = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
runner.flow_command = lambda *args: [sys.executable, "-c", flow, started]  # a flow that runs a while
runner._close_abandoned = lambda *args: None  # no MLflow start-up: not what is tested here
runner.run_flow(Settings(testing=True, var_dir=Path(var_dir)))
"""


@contextlib.contextmanager
def _flow_of_a_killed_launcher(settings: Settings, tmp_path: Path) -> Iterator[int]:
    """Launch a flow with run_flow (the _LAUNCHER script), SIGKILL the launcher once the flow runs
    (as the OOM killer or ``kill -9`` would) and yield the pid of the flow, which goes on; it is
    killed on the way out if the test has not killed it."""
    import os
    import signal
    import subprocess  # nosec B404 - a launcher of this test's own script
    import sys
    import time

    started = tmp_path / "flow-started"
    launcher = subprocess.Popen(  # nosec B603
        [sys.executable, "-c", _LAUNCHER, str(settings.var_dir), str(started)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    flow_pid = 0
    try:
        deadline = time.monotonic() + 60
        while not (started.is_file() and started.read_text()) and time.monotonic() < deadline:
            assert launcher.poll() is None, "the launcher ended before its flow started"
            time.sleep(0.1)
        flow_pid = int(started.read_text())
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        yield flow_pid
    finally:
        launcher.kill()
        if flow_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(flow_pid, signal.SIGKILL)


def _summary_writing_command(_c: Any, _s: Any, summary_path: Path, *_a: Any, **_k: Any) -> list[str]:
    """A flow_command whose "flow" only hands over an empty summary."""
    import sys

    return [sys.executable, "-c", f"import pathlib; pathlib.Path({str(summary_path)!r}).write_text('{{}}')"]


def _wait_for_the_lock(settings: Settings) -> None:
    """Wait (up to 60 s) until the flow lock is free."""
    import time

    deadline = time.monotonic() + 60
    while True:
        try:
            with runner.flow_lock(settings):
                return
        except runner.PipelineError:
            assert time.monotonic() < deadline, "the lock outlived the flow"
            time.sleep(0.05)


def test_a_flow_whose_launcher_is_killed_keeps_the_lock_until_it_ends(tmp_path: Path) -> None:
    """SIGKILL of `movierec pipeline run` (or the scheduler) released the flow lock at once,
    while its flow — a separate process — went on to gate and move the champion alias: the
    next run started beside it, and closed the live flow's MLflow runs as abandoned."""
    import os
    import signal

    settings = Settings(testing=True, var_dir=tmp_path / "var")
    with _flow_of_a_killed_launcher(settings, tmp_path) as flow_pid:
        busy = pytest.raises(runner.PipelineError, match="another training flow is running")
        with busy, runner.flow_lock(settings):
            pass
        os.kill(flow_pid, signal.SIGKILL)  # the flow ends: the lock is free again
        _wait_for_the_lock(settings)


def test_the_scratch_directory_of_a_killed_launcher_is_removed_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A launcher killed outright (SIGKILL, the OOM killer, a reboot) never leaves its
    TemporaryDirectory: its ``run-*`` scratch directory stayed in var/pipeline for good, one more
    at each kill. The next run removes such leftovers once it holds the flow lock (so never the
    directory of a flow still running: that one holds the lock) and logs what it removed."""
    import os
    import signal

    settings = Settings(testing=True, var_dir=tmp_path / "var")
    scratch_root = tmp_path / "var" / "pipeline"
    with _flow_of_a_killed_launcher(settings, tmp_path) as flow_pid:
        leftover = list(scratch_root.glob("run-*"))
        assert len(leftover) == 1 and leftover[0].is_dir(), leftover
        monkeypatch.setattr(runner, "_close_abandoned", lambda *a: None)
        # its flow still runs and holds the lock: its directory is not touched
        with pytest.raises(runner.PipelineError, match="another training flow is running"):
            runner.run_flow(settings)
        assert leftover[0].is_dir()
        os.kill(flow_pid, signal.SIGKILL)
        _wait_for_the_lock(settings)

    monkeypatch.setattr(runner, "flow_command", _summary_writing_command)
    (scratch_root / "run-file").write_text("not a scratch directory")
    with caplog.at_level(logging.WARNING, logger=runner.log.name):
        runner.run_flow(settings)
    assert not leftover[0].exists(), "the killed launcher's scratch directory was left"
    assert [path.name for path in scratch_root.glob("run-*")] == ["run-file"]
    assert (scratch_root / runner.LOCK_FILE).is_file()
    removed = [r.getMessage() for r in caplog.records if "scratch director" in r.getMessage()]
    assert removed and leftover[0].name in removed[0], caplog.text


def test_a_flow_is_not_launched_when_the_tracking_server_cannot_be_reached(
    tmp_path: Path, closed_tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher met the unreachable server closing abandoned runs, logged a traceback and
    launched the flow anyway, whose first step met it again: with MLflow's default retries
    (7, with backoff: about 4 minutes a request) the operator waited many minutes for an error
    the launcher already had."""
    settings = Settings(testing=True, var_dir=tmp_path / "var", mlflow_tracking_uri=closed_tracking_uri)
    launched: list[list[str]] = []

    def run(command: list[str], *_args: Any, **_kwargs: Any) -> tuple[int, str]:
        launched.append(command)  # the flow's launch is recorded, not run
        return 1, ""

    monkeypatch.setattr(runner, "_run", run)
    with pytest.raises(
        runner.PipelineError, match=f"cannot reach the model registry at {closed_tracking_uri}"
    ):
        runner.run_flow(settings)
    assert launched == []


def test_a_tick_whose_run_raises_something_else_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``tick`` promised "failures are logged, never raised" but let through anything but a
    PipelineError (the var root unwritable, a timeout): `movierec schedule` died with a
    traceback in its first run at start, and `pipeline run --if-changed` too."""
    settings = Settings(testing=True, var_dir=tmp_path / "var", pipeline_candidates="most_liked")
    monkeypatch.setattr(schedule.Registry, "from_settings", lambda s: _Registry(champion=False))

    def failing_runner(s: Settings, trigger: str) -> runner.FlowRun:
        raise PermissionError(13, "Permission denied", str(tmp_path / "var" / "pipeline"))

    with caplog.at_level("ERROR", logger="app.pipeline.schedule"):
        result = schedule.tick(settings, failing_runner, lambda s: ("d1", "c1"))
    assert not result.ran and result.error and "Permission denied" in result.error
    assert any("training (schedule) failed" in r.getMessage() for r in caplog.records)


def test_a_reload_refused_for_its_password_says_which_password(caplog: pytest.LogCaptureFixture) -> None:
    """A wrong admin password was reported as 'HTTP 401 from …/api/login', which leaves the
    operator to work out that the password is what the service refused."""
    from app.registry.export import request_reload

    service = _Service("the-admin-password")
    try:
        with caplog.at_level(logging.WARNING, logger="app.registry.export"):
            assert request_reload(service.url, "a-wrong-password", "v1") is False
        assert "refused the admin password (ADMIN_PASSWORD)" in caplog.text
        assert "a-wrong-password" not in caplog.text
    finally:
        service.server.shutdown()


def test_a_reload_still_loading_when_the_service_answers_is_not_reported_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service answers 202 "loading" when its wait for the load ran out: request_reload took
    any 2xx for a reload done, the pipeline reported ``reloaded: True`` and the reload-pending
    marker was removed, while the service may never swap the bundle in (the load can still fail)."""
    from app.registry.export import request_reload

    service = _Service("the-admin-password")
    service.reload_answer = (202, {"state": "loading", "target": "v1"})
    try:
        with caplog.at_level(logging.WARNING, logger="app.registry.export"):
            assert request_reload(service.url, "the-admin-password", "v1") is False
        assert "loading" in caplog.text
        service.reload_answer = (200, {"state": "loaded", "target": "v1"})
        assert request_reload(service.url, "the-admin-password", "v1") is True
    finally:
        service.server.shutdown()


def test_a_tick_whose_flow_moved_the_champion_then_failed_reports_the_new_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A flow that exported and promoted a new champion, then failed to close its MLflow run,
    was a plain "training failed" for the tick: the log read as nothing changed, and the
    champion the service had not reloaded was never asked again."""
    from app.registry.export import RELOAD_PENDING

    model_dir = tmp_path / "model"
    (model_dir / "b-new").mkdir(parents=True)
    (model_dir / "b-new" / "manifest.json").write_text('{"version": "b-new"}')
    (model_dir / "latest").symlink_to("b-new")
    settings = Settings(
        testing=True, var_dir=tmp_path / "var", model_dir=model_dir, service_url="http://127.0.0.1:9",
        pipeline_candidates="most_liked",
    )  # fmt: skip
    summary = {"champion": "2", "champion_before": "1", "promoted": "2", "exported": str(model_dir / "b-new"),
               "reloaded": False, "bookkeeping_error": "closing the run r2 failed: boom"}  # fmt: skip

    def released_then_failed(s: Settings, trigger: str) -> runner.FlowRun:
        raise runner.BookkeepingError(runner.released_but(summary, summary["bookkeeping_error"]), summary)

    monkeypatch.setattr(schedule.Registry, "from_settings", lambda s: _Registry(champion=False))
    with caplog.at_level("INFO", logger="app.pipeline.schedule"):
        result = schedule.tick(settings, released_then_failed, lambda s: ("d1", "c1"))
    assert result.ran and result.summary == summary
    assert result.error and "the champion is now v2" in result.error and "boom" in result.error
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("released, then failed" in m and "the champion is now v2" in m for m in errors), errors
    assert (tmp_path / "var" / "pipeline" / RELOAD_PENDING).is_file()  # asked again at the next tick


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("reload_superseded", "a newer reload of bundle b-old was started meanwhile"),
        ("reload_in_progress", "a reload of bundle b-old is in progress; retry when it has finished"),
    ],
)
def test_a_reload_another_bundle_took_over_is_not_asked_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, code: str, message: str
) -> None:
    """A 409 ``reload_superseded``/``reload_in_progress`` (an admin's reload of another bundle
    started meanwhile) was read as "not reloaded yet": the reload-pending marker stayed and every
    later tick asked the service to load ``latest`` again, undoing the admin's deliberate reload."""
    from app.registry.export import RELOAD_PENDING, SUPERSEDED, retry_pending_reload

    model_dir = tmp_path / "model"
    (model_dir / "b-new").mkdir(parents=True)
    (model_dir / "b-new" / "manifest.json").write_text('{"version": "b-new"}')
    (model_dir / "latest").symlink_to("b-new")
    marker = tmp_path / "var" / "pipeline" / RELOAD_PENDING
    marker.parent.mkdir(parents=True)
    marker.write_text("b-new\n")
    service = _Service("the-admin-password")
    service.reload_answer = (409, {"error": {"code": code, "message": message}})
    settings = Settings(
        testing=True, var_dir=tmp_path / "var", model_dir=model_dir, service_url=service.url,
        admin_password=SecretStr("the-admin-password"),
    )  # fmt: skip
    try:
        with caplog.at_level(logging.WARNING, logger="app.registry.export"):
            assert retry_pending_reload(settings) == SUPERSEDED
        assert not marker.exists()
        assert retry_pending_reload(settings) is None  # the next tick does not ask again
        assert service.reloads == ["b-new"]
        assert "b-old" in caplog.text and "b-new" in caplog.text
    finally:
        service.server.shutdown()


def test_a_run_whose_reload_another_bundle_took_over_leaves_nothing_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The flow's summary says ``reloaded: superseded``: the scheduler must not leave the
    reload-pending marker (the next tick would undo the other reload) and says why in its log."""
    from app.registry.export import RELOAD_PENDING, SUPERSEDED

    settings = Settings(testing=True, var_dir=tmp_path / "var", service_url="http://127.0.0.1:9")
    summary = {"champion": "2", "champion_before": "1", "promoted": "2",
               "exported": str(tmp_path / "model" / "b-new"), "reloaded": SUPERSEDED}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="app.pipeline.schedule"):
        schedule.report_run(settings, summary)
    assert not (tmp_path / "var" / "pipeline" / RELOAD_PENDING).exists()
    assert any("another bundle" in r.getMessage() and "b-new" in r.getMessage() for r in caplog.records)


def test_the_step_scratch_a_killed_flow_left_in_var_pipeline_tmp_is_removed_by_a_later_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The flow's steps write under ``var/pipeline/tmp`` (each candidate's bundle while it is
    published, every new version's bundle downloaded for the gate's smoke tests) and remove it in
    a ``finally`` that a flow killed with its workers (SIGKILL: its timeout, the launcher's stop
    at SIGTERM, the OOM killer) never reaches: a whole set of bundles stayed there for good at
    each kill. A later run, holding the flow lock, removes what was left there an hour ago or
    more; what was written in the last hour (a flow started by hand, outside the lock) stays."""
    import os
    import time

    from app.recommender.bundle import STALE_STAGING_SECONDS

    settings = Settings(testing=True, var_dir=tmp_path / "var")
    tmp = tmp_path / "var" / "pipeline" / "tmp"
    old = time.time() - STALE_STAGING_SECONDS - 60
    left = []
    for name in ("publish-ease-k1ll3d_0", "gate-k1ll3d_1", "summary-k1ll3d_2"):
        bundle = tmp / name / "bundles" / "20261206T030000-abcdef-ease"
        bundle.mkdir(parents=True)
        (bundle / "model.pkl").write_bytes(b"x" * 1024)
        for path in (bundle / "model.pkl", bundle, bundle.parent, tmp / name):
            os.utime(path, (old, old))
        left.append(tmp / name)
    recent = tmp / "publish-ease-fresh_00"
    recent.mkdir()

    monkeypatch.setattr(runner, "flow_command", _summary_writing_command)
    monkeypatch.setattr(runner, "_close_abandoned", lambda *a: None)
    with caplog.at_level(logging.WARNING):
        runner.run_flow(settings)
    assert [path for path in left if path.exists()] == [], "a killed flow's step scratch was left"
    assert recent.is_dir(), "scratch written in the last hour was removed"
    assert all(any(path.name in r.getMessage() for r in caplog.records) for path in left), caplog.text


def test_a_tick_that_cannot_reach_the_service_database_says_so(
    tmp_path: Path, synthetic_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the service database down, `movierec schedule --once` (and `pipeline run
    --if-changed`) failed with psycopg's words alone (``Error: connection failed: connection to
    server at "127.0.0.1", port 5999 failed``), neither what could not be done nor which server it
    was (the tracking server? the service's database?), and each scheduler tick logged a
    traceback for that outage. The error now says the tick could not decide whether to train
    because the service database (its URL, password masked) cannot be reached."""
    port = _closed_port()
    url = f"postgresql+psycopg://movierec:s3cretpw@127.0.0.1:{port}/movierec"
    settings = Settings(testing=True, var_dir=tmp_path / "var", data_dir=synthetic_data_dir, database_url=url)
    result = schedule.tick(settings, lambda s, trigger: pytest.fail("no flow may start"))
    assert result.error is not None and not result.ran
    assert result.error.startswith(
        "could not decide whether to train: the service database cannot be reached ("
    )
    assert f"127.0.0.1:{port}/movierec" in result.error and "s3cretpw" not in result.error
    assert "s3cretpw" not in caplog.text
    assert not any(record.exc_info for record in caplog.records), "a traceback for an outage"
