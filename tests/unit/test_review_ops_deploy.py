"""Review regressions of deploy-docker.py: interruptions roll back, a missing CLI is a message."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from app import deploy
from app.deploy import Docker
from tests.helpers import frame_running
from tests.unit.test_deploy import (
    PASSWORD,
    FakeContainer,
    FakeEngine,
    interrupted_deploy,
    make_cfg,
    make_deployer,
    secrets_,
)

pytestmark = pytest.mark.unit


def test_ctrl_c_while_waiting_for_health_brings_the_previous_version_back(tmp_path: Path) -> None:
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "starting", 0)],
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    deployer.sleep = interrupted
    with pytest.raises(KeyboardInterrupt):
        deployer.deploy(secrets_())
    assert set(engine.containers) == {"movierec"}
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert "interrupted; rolling back" in out.getvalue()


class SigtermDuringHealthWait(FakeEngine):
    """Sends this process SIGTERM (a CI timeout), or SIGHUP (the deployer's terminal or SSH session
    closed), while the new container is starting."""

    signum: int = signal.SIGTERM
    signalled = False

    def do_container(self, args: list[str]) -> tuple[int, str, str]:
        if args[-1] == self.new_name and not self.signalled:
            if signal.getsignal(self.signum) == signal.SIG_DFL:
                name = signal.Signals(self.signum).name
                raise AssertionError(f"{name} would kill deploy-docker.py with the old version stopped")
            self.signalled = True
            signal.raise_signal(self.signum)
        return super().do_container(args)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_during_deploy_rolls_back_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], signum: int
) -> None:
    """SIGHUP too: closing the terminal (or losing the SSH session) a deployment ran in killed it
    with the previous version stopped under its -previous name."""
    cfg = make_cfg(tmp_path)
    engine = SigtermDuringHealthWait(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "starting", 0)],
    )
    engine.signum = signum
    # a test run started under nohup ignores SIGHUP, and main keeps an ignored SIGHUP ignored (as it
    # should): the signal raised below would then be lost and the health wait run out (CI under nohup)
    inherited = signal.signal(signum, signal.SIG_DFL)
    try:
        before = signal.getsignal(signum)
        assert interrupted_deploy(cfg, engine, monkeypatch) == 130
        assert "interrupted" in capsys.readouterr().err
        assert engine.containers["movierec"].image == "movierec:1.0"
        assert engine.containers["movierec"].status == "running"
        assert signal.getsignal(signum) == before
    finally:
        signal.signal(signum, inherited)


def test_missing_docker_cli_is_a_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_cfg(tmp_path)
    rc = deploy.main(
        ["movierec", "2.0", str(cfg.model_file), str(cfg.test_data_file), "--context", str(cfg.context),
         "--docker", str(tmp_path / "no-docker"), "--secrets-dir", str(cfg.secrets_root)],
        environ={"SESSION_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot run" in err and "no-docker" in err and "Traceback" not in err


def test_docker_call_maps_os_errors() -> None:
    def executor(argv: Sequence[str], capture: bool, stdin: str | None) -> subprocess.CompletedProcess[str]:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(deploy.DeployError, match="Permission denied"):
        Docker("docker", executor).image_exists("x:1")


def test_a_model_file_that_cannot_be_copied_into_the_build_context_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A MODEL_FILE outside the context is copied in for the build: a bundle with a dangling link
    (or, for a deployer who is not root, a file it may not read) ended deploy-docker.py with
    shutil's traceback, not its one-line error, and nothing said which argument was at fault."""
    cfg = make_cfg(tmp_path)
    bundle = tmp_path / "outside" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    (bundle / "model.pkl").symlink_to(tmp_path / "gone.pkl")
    engine = FakeEngine()
    monkeypatch.setattr(deploy, "Docker", lambda binary: Docker(binary, engine))
    rc = deploy.main(
        ["movierec", "2.0", str(bundle), str(cfg.test_data_file), "--context", str(cfg.context),
         "--secrets-dir", str(cfg.secrets_root)],
        environ={"SESSION_PASSWORD": PASSWORD},
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("deploy-docker: ") and str(bundle) in err and "build context" in err
    assert "Traceback" not in err
    assert not [c for c in engine.calls if c[0] == "build"]
    assert [p.name for p in (cfg.context / "model").iterdir()] == ["v1"]  # the staging is gone


def test_a_build_context_whose_model_directory_cannot_take_the_staging_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A MODEL_FILE outside the context is staged in the context's model/: a model/ that cannot take
    it (a link to a model volume not mounted here; a checkout the deploying user may not write, as
    another user than root) ended deploy-docker.py with mkdir's traceback."""
    cfg = make_cfg(tmp_path)
    shutil.rmtree(cfg.context / "model")
    (cfg.context / "model").symlink_to(tmp_path / "unmounted-volume")
    bundle = tmp_path / "outside" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    test_data = tmp_path / "outside" / "test_data.json"
    test_data.write_text("{}")
    engine = FakeEngine()
    monkeypatch.setattr(deploy, "Docker", lambda binary: Docker(binary, engine))
    rc = deploy.main(
        ["movierec", "2.0", str(bundle), str(test_data), "--context", str(cfg.context),
         "--secrets-dir", str(cfg.secrets_root)],
        environ={"SESSION_PASSWORD": PASSWORD},
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    assert err.startswith(f"deploy-docker: cannot stage {bundle} in the build context") and "model" in err
    assert not [c for c in engine.calls if c[0] == "build"]


@pytest.mark.parametrize(
    "said",
    [
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?",
        "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock",
        # DOCKER_CONTEXT naming a context this user has not: its "not found" was read as the image's
        'Failed to initialize: unable to resolve docker endpoint: context "prod": context not found: '
        "open /root/.docker/contexts/meta/0123/meta.json: no such file or directory",
    ],
)
def test_a_docker_daemon_that_cannot_be_reached_is_not_reported_as_a_missing_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], said: str
) -> None:
    """With --no-build (the Bitbucket deploy step), a stopped daemon or a user outside the docker
    group was 'image ... does not exist and --no-build was given': the image was there, the
    operator went looking for it, and docker's own words were never shown."""

    def executor(argv: Sequence[str], capture: bool, stdin: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), 1, "", said + "\n")

    cfg = make_cfg(tmp_path)
    monkeypatch.setattr(deploy, "Docker", lambda binary: Docker(binary, executor))
    rc = deploy.main(
        ["movierec", "2.0", str(cfg.model_file), str(cfg.test_data_file), "--no-build",
         "--secrets-dir", str(cfg.secrets_root)],
        environ={"SESSION_PASSWORD": PASSWORD},
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1
    assert "does not exist" not in err
    assert said in err and "Docker daemon" in err


def test_an_image_that_is_not_there_is_still_none() -> None:
    for said in (
        "Error: No such image: movierec:2.0",
        "Error response from daemon: No such image: m:2",
        "Error: movierec:2.0: image not known",  # Podman
    ):

        def executor(
            argv: Sequence[str], capture: bool, stdin: str | None, said: str = said
        ) -> subprocess.CompletedProcess[str]:
            return subprocess.CompletedProcess(list(argv), 1, "[]\n", said + "\n")

        assert Docker("docker", executor).image_id("movierec:2.0") is None


class InspectFailsAfterTheStart(FakeEngine):
    """`docker image inspect` answers until the new container exists, then cannot ask the daemon."""

    def do_image(self, args: list[str]) -> tuple[int, str, str]:
        if self.new_container is not None:
            return 1, "", "error during connect: context deadline exceeded"
        return super().do_image(args)


def test_a_rollback_that_cannot_inspect_the_tag_still_brings_the_previous_version_back(
    tmp_path: Path,
) -> None:
    engine = InspectFailsAfterTheStart(
        images={"movierec:2.0", "movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(deploy.DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert "could not tell which image movierec:2.0 names" in out.getvalue()


class InterruptedAgainWhileRollingBack(FakeEngine):
    """The new version fails its health check; while its container is being removed, the deployer
    presses Ctrl-C (or the CI job's SIGTERM comes) a second time."""

    signum: int = signal.SIGINT
    signalled = False

    def do_rm(self, args: list[str]) -> tuple[int, str, str]:
        if args[-1] == self.new_name and self.new_container is not None and not self.signalled:
            if signal.getsignal(self.signum) == signal.SIG_DFL:
                raise AssertionError(f"{signal.Signals(self.signum).name} would kill deploy-docker.py")
            self.signalled = True
            signal.raise_signal(self.signum)
        return super().do_rm(args)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_second_interrupt_during_the_rollback_does_not_leave_the_previous_version_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """The rollback (remove the new container, restore the database snapshot, rename the previous
    version back and start it) could itself be interrupted: a second Ctrl-C while "rolling back"
    seemed slow, or a CI runner's second SIGTERM. It ended deploy-docker.py half-way, the previous
    version stopped under its -previous name (and the database perhaps still the new version's):
    the service stayed down. The rollback now runs to its end and says it does."""
    cfg = make_cfg(tmp_path)
    engine = InterruptedAgainWhileRollingBack(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    engine.signum = signum
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    said = io.StringIO()
    monkeypatch.setattr(deploy, "Deployer", functools.partial(deploy.Deployer, out=said))
    assert interrupted_deploy(cfg, engine, monkeypatch) == 1
    assert engine.signalled
    assert set(engine.containers) == {"movierec"}, engine.containers
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running", "the previous version is down"
    assert "still rolling back" in said.getvalue()
    assert {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} == before


class ConnectionDropsWhileStarting(FakeEngine):
    """The deployer's output is a pipe (deploy-docker.py run over SSH: the Bitbucket deploy step);
    the connection drops, its reading end closes, while the new container starts."""

    reader: int | None = None

    def do_run(self, args: list[str]) -> tuple[int, str, str]:
        if "--rm" not in args and self.reader is not None:
            os.close(self.reader)
            self.reader = None
        return super().do_run(args)


@pytest.mark.parametrize(
    ("script", "image"),
    [([("running", "unhealthy", 0)], "movierec:1.0"), ([("running", "healthy", 0)], "movierec:2.0")],
)
def test_an_output_that_goes_away_does_not_abandon_the_deployment_half_way(
    tmp_path: Path, script: list[tuple[str, str | None, int]], image: str
) -> None:
    """Over SSH without a terminal (the pipeline's ssh-run step), a dropped connection or a stopped
    step closes deploy-docker.py's stdout, and its next line raised BrokenPipeError, past the
    rollback (which catches DeployError and KeyboardInterrupt): the previous version stayed
    stopped under its -previous name. Whoever reads it gone, the deployment now goes on to its
    end: the new version healthy, or the previous one back."""
    reader, writer = os.pipe()
    out = os.fdopen(writer, "w")
    engine = ConnectionDropsWhileStarting(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=script,
    )
    engine.reader = reader
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    deployer.out = out
    try:
        if image == "movierec:1.0":
            with pytest.raises(deploy.DeployError, match="health check failed"):
                deployer.deploy(secrets_())
        else:
            deployer.deploy(secrets_())
    finally:
        with contextlib.suppress(OSError):
            out.close()
    assert engine.reader is None  # the pipe did close while the deployment ran
    assert set(engine.containers) == {"movierec"}, engine.containers
    assert engine.containers["movierec"].image == image
    assert engine.containers["movierec"].status == "running"


class InspectFailsOnce(FakeEngine):
    """`docker container inspect` of the live container cannot ask the daemon once (busy, a
    timeout); everything after works."""

    failed = False

    def do_container(self, args: list[str]) -> tuple[int, str, str]:
        if args[-1] == "movierec" and not self.failed:
            self.failed = True
            url = "http://%2Fvar%2Frun%2Fdocker.sock/v1.45/containers/movierec/json"
            return 1, "", f'error during connect: Get "{url}": context deadline exceeded'
        return super().do_container(args)


def test_a_live_container_docker_could_not_be_asked_about_is_not_taken_for_none(tmp_path: Path) -> None:
    """Any failure of `docker container inspect` meant "no such container": the live version was
    not set aside, the new one's `docker run` failed on its name, and the rollback, taking the
    name for the new container's, ran `docker rm --force` on the live version: the service gone.
    An answer other than "no such container" is a DeployError quoting docker, with nothing moved."""
    engine = InspectFailsOnce(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
    )
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(deploy.DeployError, match="context deadline exceeded"):
        deployer.deploy(secrets_())
    assert set(engine.containers) == {"movierec"}, engine.containers
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert not [c for c in engine.calls if c[0] in ("rm", "stop", "rename", "run")], engine.calls


class RecordsSighup(FakeEngine):
    """Notes what SIGHUP would do while the new container starts."""

    seen: object = None

    def do_container(self, args: list[str]) -> tuple[int, str, str]:
        if args[-1] == self.new_name and self.seen is None:
            self.seen = signal.getsignal(signal.SIGHUP)
        return super().do_container(args)


def test_a_sighup_ignored_by_nohup_stays_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = RecordsSighup(
        images={"movierec:1.0"}, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")}
    )
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert interrupted_deploy(make_cfg(tmp_path), engine, monkeypatch) == 0
        assert engine.seen == signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_terminal_s_ctrl_c_reaches_deploy_docker_py_not_the_docker_calls_it_waits_for() -> None:
    """A Ctrl-C in a terminal goes to its whole foreground process group: the docker CLI call
    under way got it too, whatever deploy-docker.py decided. In a rollback, which holds a second
    Ctrl-C (the previous version must come back), the docker rename, start or database restore
    under way was interrupted all the same and the rollback stopped half-way. The calls whose
    output is captured run in a session of their own: deploy-docker.py decides (on a first
    Ctrl-C, subprocess.run ends the call under way). `docker build`, streamed, still gets it."""
    probe = "import os; print(os.getpgid(0) != os.getpgid(os.getppid()))"
    captured = deploy._execute([sys.executable, "-c", probe], True, None)
    assert captured.returncode == 0 and captured.stdout.strip() == "True"
    streamed = deploy._execute([sys.executable, "-c", probe], False, None)
    assert streamed.returncode == 0 and streamed.stdout.strip() == "False"


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: the next write to it blocks until its reader reads."""
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(writer, b"x" * 65536)
    os.set_blocking(writer, True)
    return reader, writer


def _drain(reader: int, until: bytes, seconds: float = 60.0) -> bytes:
    """What ``reader`` holds, read until ``until`` came (or ``seconds`` passed)."""
    os.set_blocking(reader, False)
    drained = bytearray()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and until not in drained:
        with contextlib.suppress(BlockingIOError):
            drained.extend(os.read(reader, 1 << 20))
        time.sleep(0.01)
    return bytes(drained)


def _writing(thread_id: int, seconds: float = 60.0) -> bool:
    """Whether the thread ``thread_id`` came to write a line (deploy.write_out, on a pipe nobody
    reads: it stays there) within ``seconds``: a signal sent before would test nothing, or reach
    the deployer before its rollback began."""
    deadline = time.monotonic() + seconds
    while frame_running(sys._current_frames().get(thread_id), deploy.write_out.__code__) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


class OutputStallsAtTheHealthCheck(FakeEngine):
    """The deployer's output stops being read (an SSH connection's window full, a terminal paused
    by Ctrl-S) while the new container's health check fails."""

    writer: int = -1
    stalled: threading.Event

    def do_container(self, args: list[str]) -> tuple[int, str, str]:
        if args[-1] == self.new_name and not self.stalled.is_set():
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(self.writer, False)
                while True:
                    os.write(self.writer, b"x" * 65536)
            os.set_blocking(self.writer, True)
            self.stalled.set()
        return super().do_container(args)


def test_an_interrupt_while_the_failure_is_being_said_does_not_skip_the_rollback(tmp_path: Path) -> None:
    """The rollback's first line ('FAILED: ...' or 'interrupted; rolling back') was written before
    the interrupts were held: with its output not read, that write waited, and a Ctrl-C meanwhile
    (nothing seemed to happen; after an interruption, the second) raised out of it, before the
    rollback began: the previous
    version stayed stopped under its -previous name. The line is said with the interrupts held."""
    reader, writer = os.pipe()
    engine = OutputStallsAtTheHealthCheck(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    engine.writer = writer
    engine.stalled = threading.Event()
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    out = io.TextIOWrapper(io.BufferedWriter(io.FileIO(writer, "w", closefd=False)), encoding="utf-8")
    deployer.out = out
    main = threading.get_ident()
    drained: list[bytes] = []
    writing: list[bool] = []

    def interrupt_then_read() -> None:
        engine.stalled.wait(60)
        writing.append(_writing(main))  # the deployer's next line: its failure, said with the
        time.sleep(0.3)  # interrupts held, and blocked in its write by now
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.3)
        drained.append(_drain(reader, b"running again"))

    helper = threading.Thread(target=interrupt_then_read)
    helper.start()
    try:
        with pytest.raises(deploy.DeployError, match="health check failed"):
            try:
                deployer.deploy(secrets_())
            except KeyboardInterrupt:
                pytest.fail("the second interrupt ended the deployment before its rollback")
    finally:
        helper.join()
        with contextlib.suppress(OSError):
            out.close()
        os.close(writer)
        os.close(reader)
    assert writing == [True], "the deployer never came to write its failure"
    assert set(engine.containers) == {"movierec"}, engine.containers
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running", "the previous version is down"


def test_an_interrupt_held_while_the_rollback_writes_a_line_does_not_end_the_rollback(tmp_path: Path) -> None:
    """A second Ctrl-C landing while the rollback's own line is being written (its output a pipe or a
    terminal that is not read: an SSH connection's full window, a terminal paused by Ctrl-S) ran the
    handler inside that write, and the handler's "still rolling back" wrote to the same stream
    again: RuntimeError "reentrant call", raised out of the rollback half-way (it catches neither).
    The interrupt is still held, and the rollback's line written once the reader reads again."""
    reader, writer = _full_pipe()
    out = io.TextIOWrapper(io.BufferedWriter(io.FileIO(writer, "w")), encoding="utf-8")
    deployer, _ = make_deployer(make_cfg(tmp_path), FakeEngine(images=set(), containers={}))
    deployer.out = out
    main = threading.get_ident()
    drained: list[bytes] = []
    writing: list[bool] = []

    def interrupt_then_read() -> None:
        writing.append(_writing(main))  # the write below, its interrupts held
        time.sleep(0.3)  # and blocked by now
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.3)
        drained.append(_drain(reader, b"back up"))

    helper = threading.Thread(target=interrupt_then_read)
    helper.start()
    try:
        with deployer.interrupts_held():
            deployer.say("the previous version is back up")
    finally:
        helper.join()
        with contextlib.suppress(OSError):
            out.close()
        os.close(reader)
    assert writing == [True], "the line was never written"
    assert b"the previous version is back up" in drained[0]
