"""The docker tier: the real image, built and run by a real engine.

* deploy-docker.py builds the API image on the debootstrap base (the accuracy test runs in
  the build and its verdict is in the output), runs it with journald logs and
  ``--restart on-failure:5``, and the container answers the seed's curl sequence;
* a regressed model (its test data expects more than it scores) fails the build for that
  reason, and the running version keeps serving;
* a new version that cannot start (weak JWT secret) is rolled back to the running one;
* the database and the feedback journal are named volumes: a score given to one version is
  in the database of the next, and a new version that changed the database and failed is
  rolled back onto the snapshot taken before it started;
* docker-compose.yml validates, and its bootstrap, api and scheduler services run from our
  images (SQLite: no Docker Hub here), train a model on ml-100k and serve it.

Run with ``pytest -m docker -s`` to watch the builds. Everything created is removed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.deploy import DATABASE_FILE, SNAPSHOT_SUFFIX, DeployError, smoke_test
from tests.e2e.dockerenv import (
    BASE_IMAGE,
    REPO,
    DockerEnv,
    DockerUnavailable,
    docker_env,
    stop_daemon,
)
from tests.helpers import free_port

pytestmark = pytest.mark.docker

IMAGE = "movierec-e2e"
PASSWORD = "e2e-" + secrets.token_urlsafe(12)
JWT_SECRET = secrets.token_urlsafe(48)
DEPLOY_TIMEOUT = 1200
# the deploying user's state directory (deploy-docker.py keeps the containers' secret files there)
STATE_HOME = Path(tempfile.gettempdir()) / f"movierec-e2e-state-{uuid.uuid4().hex[:8]}"


@dataclass
class Deployment:
    container: str
    version: str
    port: int
    output: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Fixtures live here, not in a conftest.py: tests/e2e is shared with the browser tier.
@pytest.fixture(scope="session")
def docker() -> Iterator[DockerEnv]:
    try:
        env = docker_env()
    except DockerUnavailable as exc:
        pytest.skip(f"Docker cannot run here: {exc}")
    yield env
    stop_daemon(env)


@pytest.fixture(scope="session")
def journald() -> Iterator[object]:
    from tests.integration.journald import JournaldUnavailable, running_journald

    gen = running_journald()
    try:
        handle = next(gen)
    except JournaldUnavailable as exc:
        pytest.skip(f"journald cannot run here: {exc}")
    yield handle
    gen.close()


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:8]


def run_deploy(docker: DockerEnv, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """./deploy-docker.py as a user runs it, output streamed (pytest -s) and captured."""
    environ = {
        **docker.env,
        "SESSION_PASSWORD": PASSWORD,
        "MOVIEREC_JWT_SECRET": JWT_SECRET,
        "XDG_STATE_HOME": str(STATE_HOME),
        **(env or {}),
    }
    argv = [
        sys.executable,
        str(REPO / "deploy-docker.py"),
        *args,
        "--docker",
        docker.cli,
        "--base-image",
        BASE_IMAGE,
    ]
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
        stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        rc = proc.wait(timeout=DEPLOY_TIMEOUT)
    return rc, "".join(lines)


def inspect(docker: DockerEnv, ref: str, kind: str = "container") -> dict[str, object]:
    return json.loads(docker(kind, "inspect", ref).stdout)[0]


@pytest.fixture(scope="module")
def deployed(docker: DockerEnv, journald: object, model_store: Path, run_id: str) -> Iterator[Deployment]:
    """The API deployed once with deploy-docker.py; removed (with its images) afterwards."""
    container = f"movierec-e2e-{run_id}"
    port = free_port()
    latest = model_store / "latest"
    started = time.monotonic()
    rc, output = run_deploy(
        docker, IMAGE, f"v1-{run_id}", str(latest), str(latest / "test_data.json"),
        "--container-name", container, "--port-mapping", f"127.0.0.1:{port}",
    )  # fmt: skip
    print(f"[e2e] first deployment: exit {rc} in {time.monotonic() - started:.0f}s", flush=True)
    try:
        assert rc == 0, output[-3000:]
        yield Deployment(container, f"v1-{run_id}", port, output)
    finally:
        docker("rm", "--force", container, f"{container}-previous", check=False)
        docker("volume", "rm", f"{container}-db", f"{container}-journal", check=False)
        for tag in (f"v1-{run_id}", f"regressed-{run_id}", f"v2-{run_id}", f"breaks-the-db-{run_id}"):
            docker("rmi", f"{IMAGE}:{tag}", check=False)
        shutil.rmtree(STATE_HOME, ignore_errors=True)


def test_build_runs_the_accuracy_test(deployed: Deployment) -> None:
    assert "accuracy test: MODEL_FILE=model/.deploy-" in deployed.output  # staged into the context
    verdict = next(line for line in deployed.output.splitlines() if '"metric"' in line and '"passed"' in line)
    result = json.loads(verdict[verdict.index("{") :])
    assert result["passed"] is True and result["metric"] == "ndcg@10"
    assert result["score"] >= result["expected_score"] - result["tolerance"]
    assert "OK: ndcg@10" in deployed.output
    assert "installed model" in deployed.output


def test_a_plain_build_takes_a_model_store_as_make_model_writes_it(
    docker: DockerEnv, model_store: Path, run_id: str
) -> None:
    """`docker build --build-arg MODEL_FILE=model`, the store `make model` writes, without
    MODEL_TEST_FILE: it failed in the model stage's COPY ('"/model/test_data.json": not found'; the
    default test data was ${MODEL_FILE}/test_data.json). The image is built from the store's latest,
    tested on that bundle's own test data, and serves it. (The store is copied into the context's
    git-ignored model/ as deploy-docker.py stages models, and removed.)"""
    store = REPO / "model" / f".e2e-store-{run_id}"
    shutil.copytree(model_store, store, symlinks=True)
    version = (model_store / "latest").resolve().name
    image = f"{IMAGE}:store-{run_id}"
    try:
        started = time.monotonic()
        rc, output = docker.stream(
            "build", "--tag", image, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "--build-arg", f"MODEL_FILE={store.relative_to(REPO)}", str(REPO),
        )  # fmt: skip
        print(f"[e2e] image built from a model store in {time.monotonic() - started:.0f}s", flush=True)
        assert rc == 0, output[-3000:]
        assert "OK: ndcg@10" in output and f"(model {version})" in output, output[-3000:]
        served = docker("run", "--rm", "--entrypoint", "readlink", image, "-f", "/model/latest").stdout
        assert served.strip() == f"/model/{version}"
    finally:
        shutil.rmtree(store, ignore_errors=True)
        docker("rmi", image, check=False)


def test_container_answers_the_seed_curl_sequence(deployed: Deployment, model_store: Path) -> None:
    result = smoke_test(deployed.url, PASSWORD)
    assert len(result.recommendations) == 10
    assert result.ready["status"] == "ok"
    assert result.ready["model_version"] == os.readlink(model_store / "latest")
    with pytest.raises(DeployError, match="401"):
        smoke_test(deployed.url, "wrong password")


def test_container_runs_as_configured_without_secrets_in_the_image(
    docker: DockerEnv, deployed: Deployment
) -> None:
    info = inspect(docker, deployed.container)
    host = info["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}  # type: ignore[index]
    assert host["LogConfig"]["Type"] == "journald"  # type: ignore[index]
    assert info["State"]["Health"]["Status"] == "healthy"  # type: ignore[index]
    image = inspect(docker, f"{IMAGE}:{deployed.version}", "image")
    config = image["Config"]
    assert config["User"] == "movierec"  # type: ignore[index]
    env_names = {item.split("=", 1)[0] for item in config["Env"]}  # type: ignore[index]
    assert not env_names & {"SESSION_PASSWORD", "MOVIEREC_JWT_SECRET", "PIP_CERT"}
    history = docker("history", "--no-trunc", f"{IMAGE}:{deployed.version}").stdout
    assert PASSWORD not in history and JWT_SECRET not in history
    # the secrets went through a private env file that no longer exists
    leftovers = list(Path(os.environ.get("TMPDIR", "/tmp")).glob("movierec-deploy-*"))
    assert leftovers == []
    whoami = docker("exec", deployed.container, "id", "-un").stdout.strip()
    assert whoami == "movierec"


def _wait_healthy(docker: DockerEnv, container: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while inspect(docker, container)["State"].get("Health", {}).get("Status") != "healthy":  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{container} did not become healthy"
        time.sleep(1)


def test_secrets_reach_the_container_as_files_not_in_its_configuration(
    docker: DockerEnv, deployed: Deployment
) -> None:
    """`docker inspect` (anyone who can talk to the daemon) and every process's environment in the
    container hold only the secret files' paths; the service still logs in with the password, also
    after a restart (on-failure restarts mount the same files again)."""
    info = inspect(docker, deployed.container)
    env = info["Config"]["Env"]  # type: ignore[index]
    for secret in (PASSWORD, JWT_SECRET):
        assert not [item for item in env if secret in item]
    names = {item.split("=", 1)[0] for item in env}
    assert not names & {"SESSION_PASSWORD", "MOVIEREC_JWT_SECRET"}
    assert {"SESSION_PASSWORD_FILE", "MOVIEREC_JWT_SECRET_FILE"} <= names
    mount = next(m for m in info["Mounts"] if m["Destination"] == "/run/secrets")  # type: ignore[attr-defined]
    assert mount["Type"] == "bind" and mount["RW"] is False
    # on the host: the deploying user's state directory, read-only files, closed to other users
    source = Path(mount["Source"])
    assert source.parent == STATE_HOME / "movierec" / "secrets" / deployed.container
    assert stat.S_IMODE((source / "SESSION_PASSWORD").stat().st_mode) == 0o440
    assert stat.S_IMODE(source.parent.parent.stat().st_mode) == 0o700
    # in the container: no process's environment has a secret (uWSGI writes its process titles
    # over its own environ area, so the whole /proc of the container is read, not pid 1's alone),
    # only the files' paths; the service user reads the files
    environ = docker("exec", deployed.container, "sh", "-c", "cat /proc/[0-9]*/environ", check=False).stdout
    assert environ and PASSWORD not in environ and JWT_SECRET not in environ
    exec_env = docker("exec", deployed.container, "env").stdout.splitlines()
    assert "SESSION_PASSWORD_FILE=/run/secrets/SESSION_PASSWORD" in exec_env
    assert docker("exec", deployed.container, "id", "-un").stdout.strip() == "movierec"
    read = docker("exec", deployed.container, "cat", "/run/secrets/SESSION_PASSWORD").stdout
    assert read == PASSWORD + "\n"
    write = docker(
        "exec", deployed.container, "sh", "-c", "echo x >> /run/secrets/SESSION_PASSWORD", check=False
    )
    assert write.returncode != 0
    assert smoke_test(deployed.url, PASSWORD).recommendations
    docker("restart", "--time", "30", deployed.container, timeout=120)
    _wait_healthy(docker, deployed.container)
    assert smoke_test(deployed.url, PASSWORD).recommendations


def test_logs_reach_journald(deployed: Deployment) -> None:
    assert f"journalctl CONTAINER_NAME={deployed.container}" in deployed.output
    entries: list[dict[str, str]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not entries:
        out = subprocess.run(
            ["journalctl", f"CONTAINER_NAME={deployed.container}", "-o", "json", "--no-pager"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        time.sleep(0.5)
    assert entries, "no journald entry carries the container's name"
    assert all(entry.get("CONTAINER_TAG") == deployed.container for entry in entries)
    assert PASSWORD not in "\n".join(str(entry.get("MESSAGE", "")) for entry in entries)


def test_regressed_model_fails_the_build_and_the_running_version_stays(
    docker: DockerEnv, deployed: Deployment, model_store: Path, tmp_path: Path, run_id: str
) -> None:
    from app.recommender.accuracy import run_accuracy_test

    bundle = (model_store / "latest").resolve()
    achieved = run_accuracy_test(bundle, bundle / "test_data.json").score
    regressed = tmp_path / "regressed_test_data.json"
    payload = json.loads((bundle / "test_data.json").read_text())
    payload["expected_score"] = achieved + 0.05  # the model "used to" score more than it does
    regressed.write_text(json.dumps(payload))

    rc, output = run_deploy(
        docker, IMAGE, f"regressed-{run_id}", str(bundle), str(regressed),
        "--container-name", deployed.container, "--port-mapping", f"127.0.0.1:{deployed.port}",
    )  # fmt: skip
    assert rc != 0
    assert f"FAILED: ndcg@10 {achieved:.6f} < expected {achieved + 0.05:.6f}" in output
    assert "building movierec-e2e:regressed" in output and "Nothing was deployed" in output
    assert not docker.image_exists(f"{IMAGE}:regressed-{run_id}")
    info = inspect(docker, deployed.container)
    assert info["Config"]["Image"] == f"{IMAGE}:{deployed.version}"  # type: ignore[index]
    assert smoke_test(deployed.url, PASSWORD).recommendations


def test_a_version_that_cannot_start_is_rolled_back(docker: DockerEnv, deployed: Deployment) -> None:
    rc, output = run_deploy(
        docker, IMAGE, deployed.version, "unused", "unused", "--no-build", "--health-timeout", "120",
        "--container-name", deployed.container, "--port-mapping", f"127.0.0.1:{deployed.port}",
        env={"MOVIEREC_JWT_SECRET": "short"},
    )  # fmt: skip
    assert rc != 0
    assert "MOVIEREC_JWT_SECRET is too weak" in output  # the new container's last log lines
    assert "is running again" in output
    deadline = time.monotonic() + 60
    while inspect(docker, deployed.container)["State"]["Health"]["Status"] != "healthy":  # type: ignore[index]
        assert time.monotonic() < deadline, "the restored container did not become healthy"
        time.sleep(1)
    assert docker("ps", "-a", "--filter", f"name={deployed.container}-previous", "-q").stdout.strip() == ""
    assert smoke_test(deployed.url, PASSWORD).recommendations


def _query(docker: DockerEnv, container: str, sql: str, *params: str) -> list[list[object]]:
    """Rows of the container's SQLite database, read in the container (its user owns the file)."""
    script = (
        "import json, sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
        "print(json.dumps(db.execute(sys.argv[2], sys.argv[3:]).fetchall()))"
    )
    out = docker("exec", container, "python", "-c", script, DATABASE_FILE, sql, *params).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def _db_files(docker: DockerEnv, container: str) -> list[str]:
    return docker("exec", container, "ls", "/var/lib/movierec/db").stdout.split()


def test_a_redeployment_keeps_the_scores_in_the_state_volumes(
    docker: DockerEnv, deployed: Deployment, run_id: str
) -> None:
    """Another version is deployed in place of the first: it mounts the same named volumes (which
    its unprivileged user can write), and the score given to the first version is in its database."""
    scored = smoke_test(deployed.url, PASSWORD)  # scores the first title 5.0
    docker("tag", f"{IMAGE}:{deployed.version}", f"{IMAGE}:v2-{run_id}")
    rc, output = run_deploy(
        docker, IMAGE, f"v2-{run_id}", "unused", "unused", "--no-build",
        "--container-name", deployed.container, "--port-mapping", f"127.0.0.1:{deployed.port}",
    )  # fmt: skip
    assert rc == 0, output[-3000:]
    info = inspect(docker, deployed.container)
    assert info["Config"]["Image"] == f"{IMAGE}:v2-{run_id}"  # type: ignore[index]
    rows = _query(
        docker, deployed.container, "SELECT score FROM feedback WHERE request_id = ?", scored.request_id
    )
    assert rows == [[5.0]]
    assert "took a snapshot of the database" in output
    mounts = {m["Destination"]: m for m in info["Mounts"]}  # type: ignore[attr-defined]
    for suffix, target in (("db", "/var/lib/movierec/db"), ("journal", "/var/lib/movierec/journal")):
        assert (
            mounts[target]["Type"] == "volume" and mounts[target]["Name"] == f"{deployed.container}-{suffix}"
        )
        volume = inspect(docker, f"{deployed.container}-{suffix}", "volume")
        assert volume["Labels"]["org.movierec.container"] == deployed.container  # type: ignore[index]
        # a fresh volume took the image directory's owner and mode: the service's user writes it
        owner = docker("exec", deployed.container, "stat", "-c", "%u:%g %a", target).stdout.strip()
        assert owner == "10001:10001 750"
    assert "/var/lib/movierec/models" not in mounts and "/var/lib/movierec" not in mounts
    assert "movierec.db" + SNAPSHOT_SUFFIX not in _db_files(docker, deployed.container)  # dropped on success
    assert smoke_test(deployed.url, PASSWORD).recommendations


def test_a_new_version_that_changed_the_database_and_failed_is_rolled_back_onto_the_snapshot(
    docker: DockerEnv, deployed: Deployment, run_id: str
) -> None:
    """The new version writes to the database (as a migration would) and then cannot start: the
    running version comes back on the database as it was before, scores included."""
    scored = smoke_test(deployed.url, PASSWORD)
    running = inspect(docker, deployed.container)["Config"]["Image"]  # type: ignore[index]
    breaks = f"{IMAGE}:breaks-the-db-{run_id}"
    migrate_and_fail = (
        f"import sqlite3; db = sqlite3.connect({DATABASE_FILE!r}); "
        "db.execute('CREATE TABLE from_the_failed_version (x)'); db.commit(); raise SystemExit(1)"
    )
    dockerfile = f"FROM {running}\nCMD {json.dumps(['python', '-c', migrate_and_fail])}\n"
    built = subprocess.run(
        [docker.cli, "build", "--tag", breaks, "-"], input=dockerfile, capture_output=True, text=True,
        env=docker.env, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    rc, output = run_deploy(
        docker, IMAGE, f"breaks-the-db-{run_id}", "unused", "unused", "--no-build", "--health-timeout", "120",
        "--container-name", deployed.container, "--port-mapping", f"127.0.0.1:{deployed.port}",
    )  # fmt: skip
    assert rc != 0
    assert "is running again" in output
    _wait_healthy(docker, deployed.container)
    assert inspect(docker, deployed.container)["Config"]["Image"] == running  # type: ignore[index]
    tables = _query(docker, deployed.container, "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert ["from_the_failed_version"] not in tables  # the failed version's change is undone
    assert ["feedback"] in tables
    assert "took a snapshot of the database" in output
    assert "restored the database snapshot" in output
    # the score given just before is there: the stopped version shipped its journal before the snapshot
    rows = _query(
        docker, deployed.container, "SELECT score FROM feedback WHERE request_id = ?", scored.request_id
    )
    assert rows == [[5.0]]
    assert "movierec.db" + SNAPSHOT_SUFFIX not in _db_files(docker, deployed.container)
    assert smoke_test(deployed.url, PASSWORD).recommendations


def test_a_container_deployed_before_the_volumes_has_its_database_moved_into_them(
    docker: DockerEnv, deployed: Deployment, run_id: str
) -> None:
    """A container that keeps its database in its own layer (deployed before the state volumes):
    the first deployment with volumes starts on that database, not on an empty one."""
    container = f"movierec-e2e-old-{run_id}"
    image = f"{IMAGE}:{deployed.version}"
    create = (
        f"import sqlite3; db = sqlite3.connect({DATABASE_FILE!r}); "
        "db.execute('CREATE TABLE from_before_the_volumes (score REAL)'); "
        "db.execute('INSERT INTO from_before_the_volumes VALUES (5.0)'); db.commit()"
    )
    try:
        docker("run", "--name", container, image, "python", "-c", create)  # exits: a stopped old version
        rc, output = run_deploy(
            docker, IMAGE, deployed.version, "unused", "unused", "--no-build",
            "--container-name", container, "--port-mapping", f"127.0.0.1:{free_port()}",
        )  # fmt: skip
        assert rc == 0, output[-3000:]
        assert f"moved the database of {image} out of its container" in output
        assert _query(docker, container, "SELECT score FROM from_before_the_volumes") == [[5.0]]
        assert _query(docker, container, "SELECT count(*) FROM feedback") == [[0]]  # migrated in place
    finally:
        docker("rm", "--force", container, f"{container}-previous", check=False)
        docker("volume", "rm", f"{container}-db", f"{container}-journal", check=False)


# --------------------------------------------------------------------------- compose


ADMIN_PASSWORD = "admin-" + secrets.token_urlsafe(12)
COMPOSE_SECRETS = {
    "SESSION_PASSWORD": PASSWORD,
    "MOVIEREC_JWT_SECRET": JWT_SECRET,
    "MOVIEREC_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "POSTGRES_PASSWORD": "pg-" + secrets.token_urlsafe(12),
}
"""The secrets as a user of an earlier version had them in .env (and so in Compose's environment):
`make compose-secrets` takes them into the files, and none may reach a container's configuration."""


def compose_secrets_dir(directory: Path, env: dict[str, str]) -> Path:
    """`make compose-secrets` into ``directory`` (MOVIEREC_SECRETS_DIR), from COMPOSE_SECRETS."""
    written = subprocess.run(
        [sys.executable, "-m", "app.compose_secrets", "--dir", str(directory)],
        cwd=REPO, env={**env, **COMPOSE_SECRETS}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    return directory


def test_compose_file_validates(docker: DockerEnv, tmp_path: Path) -> None:
    if docker.compose is None:
        pytest.skip("docker-compose is not installed")
    env = {**docker.env, **COMPOSE_SECRETS}
    env["MOVIEREC_SECRETS_DIR"] = str(compose_secrets_dir(tmp_path / "secrets", env))
    result = subprocess.run(
        [docker.compose, "-f", str(REPO / "docker-compose.yml"), "config", "--services"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"postgres", "redis", "mlflow", "bootstrap", "api", "scheduler"}
    # the configuration Compose hands the engine names the files, and holds no secret from its environment
    resolved = subprocess.run(
        [docker.compose, "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr
    assert not [name for name, value in COMPOSE_SECRETS.items() if value in resolved.stdout]
    assert f"file: {tmp_path / 'secrets' / 'session_password'}" in resolved.stdout


def _wait_for(predicate: object, timeout: float, what: str, logs: object = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() >= deadline:
            tail = logs()[-3000:] if logs is not None else ""  # type: ignore[operator]
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(1)


def test_compose_services_train_and_serve_a_model(docker: DockerEnv, run_id: str, tmp_path: Path) -> None:
    if docker.compose is None:
        pytest.skip("docker-compose is not installed")
    pipeline, server = f"movierec-pipeline-e2e:{run_id}", f"movierec-server-e2e:{run_id}"
    project = f"movierec-e2e-{run_id}"
    port = free_port()
    env = {
        **docker.env,
        **COMPOSE_SECRETS,  # left in Compose's environment (an old .env): they must go no further
        "MOVIEREC_SECRETS_DIR": str(compose_secrets_dir(tmp_path / "secrets", docker.env)),
        "E2E_PIPELINE_IMAGE": pipeline,
        "E2E_SERVER_IMAGE": server,
        "MOVIEREC_HTTP_PORT": f"127.0.0.1:{port}",
        "MLFLOW_PORT": str(free_port()),
        "COMPOSE_PROJECT_NAME": project,
    }
    files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(Path(__file__).parent / "compose.sqlite.yml")]

    def compose(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        assert docker.compose is not None
        result = subprocess.run(
            [docker.compose, *files, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, f"docker-compose {' '.join(args)}:\n{result.stderr[-3000:]}"
        return result

    def state(service: str) -> dict[str, object]:
        container_id = compose("ps", "-q", service).stdout.strip()
        return inspect(docker, container_id)["State"]  # type: ignore[return-value]

    try:
        for target, tag in (("pipeline", pipeline), ("server", server)):
            started = time.monotonic()
            rc, _ = docker.stream(
                "build",
                "--target",
                target,
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "--tag",
                tag,
                str(REPO),
            )
            assert rc == 0, f"building the {target} target failed"
            print(f"[e2e] {target} image built in {time.monotonic() - started:.0f}s", flush=True)

        compose("up", "--detach", "--no-deps", "mlflow")
        _wait_for(lambda: state("mlflow").get("Health", {}).get("Status") == "healthy", 120, "mlflow healthy")  # type: ignore[union-attr]

        started = time.monotonic()
        compose("up", "--detach", "--no-deps", "bootstrap")
        _wait_for(lambda: state("bootstrap")["Status"] == "exited", 600, "bootstrap to finish")
        logs = compose("logs", "--no-color", "bootstrap").stdout
        print(logs[-2000:], flush=True)
        assert state("bootstrap")["ExitCode"] == 0, logs[-3000:]
        print(
            f"[e2e] bootstrap fetched the data and trained in {time.monotonic() - started:.0f}s", flush=True
        )
        assert "served=" in logs

        compose("up", "--detach", "--no-deps", "api", "scheduler")
        _wait_for(
            lambda: state("api").get("Health", {}).get("Status") == "healthy",  # type: ignore[union-attr]
            120,
            "api healthy",
            logs=lambda: compose("logs", "--no-color", "--tail", "40", "api", "scheduler").stdout,
        )
        trained = compose("exec", "-T", "api", "readlink", "/var/lib/movierec/models/latest").stdout.strip()
        result = smoke_test(f"http://127.0.0.1:{port}", PASSWORD)
        assert result.ready["model_version"] == trained
        assert len(result.recommendations) == 10
        time.sleep(3)
        scheduler = state("scheduler")
        assert scheduler["Running"] is True and scheduler["Restarting"] is False, compose(
            "logs", "scheduler"
        ).stdout
        _assert_compose_secrets_are_files(docker, compose, port)
    finally:
        subprocess.run(
            [docker.compose, *files, "down", "--volumes", "--remove-orphans", "--timeout", "10"],
            capture_output=True, env=env, check=False, timeout=300,
        )  # fmt: skip
        docker("rmi", pipeline, server, check=False)


def _assert_compose_secrets_are_files(
    docker: DockerEnv, compose: Callable[..., subprocess.CompletedProcess[str]], port: int
) -> None:
    """No secret in any compose container's configuration (`docker inspect`) nor in any process's
    environment in the api and the scheduler: only the paths of the files under /run/secrets,
    read-only, which the service reads (it logs in with the session and the admin password) and
    the scheduler too (its admin password, for the reload)."""
    values = list(COMPOSE_SECRETS.values())
    for service in ("mlflow", "bootstrap", "api", "scheduler"):
        info = inspect(docker, compose("ps", "-q", service).stdout.strip())
        env = info["Config"]["Env"]  # type: ignore[index]
        assert not [item for item in env for value in values if value in item], service
        names = {item.split("=", 1)[0] for item in env}
        assert not names & set(COMPOSE_SECRETS), service
        for mount in info["Mounts"]:  # type: ignore[attr-defined]
            if mount["Destination"].startswith("/run/secrets/"):
                assert mount["RW"] is False, (service, mount)
    for service, files in (
        ("api", {"SESSION_PASSWORD_FILE", "MOVIEREC_JWT_SECRET_FILE", "MOVIEREC_ADMIN_PASSWORD_FILE"}),
        ("scheduler", {"MOVIEREC_ADMIN_PASSWORD_FILE"}),
    ):
        environ = compose("exec", "-T", service, "sh", "-c", "cat /proc/[0-9]*/environ").stdout
        assert environ and not [value for value in values if value in environ], service
        assert {f"{name}=/run/secrets/" in environ for name in files} == {True}, service
    assert smoke_test(f"http://127.0.0.1:{port}", PASSWORD).recommendations
    assert smoke_test(f"http://127.0.0.1:{port}", ADMIN_PASSWORD).recommendations  # the admin file, read
    with pytest.raises(DeployError, match="401"):
        smoke_test(f"http://127.0.0.1:{port}", "wrong password")
    read = "from app.config import Settings; s = Settings(); print(s.admin_password.get_secret_value())"
    assert compose("exec", "-T", "scheduler", "python", "-c", read).stdout.strip() == ADMIN_PASSWORD
