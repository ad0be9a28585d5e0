"""deploy-docker.py's logic without a Docker engine: commands, secrets and failure handling.

The Docker CLI is replaced by a small in-memory engine that understands exactly the calls
app.deploy makes (inspect, build, run, rename, stop, start, rm, rmi, logs, volume) and keeps
the state they imply (a one-off ``run --rm`` of the database snapshot runs our own code on a
volume's files, with a real SQLite), so the tests check what the deployer *does* to containers,
not only which strings it prints. tests/e2e runs the same code against a real engine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from app import deploy
from app.deploy import (
    CONTAINER_PORT,
    DATABASE_FILE,
    IMAGE_GID,
    SECRETS_MOUNT,
    SNAPSHOT_SUFFIX,
    STATE_VOLUMES,
    ContainerState,
    DeployConfig,
    Deployer,
    DeployError,
    Docker,
    SecretFiles,
    Secrets,
    build_command,
    default_container_name,
    install_model,
    private_env_file,
    publish_spec,
    resolve_secrets,
    restore_database,
    run_command,
    snapshot_database,
    staged_in_context,
    write_secret_files,
)
from app.secret_files import SECRET_VARIABLES
from tests.helpers import STOP_MARGIN_SECONDS, free_port, uwsgi_stop_seconds

pytestmark = pytest.mark.unit

PASSWORD = "correct horse battery staple"
IMAGE_ENV = {"MOVIEREC_DATABASE_URL": f"sqlite:///{DATABASE_FILE}"}
"""What the image's environment (Dockerfile ENV) sets that the service also reads as a secret."""


# --------------------------------------------------------------------------- a fake engine


@dataclass
class FakeContainer:
    image: str
    status: str = "running"
    health: str | None = "starting"
    restarts: int = 0
    exit_code: int = 0
    env: dict[str, str] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # path in the container -> content
    volumes: dict[str, str] = field(default_factory=dict)  # mount point -> volume name
    layer: dict[str, bytes] = field(default_factory=dict)  # its own /var/lib/movierec/db (no volume)
    stop_timeout: int | None = None  # `docker run --stop-timeout`; None (null) when run without one
    model_version: str | None = None  # what its /health/ready names

    @property
    def port_bindings(self) -> dict[str, list[dict[str, str]]]:
        """``HostConfig.PortBindings`` as Docker renders it for the ``--publish [IP:]PORT:8000`` given."""
        bindings: dict[str, list[dict[str, str]]] = {}
        for i, arg in enumerate(self.argv):
            if arg == "--publish":
                ip, _, host_port = self.argv[i + 1].rsplit(":", 1)[0].rpartition(":")
                bindings.setdefault(f"{CONTAINER_PORT}/tcp", []).append({"HostIp": ip, "HostPort": host_port})
        return bindings

    def secret(self, name: str) -> str:
        """What the app reads for ``name``: the file ``$<name>_FILE`` names, minus one newline."""
        assert not self.env.get(name), f"{name} has a value in the container's environment"
        return self.secrets[self.env[f"{name}_FILE"]].removesuffix("\n")


# The first worker's cause, then the second worker's import interrupted by the master (a long
# KeyboardInterrupt traceback), then the restarted container's banner: the cause is more than
# LOG_TAIL_LINES back (tests/e2e saw exactly this).
FAILED_START_LOG = "\n".join(
    [
        "*** Starting uWSGI 2.0.31 (64bit) ***",
        "Traceback (most recent call last):",
        '  File "/app/app/config.py", line 158, in check_secrets',
        "app.config.ConfigurationError: MOVIEREC_JWT_SECRET is too weak: use at least 32 random characters",
        "unable to load app 0 (mountpoint='') (callable not found or import error)",
        "Traceback (most recent call last):",
        *[f'  File "/opt/venv/lib/numpy/module{i}.py", line {i}, in <module>' for i in range(40)],
        "KeyboardInterrupt",
        '{"level":"ERROR","logger":"app.storage","message":"database unreachable"}',
        '{"level":"WARNING","logger":"app","message":"not an error"}',
        "*** no app loaded. GAME OVER ***",
        *[f"uwsgi banner line {i}" for i in range(40)],
    ]
)


@dataclass
class FakeEngine:
    """The subset of the docker CLI app.deploy uses, with state."""

    images: set[str] = field(default_factory=set)
    # the image each tag names (a tag not listed names "sha256:<tag>"); a build gives a new one
    image_ids: dict[str, str] = field(default_factory=dict)
    removed_ids: list[str] = field(default_factory=list)
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    build_rc: int = 0
    build_output: str = ""  # what `docker build` writes (streamed, and seen by the deployer)
    run_rc: int = 0
    # what a newly run container does on each inspect: a list of (status, health, restarts)
    script: list[tuple[str, str | None, int]] = field(default_factory=lambda: [("running", "healthy", 0)])
    calls: list[list[str]] = field(default_factory=list)
    env_file_modes: list[int] = field(default_factory=list)
    env_file_paths: list[Path] = field(default_factory=list)
    secret_dirs: list[Path] = field(default_factory=list)  # the host directories mounted, in order
    new_name: str | None = None
    new_container: FakeContainer | None = None
    # a new container's stderr: a failed start as uwsgi writes it with two workers
    log: list[str] = field(default_factory=lambda: FAILED_START_LOG.splitlines())
    # named volumes: name -> {file name: content}, and their labels
    volumes: dict[str, dict[str, bytes]] = field(default_factory=dict)
    volume_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    failing_commands: set[str] = field(default_factory=set)  # one-off `database` actions that fail
    # what the service does to its volumes when it starts (a migration, say)
    on_start: Callable[[FakeEngine], None] | None = None
    served_model: str | None = None  # the model version a new container serves
    # calls the daemon refuses, "VERB TARGET" (`rm movierec-previous`, `rmi movierec:2.0`) -> its stderr
    refused: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, argv: Sequence[str], capture: bool, stdin: str | None
    ) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        assert argv[0] == "docker"
        self.calls.append(argv[1:])
        verb, args = argv[1], argv[2:]
        if f"{verb} {args[-1]}" in self.refused:
            return subprocess.CompletedProcess(argv, 1, "", self.refused[f"{verb} {args[-1]}"] + "\n")
        handler = getattr(self, "do_" + verb.replace("-", "_"))
        rc, out, err = handler(args)
        return subprocess.CompletedProcess(argv, rc, out, err)

    def image_id(self, ref: str) -> str:
        return self.image_ids.get(ref, f"sha256:{ref}")

    def do_image(self, args: list[str]) -> tuple[int, str, str]:
        assert args[0] == "inspect"
        if args[-1] not in self.images:
            return 1, "", "No such image"
        return 0, f"{self.image_id(args[-1])}\n", ""

    def do_build(self, args: list[str]) -> tuple[int, str, str]:
        if self.build_rc == 0:
            tag = args[args.index("--tag") + 1]
            self.images.add(tag)
            self.image_ids[tag] = f"sha256:built-{len(self.calls)}"
        return self.build_rc, self.build_output, ""

    def do_tag(self, args: list[str]) -> tuple[int, str, str]:
        source, tag = args
        self.images.add(tag)
        self.image_ids[tag] = source if source.startswith("sha256:") else self.image_id(source)
        return 0, "", ""

    def do_container(self, args: list[str]) -> tuple[int, str, str]:
        assert args[0] == "inspect"
        name = args[-1]
        c = self.containers.get(name)
        if c is None:
            return 1, "", f"No such container: {name}"
        if c is self.new_container and self.script:  # the container run, not the old one renamed back
            c.status, c.health, c.restarts = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        state = {"Status": c.status, "Running": c.status == "running", "ExitCode": c.exit_code}
        if c.health is not None:
            state["Health"] = {"Status": c.health}
        mounts = [{"Type": "volume", "Name": n, "Destination": t} for t, n in c.volumes.items()]
        fields = {  # what --format may ask for, as docker renders it
            "{{json .State}}": json.dumps(state),
            "{{.RestartCount}}": str(c.restarts),
            "{{.Config.Image}}": c.image,
            "{{json .Mounts}}": json.dumps(mounts),
            "{{json .Config.StopTimeout}}": json.dumps(c.stop_timeout),
            "{{json .HostConfig.PortBindings}}": json.dumps(c.port_bindings or None),
        }
        text = args[args.index("--format") + 1]
        for template, value in fields.items():
            text = text.replace(template, value)
        assert "{{" not in text, text
        return 0, text + "\n", ""

    def do_cp(self, args: list[str]) -> tuple[int, str, str]:
        """``docker cp CONTAINER:/var/lib/movierec/db/. DIR``, from a container's own layer."""
        source, target = args
        name, path = source.split(":", 1)
        assert path == "/var/lib/movierec/db/.", path
        if name not in self.containers:
            return 1, "", f"No such container: {name}"
        for file_name, content in self.containers[name].layer.items():
            (Path(target) / file_name).write_bytes(content)
        return 0, "", ""

    def do_run(self, args: list[str]) -> tuple[int, str, str]:
        mounts = [dict(kv.split("=", 1) if "=" in kv else (kv, "") for kv in args[i + 1].split(","))
                  for i, a in enumerate(args) if a == "--mount"]  # fmt: skip
        volumes = {m["target"]: m["source"] for m in mounts if m["type"] == "volume"}
        for name in volumes.values():  # `docker run` creates a missing named volume, empty
            self.volumes.setdefault(name, {})
        if "--rm" in args:
            return self.run_once(args, volumes)
        name = args[args.index("--name") + 1]
        env = dict(IMAGE_ENV)  # the image's, which `docker run`'s own override
        if "--env-file" in args:  # plain settings passed on with --env NAME
            env_file = Path(args[args.index("--env-file") + 1])
            self.env_file_paths.append(env_file)
            self.env_file_modes.append(stat.S_IMODE(env_file.stat().st_mode))
            env.update(line.split("=", 1) for line in env_file.read_text().splitlines())
        env.update(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--env")
        secrets = {}
        for mount in mounts:  # what the container sees under the mount, read when it starts
            if mount["type"] == "volume":
                continue
            assert mount["type"] == "bind" and "readonly" in mount, mount
            source = Path(mount["source"])
            self.secret_dirs.append(source)
            secrets.update({f"{mount['target']}/{p.name}": p.read_text() for p in source.iterdir()})
        if self.run_rc != 0:
            return self.run_rc, "", "port is already allocated"
        if name in self.containers:
            return 125, "", "Conflict. The container name is already in use"
        stop_timeout = int(args[args.index("--stop-timeout") + 1]) if "--stop-timeout" in args else None
        self.containers[name] = FakeContainer(
            image=args[-1], env=env, argv=args, secrets=secrets, volumes=volumes, stop_timeout=stop_timeout
        )
        self.containers[name].model_version = self.served_model
        self.new_name = name
        self.new_container = self.containers[name]
        if self.on_start is not None:
            self.on_start(self)
        return 0, "f00dfeedbeef0123\n", ""

    def run_once(self, args: list[str], volumes: dict[str, str]) -> tuple[int, str, str]:
        """A one-off ``docker run --rm IMAGE python -m app.deploy database ACTION PATH``: the image's
        code (ours) runs on a copy of the volume mounted at PATH's directory, which is written back."""
        i = 0
        while args[i].startswith("--"):
            i += 1 if args[i] == "--rm" else 2  # --network none, --mount ..., --user root
        image, command = args[i], args[i + 1 :]
        assert image in self.images, image
        assert command[:4] == ["python", "-m", "app.deploy", "database"], command
        action, path = command[4:]
        if action in self.failing_commands:
            return 1, "", f"database {action}: disk I/O error"
        target = str(Path(path).parent)
        files = self.volumes[volumes[target]]
        binds = [args[j + 1] for j in range(i) if args[j] == "--mount" and "type=bind" in args[j + 1]]
        options = []
        for bind in binds:  # the directory a pre-volume container's database was copied to
            mount = dict(kv.split("=", 1) for kv in bind.split(",") if "=" in kv)
            assert mount["target"] == deploy.ADOPT_MOUNT and bind.endswith(",readonly"), bind
            options += ["--source", mount["source"]]
        out, err = io.StringIO(), io.StringIO()
        with tempfile.TemporaryDirectory() as mounted:
            for file_name, content in files.items():
                (Path(mounted) / file_name).write_bytes(content)
            with redirect_stdout(out), redirect_stderr(err):
                rc = deploy.database_main([action, str(Path(mounted) / Path(path).name), *options])
            files.clear()
            files.update({p.name: p.read_bytes() for p in Path(mounted).iterdir()})
        return rc, out.getvalue(), err.getvalue()

    def do_volume(self, args: list[str]) -> tuple[int, str, str]:
        verb, name = args[0], args[-1]
        if verb == "inspect":
            return (0, f"{name}\n", "") if name in self.volumes else (1, "", f"no such volume: {name}")
        assert verb == "create", args
        self.volumes.setdefault(name, {})
        self.volume_labels[name] = dict(
            args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--label"
        )
        return 0, f"{name}\n", ""

    def do_rename(self, args: list[str]) -> tuple[int, str, str]:
        old, new = args
        if old not in self.containers or new in self.containers:
            return 1, "", "rename failed"
        self.containers[new] = self.containers.pop(old)
        return 0, "", ""

    def do_stop(self, args: list[str]) -> tuple[int, str, str]:
        self.containers[args[-1]].status = "exited"
        return 0, "", ""

    def do_start(self, args: list[str]) -> tuple[int, str, str]:
        self.containers[args[-1]].status = "running"
        return 0, "", ""

    def do_rm(self, args: list[str]) -> tuple[int, str, str]:
        return (0, "", "") if self.containers.pop(args[-1], None) else (1, "", "No such container")

    def do_rmi(self, args: list[str]) -> tuple[int, str, str]:
        if args[-1].startswith("sha256:"):
            if args[-1] in {self.image_id(ref) for ref in self.images}:
                return 1, "", "image is referenced in multiple repositories"
            self.removed_ids.append(args[-1])
            return 0, "", ""
        self.images.discard(args[-1])
        self.image_ids.pop(args[-1], None)
        return 0, "", ""

    def do_exec(self, args: list[str]) -> tuple[int, str, str]:
        """``docker exec NAME python -m app.healthcheck --model-version VERSION`` (app/healthcheck.py)."""
        name, command = args[0], args[1:]
        assert command[:-1] == list(deploy.MODEL_CHECK), command
        c = self.containers.get(name)
        if c is None or c.status != "running":
            return 1, "", f"container {name} is not running"
        if c.model_version != command[-1]:
            url = "http://127.0.0.1:8000/health/ready"
            return 1, "", f"unhealthy: {url} serves model {c.model_version!r}, not {command[-1]!r}\n"
        return 0, "", ""

    def do_logs(self, args: list[str]) -> tuple[int, str, str]:
        assert args[0] == "--tail"
        return 0, "", "".join(line + "\n" for line in self.log[-int(args[1]) :])

    def verbs(self) -> list[str]:
        """The calls made, in order; a one-off ``docker run --rm`` as ``database ACTION``."""
        return [
            f"database {c[-2]}" if c[:2] == ["run", "--rm"]
            else c[0] if c[0] not in ("image", "container", "volume") else f"{c[0]} {c[1]}"
            for c in self.calls
        ]  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def make_cfg(tmp_path: Path, **overrides: object) -> DeployConfig:
    context = tmp_path / "repo"
    (context / "model" / "v1").mkdir(parents=True, exist_ok=True)
    (context / "model" / "v1" / "manifest.json").write_text("{}")
    (context / "model" / "v1" / "test_data.json").write_text("{}")
    (context / "app").mkdir(exist_ok=True)  # a checkout of this version: its image answers our checks
    shutil.copy2(deploy.REPO_ROOT / "app" / "deploy.py", context / "app" / "deploy.py")
    values: dict[str, object] = {
        "image_name": "movierec",
        "image_version": "2.0",
        "model_file": context / "model" / "v1",
        "test_data_file": context / "model" / "v1" / "test_data.json",
        "container_name": "movierec",
        "port_mapping": f"127.0.0.1:{free_port()}",  # free: a taken one is refused
        "context": context,
        "health_timeout": 30.0,
        "secrets_root": tmp_path / "state" / "secrets",
    }
    values.update(overrides)
    return DeployConfig(**values)  # type: ignore[arg-type]


def make_deployer(cfg: DeployConfig, engine: FakeEngine) -> tuple[Deployer, io.StringIO]:
    out = io.StringIO()
    clock = Clock()
    return Deployer(
        cfg, Docker("docker", engine), out=out, clock=clock, sleep=clock.sleep, poll_interval=1.0
    ), out


def secrets_() -> Secrets:
    return Secrets({"SESSION_PASSWORD": PASSWORD, "MOVIEREC_JWT_SECRET": "j" * 48})


# --------------------------------------------------------------------------- small pieces


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        ("80", f"80:{CONTAINER_PORT}"),
        ("127.0.0.1:5000", f"127.0.0.1:5000:{CONTAINER_PORT}"),
        ("[::1]:5000", f"[::1]:5000:{CONTAINER_PORT}"),
        ("::1:5000", f"::1:5000:{CONTAINER_PORT}"),
    ],
)
def test_publish_spec_maps_host_port_to_the_container_port(mapping: str, expected: str) -> None:
    assert publish_spec(mapping) == expected


@pytest.mark.parametrize("mapping", ["", "http", "0", "65536", "127.0.0.1:", "5000:80:1x"])
def test_publish_spec_rejects_bad_ports(mapping: str) -> None:
    with pytest.raises(DeployError, match="port-mapping"):
        publish_spec(mapping)


@pytest.mark.parametrize(
    "mapping",
    ["localhost:8000", "api.example.com:80", "127.0.0.01:80", " 127.0.0.1:80", "fe80::1%eth0:80", "[::1:80"],
)
def test_publish_spec_rejects_a_host_that_is_no_ip_address(mapping: str) -> None:
    """``docker run -p`` takes an IP address only ("docker: invalid IP address: localhost", exit 125):
    ``--port-mapping localhost:8000`` passed, and failed the new container's ``docker run`` after the
    build and after the running version had been stopped, which was then rolled back."""
    with pytest.raises(DeployError, match=r"port-mapping.*IP address"):
        publish_spec(mapping)


@pytest.mark.parametrize(
    ("image", "name"),
    [("thirdlove", "thirdlove"), ("registry.example.com:5000/team/movierec", "movierec"), ("a/b:1.0", "b")],
)
def test_default_container_name_is_a_valid_docker_name(image: str, name: str) -> None:
    assert default_container_name(image) == name


def test_password_from_environment_and_generated_jwt_secret() -> None:
    warnings: list[str] = []
    result = resolve_secrets(None, {"SESSION_PASSWORD": PASSWORD}, warn=warnings.append)
    assert result.values["SESSION_PASSWORD"] == PASSWORD
    assert len(result.values["MOVIEREC_JWT_SECRET"]) >= 32
    assert result.generated_jwt_secret
    assert warnings == []
    again = resolve_secrets(None, {"SESSION_PASSWORD": PASSWORD})
    assert again.values["MOVIEREC_JWT_SECRET"] != result.values["MOVIEREC_JWT_SECRET"]


def test_positional_password_still_works_but_warns() -> None:
    warnings: list[str] = []
    result = resolve_secrets("from-argv", {"SESSION_PASSWORD": PASSWORD}, warn=warnings.append)
    assert result.values["SESSION_PASSWORD"] == "from-argv"
    assert len(warnings) == 1 and "visible" in warnings[0]


def test_prompt_is_used_when_nothing_else_gives_a_password() -> None:
    asked: list[str] = []
    result = resolve_secrets(None, {}, prompt=lambda text: asked.append(text) or "typed")
    assert result.values["SESSION_PASSWORD"] == "typed"
    assert asked


def test_no_password_at_all_is_an_error() -> None:
    with pytest.raises(DeployError, match="SESSION_PASSWORD"):
        resolve_secrets(None, {}, prompt=None)


def test_jwt_secret_and_admin_password_are_passed_on_and_extra_names_required() -> None:
    env = {
        "SESSION_PASSWORD": PASSWORD,
        "MOVIEREC_JWT_SECRET": "k" * 40,
        "MOVIEREC_ADMIN_PASSWORD": "adm",
        "X": "1",
    }
    result = resolve_secrets(None, env, extra_names=["X"])
    assert result.values == {
        "SESSION_PASSWORD": PASSWORD,
        "MOVIEREC_JWT_SECRET": "k" * 40,
        "MOVIEREC_ADMIN_PASSWORD": "adm",
        "X": "1",
    }
    assert not result.generated_jwt_secret
    with pytest.raises(DeployError, match="MISSING"):
        resolve_secrets(None, env, extra_names=["MISSING"])


def test_env_file_is_private_and_removed_afterwards() -> None:
    with private_env_file({"SESSION_PASSWORD": PASSWORD, "A": "b=c"}) as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert path.read_text() == f"SESSION_PASSWORD={PASSWORD}\nA=b=c\n"
    assert not path.exists() and not path.parent.exists()


@pytest.mark.parametrize("values", [{"A": "two\nlines"}, {"BAD-NAME": "x"}, {"1X": "x"}])
def test_env_file_refuses_what_it_cannot_hold(values: dict[str, str]) -> None:
    with pytest.raises(DeployError), private_env_file(values):
        pass


def test_build_command_passes_model_paths_and_options_but_no_secret(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, base_image="movierec/base:bookworm", error_tolerance=0.001, dockerfile=Path("D"))
    argv = build_command(cfg, "model/v1", "model/v1/test_data.json")
    assert argv[:4] == ["build", "--force-rm", "--tag", "movierec:2.0"]
    pairs = {argv[i + 1] for i, a in enumerate(argv) if a == "--build-arg"}
    assert pairs == {
        "MODEL_FILE=model/v1",
        "MODEL_TEST_FILE=model/v1/test_data.json",
        "BASE_IMAGE=movierec/base:bookworm",
        "ACCURACY_TOLERANCE=0.001",
    }
    assert argv[argv.index("--file") + 1] == "D"
    assert argv[-1] == str(cfg.context)
    assert not any(PASSWORD in a or "SESSION_PASSWORD" in a for a in argv)


def test_run_command_uses_journald_restart_policy_secret_files_and_env_file(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, log_tag="api")
    files = SecretFiles(
        Path("/state/secrets/movierec/deploy-x"), ("SESSION_PASSWORD", "MOVIEREC_JWT_SECRET"), 1234
    )
    argv = run_command(cfg, files, Path("/private/container.env"))
    text = " ".join(argv)
    assert "--restart on-failure:5" in text
    # longer than uwsgi lets a stopping worker finish its request and flush (tests/unit/test_compose_file.py)
    harakiri, mercy = uwsgi_stop_seconds()
    stop_timeout = int(argv[argv.index("--stop-timeout") + 1])
    assert stop_timeout == deploy.STOP_TIMEOUT_SECONDS >= mercy + STOP_MARGIN_SECONDS > harakiri
    assert "--log-driver journald" in text and "--log-opt tag=api" in text
    assert f"--publish {cfg.port_mapping}:{CONTAINER_PORT}" in text
    assert "--env-file /private/container.env" in text
    assert (
        f"--mount type=bind,source=/state/secrets/movierec/deploy-x,target={SECRETS_MOUNT},readonly" in text
    )
    assert "--group-add 1234" in text  # the files' group: the image's user is not their owner
    assert f"--env SESSION_PASSWORD_FILE={SECRETS_MOUNT}/SESSION_PASSWORD" in text
    assert f"--env MOVIEREC_JWT_SECRET_FILE={SECRETS_MOUNT}/MOVIEREC_JWT_SECRET" in text
    assert argv[-1] == "movierec:2.0"
    assert "-e" not in argv and "--user" not in argv  # the image's unprivileged user
    assert "--env-file" not in run_command(cfg, files)


def test_run_command_json_log_rotates_and_tags_with_container_name(tmp_path: Path) -> None:
    argv = run_command(make_cfg(tmp_path, json_log=True), SecretFiles(Path("/s"), (), 0))
    text = " ".join(argv)
    assert "--log-driver json-file" in text and "max-size=" in text and "max-file=" in text
    assert "journald" not in text
    assert "--log-opt tag=movierec" in text


def test_container_state_parses_inspect_output() -> None:
    state = ContainerState.parse({"Status": "exited", "Running": False, "ExitCode": 3}, 2, "img:1")
    assert (state.status, state.running, state.exit_code, state.health, state.restarts) == (
        "exited",
        False,
        3,
        None,
        2,
    )


# --------------------------------------------------------------------------- staging


def test_files_in_the_model_store_are_used_in_place(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    (cfg.context / "model" / "latest").symlink_to("v1")
    with staged_in_context([cfg.context / "model" / "latest", cfg.test_data_file], cfg.context) as rel:
        assert rel == ["model/v1", "model/v1/test_data.json"]
    assert sorted(p.name for p in (cfg.context / "model").iterdir()) == ["latest", "v1"]


def test_files_outside_the_context_are_staged_and_cleaned_up(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    outside = tmp_path / "elsewhere"
    (outside / "bundle").mkdir(parents=True)
    (outside / "bundle" / "manifest.json").write_text('{"v": 1}')
    (outside / "regressed.json").write_text('{"expected_score": 1}')
    with staged_in_context([outside / "bundle", outside / "regressed.json"], cfg.context) as rel:
        assert all(r.startswith("model/.deploy-") for r in rel)
        assert json.loads((cfg.context / rel[0] / "manifest.json").read_text()) == {"v": 1}
        assert (cfg.context / rel[1]).read_text() == '{"expected_score": 1}'
    assert not any(p.name.startswith(".deploy-") for p in (cfg.context / "model").iterdir())


def test_a_model_store_given_as_model_file_is_built_from_its_latest_bundle(tmp_path: Path) -> None:
    """MODEL_FILE ``model``, the store (as ML_MODEL_PATH and the accuracy test take it): the build got
    MODEL_FILE=model, the Dockerfile found no manifest.json at the top of its copy, and the accuracy
    test failed inside the build ('/tmp/model-in/model' does not exist) after minutes of it. A store
    outside the context was copied in whole, every version it holds."""
    cfg = make_cfg(tmp_path)
    (cfg.context / "model" / "latest").symlink_to("v1")
    engine = FakeEngine()
    deployer, out = make_deployer(replace(cfg, model_file=cfg.context / "model"), engine)
    deployer.deploy(secrets_())
    (build,) = [call for call in engine.calls if call[0] == "build"]
    assert "MODEL_FILE=model/v1" in build
    assert "model/v1" in out.getvalue()

    outside = tmp_path / "elsewhere" / "store"
    for version in ("v1", "v2"):
        (outside / version).mkdir(parents=True)
        (outside / version / "manifest.json").write_text(json.dumps({"v": version}))
    (outside / "latest").symlink_to("v2")
    with staged_in_context([deploy.model_source(outside)], cfg.context) as (rel,):
        assert sorted(p.name for p in (cfg.context / rel).iterdir()) == ["manifest.json"]
        assert json.loads((cfg.context / rel / "manifest.json").read_text()) == {"v": "v2"}

    (outside / "latest").unlink()  # neither a bundle nor a store: said now, not inside the build
    engine = FakeEngine()
    deployer, _ = make_deployer(replace(cfg, model_file=outside), engine)
    with pytest.raises(deploy.DeployError, match=f"MODEL_FILE {outside} is a directory but neither"):
        deployer.deploy(secrets_())
    assert not [call for call in engine.calls if call[0] == "build"]


def test_a_model_pkl_is_built_with_the_catalogue_beside_it(tmp_path: Path) -> None:
    """MODEL_FILE a model.pkl (the seed's build argument): the build's COPY took the file alone, and
    a lone model.pkl takes its titles from a catalogue.csv beside it (an image has no data set), so
    it could not load inside the build. The two are staged as one directory, wherever the model.pkl
    is; one without a catalogue.csv beside it is refused before the build."""
    cfg = make_cfg(tmp_path)
    for seed in (tmp_path / "elsewhere" / "seed", cfg.context / "model" / "seed"):
        seed.mkdir(parents=True)
        (seed / "forest.pkl").write_bytes(b"pickle")
        (seed / "catalogue.csv").write_text("movie_id,title\n")
        (seed / "other.json").write_text("{}")
        source = deploy.model_source(seed / "forest.pkl")
        with staged_in_context([source, cfg.test_data_file], cfg.context) as (rel, test_rel):
            assert rel.startswith("model/.deploy-") and test_rel == "model/v1/test_data.json"
            assert sorted(p.name for p in (cfg.context / rel).iterdir()) == ["catalogue.csv", "model.pkl"]
            assert (cfg.context / rel / "model.pkl").read_bytes() == b"pickle"

    (seed / "catalogue.csv").unlink()
    engine = FakeEngine()
    deployer, _ = make_deployer(replace(cfg, model_file=seed / "forest.pkl"), engine)
    with pytest.raises(deploy.DeployError, match=r"no catalogue\.csv beside it"):
        deployer.deploy(secrets_())
    assert not [call for call in engine.calls if call[0] == "build"]


def test_a_model_file_neither_an_archive_nor_a_pkl_is_refused_before_the_build(tmp_path: Path) -> None:
    """The image takes any file that is not a .tar.gz for a pickled model, which needs the
    catalogue.csv beside it; deploy-docker.py stages that catalogue with a *.pkl only. A forest.joblib
    (or a link named model.pkl to a blob) with its catalogue beside it went into the build alone and
    failed there, minutes later, with "needs a catalogue.csv beside it": it is beside it, here."""
    cfg = make_cfg(tmp_path)
    seed = tmp_path / "elsewhere" / "seed"
    seed.mkdir(parents=True)
    (seed / "forest.joblib").write_bytes(b"pickle")
    (seed / "catalogue.csv").write_text("movie_id,title\n")
    (seed / "model.pkl").symlink_to("forest.joblib")
    for model_file in (seed / "forest.joblib", seed / "model.pkl"):
        engine = FakeEngine()
        deployer, _ = make_deployer(replace(cfg, model_file=model_file), engine)
        with pytest.raises(DeployError, match=r"is neither a \.tar\.gz nor a \.pkl file") as refused:
            deployer.deploy(secrets_())
        assert f"MODEL_FILE {model_file}" in str(refused.value)
        assert "build" not in engine.verbs()


def test_a_directory_holding_a_model_pkl_is_built_as_the_dockerfile_builds_it(tmp_path: Path) -> None:
    """The Dockerfile's model stage takes MODEL_FILE a directory holding a model.pkl (and its
    catalogue.csv); deploy-docker.py refused the same directory before the build ("is a directory
    but neither a bundle nor a model store"). The two now follow one order: a bundle
    (manifest.json), a store (latest/manifest.json), a directory holding a model.pkl, a file."""
    cfg = make_cfg(tmp_path)
    for seed in (tmp_path / "elsewhere" / "seed", cfg.context / "model" / "seed"):
        seed.mkdir(parents=True)
        (seed / "model.pkl").write_bytes(b"pickle")
        (seed / "catalogue.csv").write_text("movie_id,title\n")
        assert deploy.model_source(seed) == seed / "model.pkl"
        engine = FakeEngine()
        built: list[list[str]] = []

        def seen(
            args: list[str], engine: FakeEngine = engine, built: list[list[str]] = built
        ) -> tuple[int, str, str]:
            model_rel = next(a for a in args if a.startswith("MODEL_FILE=")).removeprefix("MODEL_FILE=")
            built.append(sorted(p.name for p in (cfg.context / model_rel).iterdir()))
            return FakeEngine.do_build(engine, args)

        engine.do_build = seen  # type: ignore[method-assign]
        deployer, out = make_deployer(replace(cfg, model_file=seed), engine)
        deployer.deploy(secrets_())
        assert built == [["catalogue.csv", "model.pkl"]]
        # it names what it tests: not "<dir>/model.pkl, <dir>'s latest" (a store's wording)
        assert f"(the accuracy test of {seed / 'model.pkl'} runs inside the build)" in out.getvalue()

    (seed / "latest").mkdir()  # a store beside it wins, as in the Dockerfile
    (seed / "latest" / "manifest.json").write_text("{}")
    assert deploy.model_source(seed) == (seed / "latest").resolve()
    shutil.rmtree(seed / "latest")
    (seed / "catalogue.csv").unlink()  # the Dockerfile's install refuses it too: here before the build
    with pytest.raises(deploy.DeployError, match=r"model\.pkl has no catalogue\.csv beside it"):
        deploy.model_source(seed)


def _model_layout(root: Path, layout: str) -> Path:
    """A MODEL_FILE of each kind (and a directory that is none), on the host."""

    def bundle(path: Path, version: str) -> None:
        path.mkdir(parents=True)
        (path / "manifest.json").write_text(json.dumps({"version": version}))
        (path / "test_data.json").write_text("{}")

    if layout == "archive":
        bundle(root / "src", "v-archive")
        with tarfile.open(root / "model.tar.gz", "w:gz") as archive:
            archive.add(root / "src", arcname="bundle")
        return root / "model.tar.gz"
    given = root / "given"
    given.mkdir(parents=True)
    if layout == "bundle":
        shutil.rmtree(given)
        bundle(given, "v-bundle")
    if layout in ("store", "store-and-pickle"):
        bundle(given / "v1", "v1")
        bundle(given / "v2", "v2")
        (given / "latest").symlink_to("v2")
    if layout in ("pickle-dir", "store-and-pickle", "pkl"):
        (given / "model.pkl").write_bytes(b"pickle")
        (given / "catalogue.csv").write_text("movie_id,title\n")
        (given / "test_data.json").write_text("{}")
    if layout == "nothing":
        (given / "notes.txt").write_text("no model here\n")
    return given / "model.pkl" if layout == "pkl" else given


def _what_is_loaded(path: Path) -> object:
    """A bundle's (or a store's latest's) version; a file's bytes."""
    if path.is_dir():
        return deploy.bundle_version(path) or deploy.bundle_version((path / "latest").resolve())
    return path.read_bytes()


@pytest.mark.parametrize(
    "layout", ["bundle", "store", "pickle-dir", "store-and-pickle", "pkl", "archive", "nothing"]
)
def test_deploy_docker_and_the_dockerfile_take_a_model_file_alike(tmp_path: Path, layout: str) -> None:
    """deploy-docker.py (model_source, before the build) and the Dockerfile's model stage
    (model-input, on the build's copy: a directory's contents, a file inside /tmp/model-in/) decide
    what MODEL_FILE is by one rule, app.deploy.model_kind: each accepts what the other does and loads
    the same model (a store's latest, not another version). They disagreed on a directory holding a
    model.pkl, which the stage built and deploy-docker.py refused."""
    path = _model_layout(tmp_path / "host", layout)
    copy = tmp_path / "build" / "model-in"  # COPY ${MODEL_FILE} /tmp/model-in/, links kept
    if path.is_dir():
        shutil.copytree(path, copy, symlinks=True)
    else:
        copy.mkdir(parents=True)
        shutil.copy2(path, copy / path.name)
    rel = f"model/{path.name}"
    given_test = tmp_path / "given.json"
    try:
        host = _what_is_loaded(deploy.model_source(path))
    except DeployError:
        host = "refused"
    try:
        stage = _what_is_loaded(deploy.model_input(copy, rel, given_test)[0])
    except DeployError:
        stage = "refused"
    assert host == stage
    assert (host == "refused") == (layout == "nothing")
    if layout in ("store", "store-and-pickle"):
        assert host == "v2"
    # without MODEL_TEST_FILE: the model's own test data, which a lone file has not
    if layout in ("bundle", "store", "pickle-dir", "store-and-pickle"):
        assert deploy.model_input(copy, rel)[1].is_file()
    elif layout != "nothing":
        with pytest.raises(DeployError, match=f"MODEL_FILE={rel} holds no test_data.json of its own"):
            deploy.model_input(copy, rel)


def test_missing_model_file_is_reported(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    with (
        pytest.raises(DeployError, match="does not exist"),
        staged_in_context([tmp_path / "nope"], cfg.context),
    ):
        pass


# --------------------------------------------------------------------------- secret files


def test_secret_files_are_private_to_the_deployer_and_the_container_group(tmp_path: Path) -> None:
    root = tmp_path / "state" / "secrets"
    files = write_secret_files(
        root, "movierec", {"SESSION_PASSWORD": PASSWORD, "MOVIEREC_JWT_SECRET": "a\nb"}
    )
    assert files.directory.parent == root / "movierec"
    assert sorted(files.names) == ["MOVIEREC_JWT_SECRET", "SESSION_PASSWORD"]
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (root, root / "movierec", files.directory)}
    assert modes == {root: 0o700, root / "movierec": 0o700, files.directory: 0o710}
    for name in files.names:
        path = files.directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o440  # read-only, for the owner and the container
        assert path.stat().st_uid == os.geteuid() and path.stat().st_gid == files.gid
    # one trailing newline, which the app strips: a value keeps its own line breaks and spaces
    assert (files.directory / "SESSION_PASSWORD").read_text() == PASSWORD + "\n"
    assert (files.directory / "MOVIEREC_JWT_SECRET").read_text() == "a\nb\n"
    again = write_secret_files(root, "movierec", {"SESSION_PASSWORD": "new"})
    assert again.directory != files.directory and files.directory.exists()  # the old one: a rollback's


@pytest.mark.skipif(os.geteuid() != 0, reason="a root deployer's files; CI runs as root")
def test_a_root_deployer_gives_the_secret_files_the_image_users_group_not_root_s(tmp_path: Path) -> None:
    """``--group-add 0`` would put the service in root's group, with every file of the image
    that group may read; the files get the image user's own group instead, and no group is added."""
    files = write_secret_files(tmp_path, "movierec", {"SESSION_PASSWORD": PASSWORD})
    assert files.gid == IMAGE_GID
    for path in (files.directory, files.directory / "SESSION_PASSWORD"):
        assert path.stat().st_gid == IMAGE_GID and path.stat().st_uid == 0
    assert "--group-add" not in files.run_args()


def test_the_image_users_group_is_the_one_the_dockerfile_creates() -> None:
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert f"groupadd --system --gid {IMAGE_GID} movierec" in dockerfile


@pytest.mark.parametrize("name", ["../movierec", "a/b", "", ".hidden"])
def test_secret_files_refuse_a_container_name_that_is_not_a_directory_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(DeployError, match="container name"):
        write_secret_files(tmp_path, name, {"SESSION_PASSWORD": PASSWORD})
    assert not any(tmp_path.iterdir())


# "caf\udce9": a Latin-1 variable as Python reads it; writing it was a UnicodeEncodeError traceback
@pytest.mark.parametrize(
    "values", [{"BAD-NAME": "x"}, {"1X": "x"}, {"A": ""}, {"SESSION_PASSWORD": "caf\udce9"}]
)
def test_secret_files_refuse_what_the_app_cannot_read(tmp_path: Path, values: dict[str, str]) -> None:
    with pytest.raises(DeployError):
        write_secret_files(tmp_path, "movierec", values)


def test_a_secrets_directory_docker_cannot_mount_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="--secrets-dir"):
        write_secret_files(tmp_path / "a,b", "movierec", {"SESSION_PASSWORD": PASSWORD})


def test_the_container_gets_secrets_as_files_and_plain_settings_in_its_environment(tmp_path: Path) -> None:
    """The secrets the service reads from files are mounted read-only; only their paths are in the
    container's configuration (docker inspect), never a value. A name given with --env that the
    service has no file form for is a plain setting and goes through the private env file."""
    env = {"SESSION_PASSWORD": PASSWORD, "MOVIEREC_ADMIN_PASSWORD": "adm-pw", "MOVIEREC_LOG_LEVEL": "DEBUG"}
    engine = FakeEngine()
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(resolve_secrets(None, env, extra_names=["MOVIEREC_LOG_LEVEL"]))
    container = engine.containers["movierec"]
    assert container.secret("SESSION_PASSWORD") == PASSWORD
    assert container.secret("MOVIEREC_ADMIN_PASSWORD") == "adm-pw"
    assert len(container.secret("MOVIEREC_JWT_SECRET")) >= 32
    assert container.env["MOVIEREC_LOG_LEVEL"] == "DEBUG"
    config = {**container.env, "argv": " ".join(container.argv)}
    assert not any(v in str(config) for v in (PASSWORD, "adm-pw", container.secret("MOVIEREC_JWT_SECRET")))
    assert engine.env_file_modes == [0o600] and not engine.env_file_paths[0].exists()
    # the files outlive `docker run`: on-failure restarts mount them again
    assert engine.secret_dirs[0].is_dir()
    assert (engine.secret_dirs[0] / "SESSION_PASSWORD").read_text() == PASSWORD + "\n"
    gid = engine.secret_dirs[0].stat().st_gid
    assert (f"--group-add {gid}" in config["argv"]) is (gid != IMAGE_GID)
    assert PASSWORD not in out.getvalue()


def test_a_redeployment_replaces_the_secret_files(tmp_path: Path) -> None:
    engine = FakeEngine()
    cfg = make_cfg(tmp_path)
    make_deployer(cfg, engine)[0].deploy(secrets_())
    make_deployer(replace(cfg, image_version="3.0"), engine)[0].deploy(
        Secrets({"SESSION_PASSWORD": "rotated", "MOVIEREC_JWT_SECRET": "r" * 48})
    )
    first, second = engine.secret_dirs
    assert not first.exists()  # the previous container is gone, and its secrets with it
    assert [p.name for p in (cfg.secrets_root / "movierec").iterdir()] == [second.name]
    assert engine.containers["movierec"].secret("SESSION_PASSWORD") == "rotated"


def test_a_failed_redeployment_keeps_the_previous_containers_secret_files(tmp_path: Path) -> None:
    """The restored container mounts its own directory again: it must still hold its secrets."""
    engine = FakeEngine()
    cfg = make_cfg(tmp_path)
    make_deployer(cfg, engine)[0].deploy(secrets_())
    engine.script = [("running", "starting", 0), ("restarting", "starting", 1)]
    with pytest.raises(DeployError):
        make_deployer(replace(cfg, image_version="3.0"), engine)[0].deploy(
            Secrets({"SESSION_PASSWORD": "rotated", "MOVIEREC_JWT_SECRET": "short"})
        )
    first, second = engine.secret_dirs
    assert not second.exists()
    assert (first / "SESSION_PASSWORD").read_text() == PASSWORD + "\n"
    assert [p.name for p in (cfg.secrets_root / "movierec").iterdir()] == [first.name]
    assert engine.containers["movierec"].image == "movierec:2.0"


# --------------------------------------------------------------------------- the deployment


def test_first_deployment_builds_runs_and_waits_for_health(tmp_path: Path) -> None:
    engine = FakeEngine(
        script=[("running", "starting", 0), ("running", "starting", 0), ("running", "healthy", 0)]
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(secrets_())
    assert engine.containers["movierec"].status == "running"
    assert engine.containers["movierec"].secret("SESSION_PASSWORD") == PASSWORD
    assert engine.env_file_paths == []  # nothing but secrets to pass: no env file at all
    assert "build" in engine.verbs() and "rm" not in engine.verbs()
    assert all(PASSWORD not in " ".join(call) for call in engine.calls)
    assert "journalctl CONTAINER_NAME=movierec" in out.getvalue()
    assert PASSWORD not in out.getvalue()


def test_successful_upgrade_replaces_the_previous_container(tmp_path: Path) -> None:
    engine = FakeEngine(
        images={"movierec:1.0"}, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")}
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(secrets_())
    assert set(engine.containers) == {"movierec"}
    assert engine.containers["movierec"].image == "movierec:2.0"
    assert engine.verbs().index("stop") < engine.verbs().index("run")  # the port is free before the run
    stop = next(call for call in engine.calls if call[0] == "stop")  # the run's --stop-timeout, too
    assert stop[stop.index("--time") + 1] == str(deploy.STOP_TIMEOUT_SECONDS)
    assert "removed the previous container (movierec:1.0)" in out.getvalue()


@pytest.mark.parametrize("harakiri", ["70", "300"])
def test_a_raised_harakiri_raises_the_containers_stop_timeout_with_it(tmp_path: Path, harakiri: str) -> None:
    """The stop timeout (60 s) was sized for harakiri's default 30 s: with ``--env UWSGI_HARAKIRI``
    raised, uwsgi gives a stopping worker harakiri plus its exit flush (uwsgi.ini), and Docker's
    SIGKILL at 60 s raced a slow request's final flush again."""
    engine = FakeEngine(
        images={"movierec:1.0"}, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")}
    )
    deployer, _out = make_deployer(make_cfg(tmp_path), engine)
    env = {"SESSION_PASSWORD": PASSWORD, "UWSGI_HARAKIRI": harakiri}
    deployer.deploy(resolve_secrets(None, env, extra_names=["UWSGI_HARAKIRI"]))
    ini_harakiri, ini_mercy = uwsgi_stop_seconds()
    mercy = int(harakiri) + ini_mercy - ini_harakiri  # uwsgi.ini derives the mercy from harakiri
    run = next(call for call in engine.calls if call[0] == "run" and "--stop-timeout" in call)
    assert int(run[run.index("--stop-timeout") + 1]) >= mercy + STOP_MARGIN_SECONDS
    # (the previous version is stopped with its own stop timeout when longer: the test below)


@pytest.mark.parametrize(
    ("previous_timeout", "harakiri", "expected"),
    [
        (145, None, 145),
        (None, None, deploy.STOP_TIMEOUT_SECONDS),
        (30, None, deploy.STOP_TIMEOUT_SECONDS),
        (60, "300", 325),
    ],
)
def test_the_previous_version_is_stopped_with_the_longer_of_its_own_stop_timeout_and_the_new_one(
    tmp_path: Path, previous_timeout: int | None, harakiri: str | None, expected: int
) -> None:
    """The live version was stopped with the new deployment's stop timeout: one run with
    UWSGI_HARAKIRI=120 (stop timeout 145 s) replaced by one with the default (60 s) had its slow
    requests and its workers' final flush cut by the SIGKILL at 60 s. It gets the longer of its
    own (``docker inspect``: null for a container run without one) and the new one's now."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={
            "movierec": FakeContainer("movierec:1.0", health="healthy", stop_timeout=previous_timeout)
        },
    )
    deployer, _out = make_deployer(make_cfg(tmp_path), engine)
    raised = {"UWSGI_HARAKIRI": harakiri} if harakiri else {}
    deployer.deploy(resolve_secrets(None, {"SESSION_PASSWORD": PASSWORD} | raised, extra_names=list(raised)))
    (stop,) = [call for call in engine.calls if call[0] == "stop"]
    assert stop[stop.index("--time") + 1] == str(expected)


class DaemonStopsSlowly(FakeEngine):
    """Ctrl-C interrupts `docker stop` of the previous version; the daemon goes on stopping it, and
    the container exits ``stop_lasts`` seconds later (its requests, then its final flush)."""

    clock: Clock
    stop_lasts: float = 0.0
    stop_ends: float | None = None

    def do_stop(self, args: list[str]) -> tuple[int, str, str]:
        if self.stop_ends is None:
            self.stop_ends = self.clock.now + self.stop_lasts
            raise KeyboardInterrupt
        return super().do_stop(args)

    def do_container(self, args: list[str]) -> tuple[int, str, str]:
        if self.stop_ends is not None and self.clock.now >= self.stop_ends and args[-1] in self.containers:
            self.containers[args[-1]].status = "exited"  # the daemon's stop is over, once
            self.stop_ends = float("inf")
        return super().do_container(args)


def test_a_rollback_waits_for_the_previous_version_s_own_stop_timeout(tmp_path: Path) -> None:
    """Interrupted while the previous version stopped, the rollback waited for that stop only the
    new deployment's stop timeout (+10 s), then stopped it again with that shorter timeout: the
    SIGKILL cut the requests and final flush its own stop timeout (145 s) allowed."""
    engine = DaemonStopsSlowly(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy", stop_timeout=145)},
    )
    engine.stop_lasts = 130.0
    deployer, _out = make_deployer(make_cfg(tmp_path), engine)
    engine.clock = deployer.clock  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        deployer.deploy(secrets_())
    assert [call for call in engine.calls if call[0] == "stop"] == [
        ["stop", "--time", "145", "movierec-previous"]
    ]
    assert engine.containers["movierec"].status == "running"


@pytest.mark.parametrize("harakiri", ["1m", "\u00b2", "\u0669\u0660", "-5", ""])
def test_a_harakiri_that_is_not_a_number_of_seconds_is_refused_before_anything_stops(
    tmp_path: Path, harakiri: str
) -> None:
    """Only ASCII digits: str.isdigit() let "\u00b2" through to int() (a ValueError traceback) and
    Arabic-Indic digits, which int() reads and uwsgi's atoi takes for 0 (harakiri off)."""
    engine = FakeEngine(
        images={"movierec:1.0"}, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")}
    )
    deployer, _out = make_deployer(make_cfg(tmp_path), engine)
    env = {"SESSION_PASSWORD": PASSWORD, "UWSGI_HARAKIRI": harakiri}
    with pytest.raises(DeployError, match="UWSGI_HARAKIRI"):
        deployer.deploy(resolve_secrets(None, env, extra_names=["UWSGI_HARAKIRI"]))
    assert "stop" not in engine.verbs()


@pytest.mark.parametrize("harakiri", ["0", "00"])
def test_a_harakiri_of_0_is_refused_before_anything_stops(tmp_path: Path, harakiri: str) -> None:
    """``--env UWSGI_HARAKIRI=0`` (no request limit) was passed on: uwsgi.ini's mercy, harakiri +
    15 s, fell to 15 s, and the new server refuses to start with it (app/__init__.py). Refused
    here too, before the live version is stopped for a container that cannot start."""
    engine = FakeEngine(
        images={"movierec:1.0"}, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")}
    )
    deployer, _out = make_deployer(make_cfg(tmp_path), engine)
    env = {"SESSION_PASSWORD": PASSWORD, "UWSGI_HARAKIRI": harakiri}
    with pytest.raises(DeployError, match=r"UWSGI_HARAKIRI.*request limit"):
        deployer.deploy(resolve_secrets(None, env, extra_names=["UWSGI_HARAKIRI"]))
    assert "stop" not in engine.verbs() and engine.containers["movierec"].status == "running"


def test_failed_health_check_restores_the_previous_version(tmp_path: Path) -> None:
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "starting", 0), ("restarting", "starting", 1)],
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="restarted 1 time"):
        deployer.deploy(secrets_())
    assert set(engine.containers) == {"movierec"}
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert engine.images == {"movierec:1.0"}  # the new tag did not exist before: removed
    assert "previous version (movierec:1.0) is running again" in out.getvalue()
    # the cause, buried more than LOG_TAIL_LINES back, is printed first; then the last lines
    printed = out.getvalue()
    errors_at = printed.index("errors in the log of movierec")
    assert printed.index("MOVIEREC_JWT_SECRET is too weak") > errors_at
    assert "  app.storage: database unreachable" in printed
    assert "KeyboardInterrupt" not in printed[errors_at : printed.index("last 60 log lines")]
    assert "not an error" not in printed[errors_at : printed.index("last 60 log lines")]
    assert "uwsgi banner line 39" in printed


def _versioned_cfg(tmp_path: Path, version: str = "20261206-v2", **overrides: object) -> DeployConfig:
    cfg = make_cfg(tmp_path, **overrides)
    (cfg.model_file / "manifest.json").write_text(json.dumps({"version": version}))
    return cfg


def test_a_new_container_serving_another_model_than_the_one_built_is_rolled_back(tmp_path: Path) -> None:
    """Docker's health check passes for any model: the container serving another one than the
    build tested (an ML_MODEL_PATH given with --env, a tag moved under the deployment) was kept."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy", model_version="v1")},
        served_model="20261101-stale",
    )
    deployer, out = make_deployer(_versioned_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="does not serve model 20261206-v2, the one built and tested"):
        deployer.deploy(secrets_())
    assert ["exec", "movierec", *deploy.MODEL_CHECK, "20261206-v2"] in engine.calls
    assert "serves model '20261101-stale', not '20261206-v2'" in out.getvalue()
    assert set(engine.containers) == {"movierec"}
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert engine.images == {"movierec:1.0"}  # the new tag did not exist before: removed
    assert "previous version (movierec:1.0) is running again" in out.getvalue()


def test_a_new_container_serving_the_model_built_is_kept_and_says_so(tmp_path: Path) -> None:
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy", model_version="v1")},
        served_model="20261206-v2",
    )
    deployer, out = make_deployer(_versioned_cfg(tmp_path), engine)
    deployer.deploy(secrets_())
    verbs = engine.verbs()
    assert verbs.index("exec") < verbs.index("rm")  # checked before the previous version goes
    assert engine.containers["movierec"].image == "movierec:2.0"
    assert "movierec serves model 20261206-v2, the one built and tested" in out.getvalue()


def test_no_model_version_is_checked_for_an_image_not_built_here(tmp_path: Path) -> None:
    """--no-build: MODEL_FILE is not what the image holds (the pipeline's image was built on CI)."""
    engine = FakeEngine(images={"movierec:2.0"}, served_model="built-on-ci")
    deployer, _ = make_deployer(_versioned_cfg(tmp_path, build=False), engine)
    deployer.deploy(secrets_())
    assert "exec" not in engine.verbs()


@pytest.mark.parametrize("served", ["20261206-v2", "20261101-stale"])
def test_no_build_checks_the_model_version_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: str
) -> None:
    """--no-build (the pipeline's production deploy) checked no model version: a container serving
    another model than the image step tested was kept. --model-version names the one it must serve;
    another is rolled back like an unhealthy container."""
    cfg = make_cfg(tmp_path)
    engine = FakeEngine(
        images={"movierec:1.0", "movierec:2.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy", model_version="v1")},
        served_model=served,
    )
    monkeypatch.setattr(deploy, "Docker", lambda binary: Docker(binary, engine))
    rc = deploy.main(
        ["movierec", "2.0", "model/latest", "model/latest/test_data.json", "--no-build",
         "--model-version", "20261206-v2", "--port-mapping", cfg.port_mapping, "--health-timeout", "5",
         "--secrets-dir", str(cfg.secrets_root)],
        environ={"SESSION_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert ["exec", "movierec", *deploy.MODEL_CHECK, "20261206-v2"] in engine.calls
    assert rc == (0 if served == "20261206-v2" else 1)
    assert engine.containers["movierec"].image == ("movierec:2.0" if rc == 0 else "movierec:1.0")
    assert engine.containers["movierec"].status == "running"


def test_a_model_version_given_is_checked_after_a_build_and_must_be_the_one_built(tmp_path: Path) -> None:
    """With a build, --model-version names the model checked (the one a model.pkl is given by the
    build), and one that is not MODEL_FILE's version is refused before anything is built or moved."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy", model_version="v1")},
        served_model="20261206-v2",
    )
    deployer, _ = make_deployer(_versioned_cfg(tmp_path, model_version="20261101-other"), engine)
    with pytest.raises(DeployError, match=r"--model-version 20261101-other is not .*\(20261206-v2\)"):
        deployer.deploy(secrets_())
    assert not {"build", "run", "stop", "rename"} & set(engine.verbs())
    assert engine.containers["movierec"].status == "running" and engine.images == {"movierec:1.0"}
    # a bundle of the same version, or one naming none (converted by the build): checked as given
    for manifest in ({"version": "20261206-v2"}, {}):
        engine = FakeEngine(images={"movierec:1.0"}, served_model="20261206-v2")
        cfg = make_cfg(tmp_path / str(len(manifest)), model_version="20261206-v2")
        (cfg.model_file / "manifest.json").write_text(json.dumps(manifest))
        deployer, out = make_deployer(cfg, engine)
        deployer.deploy(secrets_())
        assert ["exec", "movierec", *deploy.MODEL_CHECK, "20261206-v2"] in engine.calls
        assert "movierec serves model 20261206-v2, the one built and tested" in out.getvalue()


@pytest.mark.parametrize("value", ["", " ", " v2"])
def test_an_empty_model_version_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty --model-version (a pipeline whose version file was missing) would check nothing."""
    from app.deploy import parse_args

    positional = ["movierec", "1.0", "model", "test_data.json", "--no-build"]
    with pytest.raises(SystemExit) as exited:
        parse_args([*positional, "--model-version", value])
    assert exited.value.code == 2
    assert "--model-version" in capsys.readouterr().err
    assert parse_args([*positional, "--model-version", "v2"]).model_version == "v2"


def test_the_version_built_is_read_from_a_bundle_an_archive_or_not_at_all(tmp_path: Path) -> None:
    bundle = tmp_path / "20261206-v2"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"version": "20261206-v2"}))
    assert deploy.bundle_version(bundle) == "20261206-v2"
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    assert deploy.bundle_version(archive) == "20261206-v2"
    (tmp_path / "model.pkl").write_bytes(b"not read")
    assert deploy.bundle_version(tmp_path / "model.pkl") is None  # named when the build converts it
    (tmp_path / "broken.tar.gz").write_bytes(b"not an archive")
    assert deploy.bundle_version(tmp_path / "broken.tar.gz") is None
    (bundle / "manifest.json").write_text("{}")
    assert deploy.bundle_version(bundle) is None


def test_the_restored_version_is_waited_for_and_said_to_be_healthy(tmp_path: Path) -> None:
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    assert "the previous version (movierec:1.0) is healthy again" in out.getvalue()


@pytest.mark.parametrize(
    ("status", "health"), [("running", "unhealthy"), ("exited", "unhealthy"), ("running", "starting")]
)
def test_a_restored_version_that_does_not_become_healthy_again_is_reported(
    tmp_path: Path, status: str, health: str
) -> None:
    """The rollback said 'the previous version is running again' as soon as `docker start`
    returned: a previous version that then failed (its database, its secrets) left the service
    down while the operator read that it was back."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )

    def comes_back_broken(self: FakeEngine, args: list[str]) -> tuple[int, str, str]:
        self.containers[args[-1]].status, self.containers[args[-1]].health = status, health
        return 0, "", ""

    engine.do_start = comes_back_broken.__get__(engine)  # type: ignore[method-assign]
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    printed = out.getvalue()
    assert "healthy again" not in printed.replace("NOT healthy again", "")
    assert (
        f"the previous version (movierec:1.0) is NOT healthy again (status {status}, health {health})"
        in printed
    )
    assert "the service is down" in printed


def test_a_short_health_timeout_for_the_new_version_still_gives_the_restored_one_its_time(
    tmp_path: Path,
) -> None:
    """--health-timeout 5 is for the new version: the restarted previous one reports healthy only
    at its next health check (every 10 s), and it is waited for."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    polls_after_start: list[int] = []

    def restart(self: FakeEngine, args: list[str]) -> tuple[int, str, str]:
        self.containers[args[-1]].status, self.containers[args[-1]].health = "running", "starting"
        polls_after_start.append(0)
        return 0, "", ""

    def inspect(self: FakeEngine, args: list[str]) -> tuple[int, str, str]:
        if polls_after_start:
            polls_after_start[0] += 1
            if polls_after_start[0] > 12:  # 12 polls of 1 s: past the new version's 5 s
                self.containers[args[-1]].health = "healthy"
        return FakeEngine.do_container(self, args)

    engine.do_start = restart.__get__(engine)  # type: ignore[method-assign]
    engine.do_container = inspect.__get__(engine)  # type: ignore[method-assign]
    deployer, out = make_deployer(make_cfg(tmp_path, health_timeout=5.0), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    assert "the previous version (movierec:1.0) is healthy again" in out.getvalue()


def test_unhealthy_container_fails_and_keeps_a_preexisting_image_tag(tmp_path: Path) -> None:
    engine = FakeEngine(images={"movierec:2.0"}, script=[("running", "unhealthy", 0)])
    deployer, _ = make_deployer(make_cfg(tmp_path, build=False), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    assert engine.containers == {}
    assert engine.images == {"movierec:2.0"}
    assert "build" not in engine.verbs()


def test_a_rebuilt_tag_whose_deployment_failed_names_the_image_it_named_before(tmp_path: Path) -> None:
    """Deploying the running tag again (a rebuild of movierec:1.0) and failing left the tag on the
    failed build: the restored version ran an untagged image, and the next `--no-build` of that
    tag deployed the build that had just failed. The tag goes back to the image it named."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    before = engine.image_id("movierec:1.0")
    deployer, out = make_deployer(make_cfg(tmp_path, image_version="1.0"), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    assert engine.image_id("movierec:1.0") == before
    built = next(i for i in engine.removed_ids if i.startswith("sha256:built-"))  # the failed build goes
    assert built != before
    assert engine.containers["movierec"].status == "running"
    assert f"movierec:1.0 names {before[:19]}" in out.getvalue()


DAEMON = "Error response from daemon: "


def test_a_previous_container_docker_would_not_remove_is_not_said_removed(tmp_path: Path) -> None:
    """After a successful deployment the set-aside version is removed with `docker rm --force`,
    whose result was not read: a refusal (a daemon error, a container stuck in removal) was still
    said "removed the previous container". It is said as a warning now, with the command to run."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        refused={"rm movierec-previous": f"{DAEMON}removal of container is already in progress"},
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(secrets_())  # the new version serves: the deployment succeeded
    printed = out.getvalue()
    assert "movierec-previous" in engine.containers
    assert "removed the previous container" not in printed
    assert (
        f"warning: could not remove the previous container (movierec:1.0): {DAEMON}removal of container "
        "is already in progress; remove it with: docker rm --force movierec-previous"
    ) in printed


def test_a_rollback_says_which_removals_docker_refused(tmp_path: Path) -> None:
    """The rollback removed the new container and image without reading either result, and said
    "removed the new container and image" whatever Docker answered."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
        refused={"rmi movierec:2.0": f"{DAEMON}conflict: unable to remove repository reference"},
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    printed = out.getvalue()
    assert "movierec:2.0" in engine.images
    assert "removed the new container\n" in printed  # that one Docker did remove
    assert "removed the new container and image" not in printed
    assert f"warning: could not remove the new image movierec:2.0: {DAEMON}conflict" in printed
    assert engine.containers["movierec"].image == "movierec:1.0"  # the rollback went on to its end
    assert engine.containers["movierec"].status == "running"


def test_an_image_docker_would_not_remove_before_the_stop_is_not_said_removed(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    engine = FakeEngine(refused={"rmi movierec:2.0": f"{DAEMON}i/o timeout"})
    deployer, out = make_deployer(make_cfg(tmp_path, secrets_root=blocker / "secrets"), engine)
    with pytest.raises(DeployError, match="not-a-directory"):
        deployer.deploy(secrets_())
    assert "removed the new image" not in out.getvalue()
    assert f"warning: could not remove the new image movierec:2.0: {DAEMON}i/o timeout" in out.getvalue()


def test_a_failed_build_docker_would_not_remove_is_said_kept(tmp_path: Path) -> None:
    """A rebuilt tag put back on the image it named: the failed build is removed with `docker rmi`,
    which Docker refuses while something else uses that image; "removed the new build" was said anyway."""
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    real = engine.do_rmi

    def refuse_the_build(args: list[str]) -> tuple[int, str, str]:
        if args[-1].startswith("sha256:built-"):
            return 1, "", f"{DAEMON}image is being used by stopped container 0123abcd"
        return real(args)

    engine.do_rmi = refuse_the_build  # type: ignore[method-assign]
    before = engine.image_id("movierec:1.0")
    deployer, out = make_deployer(make_cfg(tmp_path, image_version="1.0"), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    printed = out.getvalue()
    assert engine.image_id("movierec:1.0") == before
    assert "removed the new build" not in printed
    assert f"movierec:1.0 names {before[:19]} again" in printed
    assert "kept the new build sha256:built-" in printed
    assert "image is being used by stopped container" in printed


def test_health_timeout(tmp_path: Path) -> None:
    engine = FakeEngine(script=[("running", "starting", 0)])
    deployer, _ = make_deployer(make_cfg(tmp_path, health_timeout=10.0), engine)
    with pytest.raises(DeployError, match="not healthy after 10s"):
        deployer.deploy(secrets_())
    assert engine.containers == {}
    assert engine.verbs().count("container inspect") >= 10


def test_image_without_healthcheck_is_refused(tmp_path: Path) -> None:
    engine = FakeEngine(script=[("running", None, 0)])
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="no HEALTHCHECK"):
        deployer.deploy(secrets_())


def test_failed_build_touches_no_container(tmp_path: Path) -> None:
    engine = FakeEngine(build_rc=1, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")})
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match=r"building movierec:2\.0 failed"):
        deployer.deploy(secrets_())
    assert engine.verbs() == ["image inspect", "build"]
    assert engine.containers["movierec"].status == "running"


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("# app/deploy.py of a checkout from before IMAGE_INTERFACE\n", "older than this deploy-docker.py"),
        ("IMAGE_INTERFACE = 1000\n", "newer than this deploy-docker.py"),
        (None, "is not a movierec checkout: it has no app/deploy.py"),
    ],
)
def test_a_context_of_another_checkout_is_refused_before_the_build(
    tmp_path: Path, source: str | None, said: str
) -> None:
    """--context an older checkout built an image that could not answer this deploy-docker.py's
    checks: its healthcheck took --model-version for the URL, and once the live version was stopped
    the new one was rolled back with "does not serve model V, the one built and tested: unhealthy:
    --model-version: not an http(s) URL". Refused now, before anything is built or stopped, saying
    what is wrong and which deploy-docker.py to use."""
    cfg = make_cfg(tmp_path)
    if source is None:
        shutil.rmtree(cfg.context / "app")
    else:
        (cfg.context / "app" / "deploy.py").write_text(source)
    engine = FakeEngine(
        images={"movierec:1.0"}, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")}
    )
    deployer, _ = make_deployer(cfg, engine)
    with pytest.raises(DeployError, match=said) as refused:
        deployer.deploy(secrets_())
    message = str(refused.value)
    assert f"--context {cfg.context}" in message and "Nothing was built or deployed" in message
    if source is not None:
        assert f"Deploy it with its own {cfg.context / 'deploy-docker.py'}" in message
    assert engine.verbs() == ["image inspect"]
    assert engine.containers["movierec"].status == "running"


def test_an_image_built_for_a_deployment_refused_before_the_stop_is_removed(tmp_path: Path) -> None:
    """The secret files could not be written (here: --secrets-dir under a file): nothing was
    stopped, and the image this deployment built, under a tag that did not exist, is not left."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    engine = FakeEngine(containers={"movierec": FakeContainer("movierec:1.0", health="healthy")})
    engine.images.add("movierec:1.0")
    deployer, _ = make_deployer(make_cfg(tmp_path, secrets_root=blocker / "secrets"), engine)
    with pytest.raises(DeployError, match="not-a-directory"):
        deployer.deploy(secrets_())
    assert engine.images == {"movierec:1.0"}
    assert engine.containers["movierec"].status == "running"


def test_a_rebuilt_tag_that_existed_is_kept_when_the_deployment_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    engine = FakeEngine(images={"movierec:2.0"})
    before = engine.image_id("movierec:2.0")
    deployer, _ = make_deployer(make_cfg(tmp_path, secrets_root=blocker / "secrets"), engine)
    with pytest.raises(DeployError):
        deployer.deploy(secrets_())
    assert "movierec:2.0" in engine.images and engine.image_id("movierec:2.0") == before


BUILD_RUN_LINE = (
    '#25 [model 3/3] RUN set -eu; echo "accuracy test: MODEL_FILE=model/v1 ..."; '
    'python tests/run_accuracy_tests.py "$src" ...\n'
    "#25 0.334 accuracy test: MODEL_FILE=model/v1 MODEL_TEST_FILE=x"
)


@pytest.mark.parametrize(
    ("verdict", "said", "not_said"),
    [
        ("FAILED: ndcg@10 0.429423 < expected 0.479423 - 1e-05",
         "the accuracy test failed: ndcg@10 0.429423 < expected 0.479423", "does not load"),
        # not a score below another: the gloss on scores said what the verdict's own words did not
        ("FAILED: ndcg@10: 189 of 189 test profiles get fewer than 10 movies (e.g. segment M|1|writer: 9)",
         "the accuracy test failed: ndcg@10: 189 of 189 test profiles get fewer than 10", "scores below"),
        ("Error: bundle /tmp/model-in is unreadable: model.pkl does not match its manifest SHA-256",
         "the model or its test data does not load: bundle /tmp/model-in is unreadable: model.pkl", "scores"),
        ("install-model: /tmp/model-in holds no model to convert into a bundle",
         "the model or its test data does not load: /tmp/model-in holds no model", "scores"),
    ],
)  # fmt: skip
def test_a_failed_build_says_why_in_its_last_line(
    tmp_path: Path, verdict: str, said: str, not_said: str
) -> None:
    """The last line said 'A failed accuracy test means the model scores below its expected_score'
    for every failed build, a corrupt bundle included; the cause was somewhere above, among the
    builder's echoes of the whole RUN command. It now quotes the gate's verdict (BuildKit's or
    the classic builder's output)."""
    for line in (f"#25 1.509 {verdict}", verdict):
        engine = FakeEngine(build_rc=1, build_output=f"{BUILD_RUN_LINE}\n{line}\n#25 ERROR: exit code: 1\n")
        deployer, _ = make_deployer(make_cfg(tmp_path), engine)
        with pytest.raises(DeployError) as failed:
            deployer.deploy(secrets_())
        message = str(failed.value)
        assert said in message and not_said not in message and "Nothing was deployed" in message


def test_a_build_that_failed_elsewhere_points_to_its_output(tmp_path: Path) -> None:
    engine = FakeEngine(build_rc=1, build_output="#12 ERROR: failed to fetch pip wheels\n")
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match=r"see the output above\. Nothing was deployed") as failed:
        deployer.deploy(secrets_())
    assert "accuracy" not in str(failed.value)


def test_docker_build_output_is_streamed_and_kept(capfd: pytest.CaptureFixture[str]) -> None:
    result = deploy._execute(["sh", "-c", "echo one; echo two >&2; exit 3"], False, None)
    assert result.returncode == 3
    assert result.stdout == "one\ntwo\n"
    assert capfd.readouterr().out == "one\ntwo\n"


def test_failed_docker_run_restores_the_previous_container(tmp_path: Path) -> None:
    engine = FakeEngine(run_rc=125, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")})
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="port is already allocated"):
        deployer.deploy(secrets_())
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert not engine.secret_dirs[0].exists()  # the new container's secrets went with it


def test_a_stopped_previous_container_is_kept_stopped(tmp_path: Path) -> None:
    old = FakeContainer("movierec:1.0", status="exited", health="unhealthy")
    engine = FakeEngine(containers={"movierec": old}, script=[("exited", "starting", 0)])
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError):
        deployer.deploy(secrets_())
    assert engine.containers["movierec"] is old and old.status == "exited"
    assert "stop" not in engine.verbs() and "start" not in engine.verbs()


def test_backup_left_by_an_interrupted_deployment_is_restored_first(tmp_path: Path) -> None:
    engine = FakeEngine(containers={"movierec-previous": FakeContainer("movierec:1.0", status="exited")})
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(secrets_())
    assert set(engine.containers) == {"movierec"}
    assert engine.containers["movierec"].image == "movierec:2.0"
    assert "interrupted deployment" in out.getvalue()


# --------------------------------------------------------------------------- state volumes


def test_run_command_mounts_the_state_volumes_and_not_the_image_s_models(tmp_path: Path) -> None:
    argv = run_command(make_cfg(tmp_path, container_name="api"), SecretFiles(Path("/s"), (), 0))
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "--mount"]
    assert "type=volume,source=api-db,target=/var/lib/movierec/db" in mounts
    assert "type=volume,source=api-journal,target=/var/lib/movierec/journal" in mounts
    assert not any(m.endswith("target=/var/lib/movierec") for m in mounts)  # the models come with the image


def test_the_state_volumes_are_where_the_image_keeps_its_database_and_journal() -> None:
    dockerfile = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    assert f"MOVIEREC_DATABASE_URL=sqlite:///{DATABASE_FILE} " in dockerfile
    # what the fake engine's containers start with, and the names deploy empties beside their file
    image_secrets = {name for name in SECRET_VARIABLES if re.search(rf"\b{name}=", dockerfile)}
    assert image_secrets == set(IMAGE_ENV) == deploy.IMAGE_SECRET_DEFAULTS
    assert "MOVIEREC_FEEDBACK_JOURNAL_DIR=/var/lib/movierec/journal" in dockerfile
    assert {target for _, target in STATE_VOLUMES} == {"/var/lib/movierec/db", "/var/lib/movierec/journal"}
    assert str(Path(DATABASE_FILE).parent) == dict(STATE_VOLUMES)["db"]


def _database(path: Path, scores: Sequence[float]) -> Path:
    """A WAL-mode SQLite file with a ``feedback`` table, as the service keeps it."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS feedback (score REAL)")
        db.executemany("INSERT INTO feedback VALUES (?)", [(s,) for s in scores])
        db.commit()
    return path


def _database_files(tmp_path: Path, scores: Sequence[float]) -> dict[str, bytes]:
    """A volume's content: the database file alone, as a graceful stop leaves it."""
    path = _database(tmp_path / "movierec.db", scores)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("movierec.db")}
    path.unlink()
    return files


def _scores(files: dict[str, bytes]) -> list[float]:
    with tempfile.TemporaryDirectory() as directory:
        for name, content in files.items():
            (Path(directory) / name).write_bytes(content)
        with closing(sqlite3.connect(Path(directory) / "movierec.db")) as db:
            return [row[0] for row in db.execute("SELECT score FROM feedback ORDER BY rowid")]


def _migrate(engine: FakeEngine) -> None:
    """The new version's start: it writes to the database and leaves its WAL (killed, not stopped)."""
    files = engine.volumes["movierec-db"]
    with tempfile.TemporaryDirectory() as directory:
        for name, content in files.items():
            (Path(directory) / name).write_bytes(content)
        db = sqlite3.connect(Path(directory) / "movierec.db")
        db.execute("ALTER TABLE feedback ADD COLUMN revision TEXT")
        db.execute("INSERT INTO feedback VALUES (99.0, 'new')")
        db.commit()
        files.clear()  # copied while the connection is open: the WAL holds the new version's writes
        files.update({p.name: p.read_bytes() for p in Path(directory).iterdir()})
        db.close()


def _live(tmp_path: Path, scores: Sequence[float] = (4.0, 5.0), **fields: Any) -> FakeEngine:
    """A running 1.0 whose database volume holds ``scores``."""
    mounted = {"/var/lib/movierec/db": "movierec-db", "/var/lib/movierec/journal": "movierec-journal"}
    return FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec": FakeContainer("movierec:1.0", health="healthy", volumes=mounted)},
        volumes={"movierec-db": _database_files(tmp_path, scores), "movierec-journal": {}},
        **fields,
    )


def test_a_first_deployment_creates_labelled_volumes_and_mounts_them(tmp_path: Path) -> None:
    engine = FakeEngine()
    make_deployer(make_cfg(tmp_path), engine)[0].deploy(secrets_())
    assert set(engine.volumes) == {"movierec-db", "movierec-journal"}
    for name in engine.volumes:
        assert engine.volume_labels[name]["org.movierec.container"] == "movierec"
    assert engine.containers["movierec"].volumes == {
        "/var/lib/movierec/db": "movierec-db",
        "/var/lib/movierec/journal": "movierec-journal",
    }
    assert engine.volumes["movierec-db"] == {}  # no database yet: nothing to snapshot


def test_a_redeployment_keeps_the_volumes_and_their_scores(tmp_path: Path) -> None:
    engine = _live(tmp_path)
    engine.volumes["movierec-journal"]["segment-1"] = b"acknowledged score"
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(secrets_())
    assert engine.containers["movierec"].image == "movierec:2.0"
    assert engine.containers["movierec"].volumes["/var/lib/movierec/db"] == "movierec-db"
    assert _scores(engine.volumes["movierec-db"]) == [4.0, 5.0]
    assert engine.volumes["movierec-journal"] == {"segment-1": b"acknowledged score"}
    assert "volume create" not in engine.verbs()  # they exist: not created again


def test_the_database_is_snapshotted_between_the_stop_and_the_start_and_dropped_on_success(
    tmp_path: Path,
) -> None:
    engine = _live(tmp_path)
    seen: list[dict[str, bytes]] = []
    engine.on_start = lambda e: seen.append(dict(e.volumes["movierec-db"]))
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(secrets_())
    verbs = engine.verbs()
    assert verbs.index("stop") < verbs.index("database snapshot") < verbs.index("run")
    snapshot = "movierec.db" + SNAPSHOT_SUFFIX
    assert snapshot in seen[0]  # there while the new version starts
    assert _scores({"movierec.db": seen[0][snapshot]}) == [4.0, 5.0]
    assert verbs.index("rm") < verbs.index("database discard")  # dropped once the old container is gone
    assert set(engine.volumes["movierec-db"]) == {"movierec.db"}
    snapshot_run = next(c for c in engine.calls if c[:2] == ["run", "--rm"])
    assert "movierec:2.0" in snapshot_run and "--network" in snapshot_run
    assert "snapshot of the database" in out.getvalue()


def test_a_failed_new_version_gets_the_database_snapshot_back(tmp_path: Path) -> None:
    """The new version migrated the schema (and was killed with its WAL) before it failed: the
    previous version comes back on the database as it left it, which it can open."""
    engine = _live(
        tmp_path, on_start=_migrate, script=[("running", "starting", 0), ("running", "unhealthy", 0)]
    )
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    verbs = engine.verbs()
    assert verbs.index("database snapshot") < verbs.index("run")
    assert verbs.index("rm") < verbs.index("database restore") < verbs.index("start")
    assert verbs.index("database restore") < verbs.index("rmi")  # restored with the new image, then removed
    assert set(engine.volumes["movierec-db"]) == {"movierec.db"}  # no WAL of the new version, no snapshot
    assert _scores(engine.volumes["movierec-db"]) == [4.0, 5.0]
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert "restored the database snapshot" in out.getvalue()


def test_a_failed_snapshot_brings_the_live_version_back_untouched(tmp_path: Path) -> None:
    engine = _live(tmp_path, failing_commands={"snapshot"})
    before = dict(engine.volumes["movierec-db"])
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(
        DeployError, match=r"snapshot of the database in volume movierec-db failed: .*disk I/O"
    ):
        deployer.deploy(secrets_())
    assert "run" not in engine.verbs()  # the new version never started
    assert "database restore" not in engine.verbs()
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert set(engine.containers) == {"movierec"}
    assert engine.volumes["movierec-db"] == before
    assert "previous version (movierec:1.0) is running again" in out.getvalue()
    # no new container was made: nothing to remove, and no advice to run `docker rm --force
    # movierec`, the name the previous version runs under again (it said so, warning, since the
    # rollback reads what Docker answers)
    assert "could not remove the new container" not in out.getvalue()
    assert "docker rm --force movierec\n" not in out.getvalue()
    assert "no new container to remove" in out.getvalue()


def test_a_failed_restore_keeps_the_snapshot_and_says_how_to_restore_it(tmp_path: Path) -> None:
    engine = _live(
        tmp_path, on_start=_migrate, failing_commands={"restore"},
        script=[("running", "starting", 0), ("running", "unhealthy", 0)],
    )  # fmt: skip
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="health check failed"):
        deployer.deploy(secrets_())
    assert "movierec.db" + SNAPSHOT_SUFFIX in engine.volumes["movierec-db"]
    assert "could not restore the database snapshot" in out.getvalue()
    assert "movierec:2.0" in engine.images  # kept: the restore by hand runs in it
    assert engine.containers["movierec"].image == "movierec:1.0"  # brought back all the same


def test_a_version_deployed_before_the_volumes_has_its_database_moved_into_the_volume(tmp_path: Path) -> None:
    """The first deployment with volumes, over a container that keeps its database in its own
    layer: its scores are copied into the new volume (which a restore then also protects)."""
    old = FakeContainer("movierec:1.0", health="healthy", layer=_database_files(tmp_path, [3.0]))
    engine = FakeEngine(images={"movierec:1.0"}, containers={"movierec": old})
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(secrets_())
    verbs = engine.verbs()
    assert (
        verbs.index("stop")
        < verbs.index("cp")
        < verbs.index("database adopt")
        < verbs.index("database snapshot")
    )
    assert _scores(engine.volumes["movierec-db"]) == [3.0]
    adopt = next(c for c in engine.calls if c[:2] == ["run", "--rm"] and "adopt" in c)
    assert adopt[adopt.index("--user") + 1] == "root"  # to give the files to the image's user
    assert "moved the database of movierec:1.0 out of its container" in out.getvalue()


def test_a_database_in_both_the_old_container_and_the_volume_is_not_overwritten(tmp_path: Path) -> None:
    """Which one to keep is the operator's call: nothing is started, the old version comes back."""
    old = FakeContainer("movierec:1.0", health="healthy", layer=_database_files(tmp_path, [3.0]))
    engine = FakeEngine(
        images={"movierec:1.0"}, containers={"movierec": old},
        volumes={"movierec-db": _database_files(tmp_path, [4.0]), "movierec-journal": {}},
    )  # fmt: skip
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="already holds a database"):
        deployer.deploy(secrets_())
    assert _scores(engine.volumes["movierec-db"]) == [4.0]
    assert "run" not in engine.verbs()
    assert engine.containers["movierec"] is old and old.status == "running"


def _killed_with(database: Path, score: float, volume: Path) -> Path:
    """``database`` after a write whose process was killed: copied into ``volume`` while the
    connection is open, so the committed write is in the copied WAL only."""
    volume.mkdir()
    with closing(sqlite3.connect(database)) as db:
        db.execute("INSERT INTO feedback VALUES (?)", (score,))
        db.commit()
        for path in database.parent.glob(database.name + "*"):
            shutil.copyfile(path, volume / path.name)
    return volume / database.name


def test_snapshot_and_restore_use_sqlite_and_drop_a_stale_wal(tmp_path: Path) -> None:
    """The snapshot holds the committed writes still in the WAL (a previous version that was
    killed); a restore drops the WAL the new version left beside the file, which would
    otherwise be replayed on top of the snapshot."""
    database = _killed_with(_database(tmp_path / "movierec.db", [1.0]), 2.0, tmp_path / "v1")
    assert (tmp_path / "v1" / "movierec.db-wal").stat().st_size > 0
    assert snapshot_database(database) is True
    snapshot = tmp_path / "v1" / ("movierec.db" + SNAPSHOT_SUFFIX)
    assert _scores({"movierec.db": snapshot.read_bytes()}) == [1.0, 2.0]

    volume = tmp_path / "v2"
    migrated = _killed_with(database, 3.0, volume)  # the new version's write, in its WAL
    shutil.copyfile(snapshot, volume / snapshot.name)
    assert (volume / "movierec.db-wal").stat().st_size > 0
    restore_database(migrated)
    assert sorted(p.name for p in volume.iterdir()) == ["movierec.db"]
    assert _scores({"movierec.db": migrated.read_bytes()}) == [1.0, 2.0]

    assert snapshot_database(tmp_path / "none.db") is False  # nothing to keep
    assert not (tmp_path / ("none.db" + SNAPSHOT_SUFFIX)).exists()
    with pytest.raises(FileNotFoundError):
        restore_database(tmp_path / "none.db")


def test_database_discard_says_removed_only_when_there_was_a_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m app.deploy database discard`` printed "removed <snapshot>" when there was none
    (run by hand after a deployment, or a second time): it says there was nothing to remove, and
    both succeed (what discard asks for, no snapshot, is the case)."""
    database = _database(tmp_path / "movierec.db", [1.0])
    snapshot = tmp_path / ("movierec.db" + SNAPSHOT_SUFFIX)
    assert deploy.database_main(["snapshot", str(database)]) == 0 and snapshot.is_file()
    capsys.readouterr()
    assert deploy.database_main(["discard", str(database)]) == 0
    assert capsys.readouterr().out == f"removed {snapshot}\n" and not snapshot.exists()
    assert deploy.database_main(["discard", str(database)]) == 0
    assert capsys.readouterr().out == f"no snapshot at {snapshot}: nothing to remove\n"
    assert database.is_file()


def test_main_reads_the_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg(tmp_path)
    engine = FakeEngine()
    monkeypatch.setattr(deploy, "Docker", lambda binary: Docker(binary, engine))
    rc = deploy.main(
        ["movierec", "2.0", str(cfg.model_file), str(cfg.test_data_file), "--context", str(cfg.context),
         "--port-mapping", cfg.port_mapping, "--health-timeout", "5", "--secrets-dir", str(cfg.secrets_root)],
        environ={"SESSION_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert rc == 0
    assert engine.containers["movierec"].secret("SESSION_PASSWORD") == PASSWORD
    assert "--restart" in engine.containers["movierec"].argv


def test_main_reports_errors_with_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["img", "1", "m", "t", "--no-build", "--docker", str(tmp_path / "no-docker")]
    rc = deploy.main(argv, environ={})
    assert rc == 1
    assert "no session password" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--port-mapping", "nope"], "--port-mapping"),
        (["--port-mapping", "127.0.0.1:99999"], "--port-mapping"),
        (["--port-mapping", "localhost:8000"], "--port-mapping"),
        (["--container-name", "team/movierec"], "--container-name"),
        (["--container-name", ".hidden"], "--container-name"),
        (["--secrets-dir", "/srv/a,b"], "--secrets-dir"),
    ],
)
def test_an_option_docker_cannot_use_is_a_usage_error_before_anything_is_built(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    named: str,
) -> None:
    """A bad --port-mapping was exit 1 like a failed deployment; a bad --container-name or
    --secrets-dir was refused only after the image had been built (minutes), and that image stayed."""
    cfg = make_cfg(tmp_path)
    engine = FakeEngine()
    monkeypatch.setattr(deploy, "Docker", lambda binary: Docker(binary, engine))
    with pytest.raises(SystemExit) as exited:
        deploy.main(
            ["movierec", "2.0", str(cfg.model_file), str(cfg.test_data_file), "--context", str(cfg.context),
             *options],
            environ={"SESSION_PASSWORD": PASSWORD},
        )  # fmt: skip
    assert exited.value.code == 2
    assert named in capsys.readouterr().err
    assert engine.calls == []


# --------------------------------------------------------------------------- install-model


def _bundle(model_dir: Path) -> Path:
    from app.recommender.bundle import build_tables, write_bundle
    from app.recommender.models.popularity import GlobalPopularity

    rng = np.random.default_rng(0)
    items = pd.DataFrame(
        {"movie_id": np.arange(1, 31), "title": [f"Movie {i} (1990)" for i in range(1, 31)],
         "year": 1990, "genres": "Drama"}
    )  # fmt: skip
    ratings = pd.DataFrame(
        {"user_id": rng.integers(1, 20, 400), "movie_id": rng.integers(1, 31, 400),
         "rating": rng.integers(1, 6, 400), "timestamp": np.arange(400)}
    )  # fmt: skip
    model = GlobalPopularity().fit(ratings, pd.DataFrame(), items)
    tables = build_tables(model, ratings)
    test_data = {
        "data": [{"age": 30, "gender": "M", "occupation": "programmer"}],
        "target": [["Movie 1 (1990)"]],
        "expected_score": 0.0,
    }
    return write_bundle(model_dir, model, items, tables, {"served_model": model.name}, test_data)


def test_install_model_from_a_bundle_dir_and_a_tarball(tmp_path: Path) -> None:
    from app.recommender.bundle import load_bundle

    bundle = _bundle(tmp_path / "trained")
    store = install_model(bundle, tmp_path / "store")
    assert store.name == bundle.name and store.parent.name == "store"
    assert os.readlink(tmp_path / "store" / "latest") == bundle.name
    assert load_bundle(tmp_path / "store").version == bundle.name
    assert stat.S_IMODE((tmp_path / "store" / bundle.name / "manifest.json").stat().st_mode) == 0o644

    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=bundle.name)
    install_model(archive, tmp_path / "store2")
    assert load_bundle(tmp_path / "store2").version == bundle.name


def test_install_model_refuses_a_broken_bundle(tmp_path: Path) -> None:
    from app.recommender.bundle import BundleError

    bundle = _bundle(tmp_path / "trained")
    (bundle / "segment_top.npy").write_bytes(b"not numpy")
    with pytest.raises(BundleError):
        install_model(bundle, tmp_path / "store")
    assert not (tmp_path / "store" / "latest").exists()


def test_install_model_refuses_what_the_server_would_refuse(tmp_path: Path) -> None:
    # the API also loads rating_model.pkl; a bundle whose pickle needs a package the image
    # lacks (pyarrow, say) must fail the build, not the deployment
    from app.recommender.bundle import BundleError

    bundle = _bundle(tmp_path / "trained")
    (bundle / "rating_model.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(BundleError, match=r"rating_model\.pkl"):
        install_model(bundle, tmp_path / "store")


def test_install_model_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle(tmp_path / "trained")
    assert deploy.install_model_main([str(bundle), str(tmp_path / "store")]) == 0
    assert "installed model" in capsys.readouterr().out
    assert deploy.install_model_main([str(tmp_path / "missing"), str(tmp_path / "store3")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_container_that_restarted_during_start_up_is_a_failure(tmp_path: Path) -> None:
    # on-failure:5 brings a crashing app back: running again, but not a good deployment
    engine = FakeEngine(script=[("running", "starting", 1), ("running", "healthy", 1)])
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(DeployError, match="restarted 1 time"):
        deployer.deploy(secrets_())
    assert engine.containers == {}


@contextlib.contextmanager
def listening(port_mapping: str) -> Iterator[None]:
    """A process of this host listening on ``port_mapping``'s IP and port (another server, or the
    docker-proxy of a container that publishes it)."""
    host, _, port = port_mapping.rpartition(":")
    with socket.socket() as server:
        server.bind((host, int(port)))
        server.listen()
        yield


def test_a_host_port_another_process_listens_on_is_refused_before_anything_is_built_or_stopped(
    tmp_path: Path,
) -> None:
    """``docker run`` could not publish a port another process holds ("bind: address already in
    use", Docker 20.10): the image was built, the running version stopped, the new container failed
    to start and the running version was started again, out of service for its stop and start."""
    cfg = make_cfg(tmp_path)
    engine = FakeEngine(containers={"movierec": FakeContainer("movierec:1.0", health="healthy")})
    deployer, _ = make_deployer(cfg, engine)
    with listening(cfg.port_mapping), pytest.raises(DeployError, match=r"port .* in use") as refused:
        deployer.deploy(secrets_())
    assert "Nothing was built or stopped" in str(refused.value)
    assert [c[0] for c in engine.calls if c[0] in ("build", "rename", "stop", "run")] == []
    assert engine.containers["movierec"].status == "running"


def test_an_ip_address_this_host_does_not_have_is_refused_before_anything_is_built_or_stopped(
    tmp_path: Path,
) -> None:
    """``docker run -p 192.0.2.1:8000:8000`` on a host without that address fails ("cannot assign
    requested address"): a mistyped --port-mapping IP was found after the build and after the
    running version was stopped, which was then started again."""
    cfg = make_cfg(tmp_path, port_mapping=f"192.0.2.1:{free_port()}")  # TEST-NET-1: no host's own
    engine = FakeEngine(containers={"movierec": FakeContainer("movierec:1.0", health="healthy")})
    deployer, _ = make_deployer(cfg, engine)
    with pytest.raises(DeployError, match=r"192\.0\.2\.1 is not an address of this host") as refused:
        deployer.deploy(secrets_())
    assert "Nothing was built or stopped" in str(refused.value)
    assert [c[0] for c in engine.calls if c[0] in ("build", "rename", "stop", "run")] == []
    assert engine.containers["movierec"].status == "running"


@pytest.mark.parametrize(("listener", "free"), [("0.0.0.0", False), ("127.0.0.2", True)])
def test_a_listener_on_every_address_takes_the_port_one_on_another_address_does_not(
    tmp_path: Path, listener: str, free: bool
) -> None:
    cfg = make_cfg(tmp_path)
    port = cfg.port_mapping.rpartition(":")[2]
    with listening(f"{listener}:{port}"):
        assert deploy.host_port_taken(cfg.port_mapping) is not free  # 127.0.0.1:PORT
        assert deploy.host_port_taken(port)  # every address: any listener takes it
        assert deploy.host_port_taken(f"0.0.0.0:{port}")  # so does every IPv4 address


def test_the_host_port_the_running_version_publishes_is_not_taken_for_another_process(
    tmp_path: Path,
) -> None:
    cfg = make_cfg(tmp_path)
    live = FakeContainer("movierec:1.0", health="healthy", argv=["--publish", f"{cfg.port_mapping}:8000"])
    engine = FakeEngine(images={"movierec:1.0"}, containers={"movierec": live})
    deployer, _ = make_deployer(cfg, engine)
    with listening(cfg.port_mapping):  # its docker-proxy
        deployer.deploy(secrets_())
    assert engine.containers["movierec"].image == "movierec:2.0"


# --------------------------------------------------------------------------- smoke test


class _SeedApi:
    """A loopback HTTP server speaking the seed's contract, with switchable faults."""

    def __init__(self, score_answer: object = "Ok", password: str = PASSWORD) -> None:
        import http.server
        import threading

        api = self
        self.score_answer = score_answer
        self.password = password
        self.scored: list[dict[str, object]] = []
        self.proxied: list[str] = []  # the absolute URLs it was asked for as a proxy

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if not self.path.startswith("/"):  # asked as a proxy: "GET http://host/..."
                    api.proxied.append(self.path)
                    self.reply(502, {"error": "bad gateway"})
                    return
                self.reply(200, {"status": "ok", "model_version": "v1"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                authorized = self.headers.get("Authorization") == "Bearer t0k3n"
                if self.path == "/api/login":
                    ok = body.get("session_password") == api.password
                    self.reply(
                        200 if ok else 401, {"access_token": "t0k3n"} if ok else {"error": "unauthorized"}
                    )
                elif not authorized:
                    self.reply(401, {"error": "unauthorized"})
                elif self.path == "/api/recommend":
                    self.reply(200, {"recommendations": ["Star Wars (1977)", "Fargo (1996)"], "id": "r-1"})
                else:
                    api.scored.append(body)
                    self.reply(200, api.score_answer)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def seed_api() -> Iterator[_SeedApi]:
    api = _SeedApi()
    yield api
    api.close()


def test_smoke_test_runs_the_seed_sequence(seed_api: _SeedApi) -> None:
    result = deploy.smoke_test(seed_api.url, PASSWORD)
    assert result.recommendations == ["Star Wars (1977)", "Fargo (1996)"]
    assert result.request_id == "r-1"
    assert seed_api.scored == [{"id": "r-1", "movie": "Star Wars (1977)", "score": 5.0}]
    assert result.ready["model_version"] == "v1"


def test_smoke_test_reports_the_failing_status(seed_api: _SeedApi) -> None:
    with pytest.raises(DeployError, match="401"):
        deploy.smoke_test(seed_api.url, "wrong")


def test_smoke_test_checks_the_score_answer(seed_api: _SeedApi) -> None:
    seed_api.score_answer = {"unexpected": True}
    with pytest.raises(DeployError, match='expected "Ok"'):
        deploy.smoke_test(seed_api.url, PASSWORD)


def test_smoke_test_refuses_non_http_urls() -> None:
    with pytest.raises(DeployError, match="http"):
        deploy.smoke_test("file:///etc/passwd", PASSWORD)


def test_smoke_cli_needs_the_password_in_the_environment(seed_api: _SeedApi) -> None:
    assert deploy.smoke_main([seed_api.url], environ={}) == 2
    assert deploy.smoke_main([seed_api.url], environ={"SESSION_PASSWORD": PASSWORD}) == 0
    assert deploy.smoke_main([seed_api.url], environ={"SESSION_PASSWORD": "nope"}) == 1


def test_the_smoke_test_checks_the_served_model_version_when_asked(
    seed_api: _SeedApi, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image that answers the seed's sequence but serves another model than the one it was built
    with (a store's older version, a model volume mounted over /model) passed CI's smoke test: it
    read /health/ready's model_version and never compared it. ``--model-version`` makes a
    different one a failed smoke test (exit 1), naming both, before anything is scored."""
    environ = {"SESSION_PASSWORD": PASSWORD}
    assert deploy.smoke_main([seed_api.url, "--model-version", "v1"], environ=environ) == 0
    assert "model v1" in capsys.readouterr().out
    assert deploy.smoke_main([seed_api.url, "--model-version", "v2"], environ=environ) == 1
    assert "serves model 'v1', not the 'v2' expected" in capsys.readouterr().err
    assert seed_api.scored == [{"id": "r-1", "movie": "Star Wars (1977)", "score": 5.0}]  # the first run's


def _dead_port() -> int:
    """A loopback port nothing listens on: a proxy that is not there."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _forget_urllib_s_opener(monkeypatch: pytest.MonkeyPatch) -> None:
    """urlopen builds its opener, proxies included, from the environment of its first call in the
    process, and keeps it: without this the proxy settings set here would not count. The one kept
    before is put back after the test (one built here would send later tests to the dead proxy)."""
    import urllib.request

    monkeypatch.setattr(urllib.request, "_opener", None)


def test_the_smoke_test_asks_a_loopback_api_directly_whatever_the_proxy_settings(
    seed_api: _SeedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI's smoke step (`python -m app.deploy smoke http://127.0.0.1:8000`) runs where a proxy may be
    set (HTTP_PROXY, and NO_PROXY in Docker's documented CIDR form, 127.0.0.0/8, which urllib does not
    read): it asked the proxy for 127.0.0.1, and a healthy API failed its smoke test with the proxy's
    "Connection refused". The container's health check (app/healthcheck.py) already asked the
    loopback directly; the smoke test now does too."""
    proxy = f"http://127.0.0.1:{_dead_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.0/8")
    _forget_urllib_s_opener(monkeypatch)
    for url in (seed_api.url, seed_api.url.replace("127.0.0.1", "localhost")):
        result = deploy.smoke_test(url, PASSWORD, model_version="v1")
        assert result.request_id == "r-1"


def test_the_smoke_test_of_a_remote_api_still_goes_through_the_proxy(
    seed_api: _SeedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the loopback is asked directly: another host is reached the way the environment says."""
    monkeypatch.setenv("http_proxy", seed_api.url)  # a "proxy" that answers 404s for absolute URLs
    monkeypatch.setenv("HTTP_PROXY", seed_api.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    _forget_urllib_s_opener(monkeypatch)
    with pytest.raises(DeployError, match=r"movierec\.invalid:8000/health/ready answered 502"):
        deploy.smoke_test("http://movierec.invalid:8000", PASSWORD)
    assert seed_api.proxied == ["http://movierec.invalid:8000/health/ready"]


@pytest.mark.parametrize("timeout", ["0", "nan", "-1"])
def test_a_smoke_timeout_that_is_not_a_number_of_seconds_above_0_is_a_usage_error(
    seed_api: _SeedApi, timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It was "smoke: FAILED" (exit 1) against a healthy API: a typo read as a broken deployment."""
    environ = {"SESSION_PASSWORD": PASSWORD}
    with pytest.raises(SystemExit) as exited:
        deploy.smoke_main([seed_api.url, "--timeout", timeout], environ=environ)
    assert exited.value.code == 2
    assert "--timeout" in capsys.readouterr().err
    assert deploy.smoke_main([seed_api.url, "--timeout", "5"], environ=environ) == 0


def test_log_errors_are_distinct_oldest_first_and_bounded() -> None:
    restarts = "\n".join(
        ["ModuleNotFoundError: No module named 'x'", "KeyboardInterrupt", "{not json", "ValueError"] * 3
    )
    assert deploy.log_errors(restarts) == ["ModuleNotFoundError: No module named 'x'", "ValueError"]
    many = "\n".join(f"RuntimeError: number {i}" for i in range(30))
    assert deploy.log_errors(many, limit=3) == [f"RuntimeError: number {i}" for i in range(3)]
    assert deploy.log_errors('{"level": "CRITICAL", "message": "disk full"}') == ["disk full"]
    assert deploy.log_errors("Traceback (most recent call last):\nan ordinary line: with a colon") == []


class SigtermDuringStop(FakeEngine):
    """SIGTERM (a CI job's timeout) arrives while `docker stop --time 30` waits for the old version;
    the stop is over by the time the CLI returns."""

    def do_stop(self, args: list[str]) -> tuple[int, str, str]:
        super().do_stop(args)
        signal.raise_signal(signal.SIGTERM)
        return 0, "", ""

    def settle(self) -> None:
        """Nothing is still stopping."""


class StopContinuesInTheDaemon(FakeEngine):
    """The interrupt stops only the CLI: the daemon goes on stopping the container (moby's stop
    ignores the request's cancellation), and a `docker start` meanwhile is a no-op that exits 0."""

    stopping: set[str]

    def do_stop(self, args: list[str]) -> tuple[int, str, str]:
        name = args[-1]
        if not hasattr(self, "stopping"):
            self.stopping = set()
        self.stopping.add(name)  # SIGTERM sent to the container, the CLI waits up to --time ...
        signal.raise_signal(signal.SIGTERM)  # ... and is interrupted; the daemon goes on
        return 0, "", ""

    def do_rename(self, args: list[str]) -> tuple[int, str, str]:
        rc = super().do_rename(args)
        if rc[0] == 0 and args[0] in getattr(self, "stopping", set()):
            self.stopping.discard(args[0])
            self.stopping.add(args[1])
        return rc

    def do_container(self, args: list[str]) -> tuple[int, str, str]:
        name = args[-1]
        if name in getattr(self, "stopping", set()):  # polled: the daemon's stop ends after a while
            self.polls = getattr(self, "polls", 0) + 1
            if self.polls >= 3:
                self.stopping.discard(name)
                self.containers[name].status = "exited"
        return super().do_container(args)

    def do_start(self, args: list[str]) -> tuple[int, str, str]:
        c = self.containers[args[-1]]
        if c.status == "running":
            return 0, args[-1] + "\n", ""  # docker start on a running container: exit 0, nothing done
        c.status = "running"
        return 0, "", ""

    def settle(self) -> None:
        """The daemon's stop finishes (its --time passes, or the process exits)."""
        for name in getattr(self, "stopping", set()):
            if name in self.containers:
                self.containers[name].status = "exited"
        self.stopping = set()


def interrupted_deploy(cfg: DeployConfig, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> int:
    """``deploy-docker.py`` (its ``main``) of version 2.0 over a running 1.0, on the fake ``engine``."""
    monkeypatch.setattr(deploy, "Docker", lambda binary: Docker(binary, engine))
    return deploy.main(
        ["movierec", "2.0", str(cfg.model_file), str(cfg.test_data_file), "--context", str(cfg.context),
         "--port-mapping", cfg.port_mapping, "--secrets-dir", str(cfg.secrets_root)],
        environ={"SESSION_PASSWORD": PASSWORD},
    )  # fmt: skip


@pytest.mark.parametrize("engine_class", [SigtermDuringStop, StopContinuesInTheDaemon])
def test_an_interrupt_while_the_previous_version_stops_brings_it_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_class: type[Any]
) -> None:
    """The stop ran outside the rollback: the live version stayed stopped under its -previous
    name. Then a rollback's start, while the daemon was still stopping it, did nothing."""
    engine = engine_class(
        images={"movierec:1.0"}, containers={"movierec": FakeContainer("movierec:1.0", health="healthy")}
    )
    assert interrupted_deploy(make_cfg(tmp_path), engine, monkeypatch) == 130
    engine.settle()  # whatever stop was under way is over
    assert set(engine.containers) == {"movierec"}, engine.containers
    assert engine.containers["movierec"].status == "running", "the old version is down after the rollback"


def test_a_backup_recovered_from_an_interrupted_deployment_is_started_on_rollback(tmp_path: Path) -> None:
    # what the interruption above leaves: the live version stopped under its -previous name
    engine = FakeEngine(
        images={"movierec:1.0"},
        containers={"movierec-previous": FakeContainer("movierec:1.0", status="exited", health="healthy")},
        script=[("running", "unhealthy", 0)],
    )
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    with pytest.raises(deploy.DeployError):
        deployer.deploy(secrets_())
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"


def service_settings(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings of the service started in the new container: its environment (the image's
    and what `docker run` set), its secret files read where the engine mounted them from."""
    from app.config import load_settings
    from app.secret_files import SECRET_SETTINGS

    for names in SECRET_SETTINGS.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(f"{name}_FILE", raising=False)
    for name, value in engine.containers[engine.new_name or ""].env.items():
        if value.startswith(SECRETS_MOUNT + "/"):
            value = str(engine.secret_dirs[-1] / value.removeprefix(SECRETS_MOUNT + "/"))
        monkeypatch.setenv(name, value)
    return load_settings(testing=True)


def test_the_database_redis_and_tracking_urls_reach_the_container_as_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--env MOVIEREC_DATABASE_URL / MOVIEREC_REDIS_URL / MOVIEREC_MLFLOW_TRACKING_URI put the
    URLs, passwords included, in the container's configuration (docker inspect). They are files
    now, like the other secrets; the image's own MOVIEREC_DATABASE_URL (its SQLite file) is
    emptied, or the service would refuse the URL given both ways and the deployment would roll
    back."""
    pg_url = "postgresql://movierec:pg-pass-word@db.internal/movierec"
    redis_url = "redis://:redis-pass-word@cache.internal:6379/0"
    mlflow_uri = "https://mlflow:mlflow-pass-word@tracking.internal/"
    urls = {"MOVIEREC_DATABASE_URL": pg_url, "MOVIEREC_REDIS_URL": redis_url,
            "MOVIEREC_MLFLOW_TRACKING_URI": mlflow_uri}  # fmt: skip
    resolved = resolve_secrets(None, {"SESSION_PASSWORD": PASSWORD, **urls}, extra_names=list(urls))
    engine = FakeEngine()
    deployer, out = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(resolved)
    container = engine.containers["movierec"]
    for name, url in urls.items():
        assert container.secret(name) == url
    shown = f"{container.env} {container.argv} {out.getvalue()}"
    assert all(password not in shown for password in ("pg-pass-word", "redis-pass-word", "mlflow-pass-word"))
    assert engine.env_file_paths == []  # no plain setting: nothing went through the env file
    settings = service_settings(engine, monkeypatch)
    assert settings.mlflow_tracking_uri == mlflow_uri
    assert (settings.database_url, settings.redis_url) == (pg_url, redis_url)


@pytest.mark.parametrize("same", [True, False])
def test_a_secret_set_under_both_of_its_names_reaches_the_container_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same: bool
) -> None:
    """ADMIN_PASSWORD and MOVIEREC_ADMIN_PASSWORD both in the deployer's environment (both are
    passed on): as two files, the service refused to start ("both set") and the deployment
    failed with a crash-looping container. Only the name the service reads first is delivered,
    as when both were in its environment; a different value under the other name is warned of."""
    env = {
        "SESSION_PASSWORD": PASSWORD,
        "MOVIEREC_JWT_SECRET": "k" * 40,
        "ADMIN_PASSWORD": "adm-pw",
        "MOVIEREC_ADMIN_PASSWORD": "adm-pw" if same else "other-pw",
    }
    warnings: list[str] = []
    resolved = resolve_secrets(None, env, warn=warnings.append)
    assert [w for w in warnings if "MOVIEREC_ADMIN_PASSWORD" in w] == ([] if same else warnings)
    assert same or ("other-pw" not in warnings[0] and "adm-pw" not in warnings[0])
    engine = FakeEngine()
    deployer, _ = make_deployer(make_cfg(tmp_path), engine)
    deployer.deploy(resolved)
    settings = service_settings(engine, monkeypatch)
    assert settings.admin_password is not None
    assert settings.admin_password.get_secret_value() == "adm-pw"


def test_secret_files_that_cannot_be_written_leave_the_live_container_untouched(tmp_path: Path) -> None:
    """An OSError writing the files (--secrets-dir under a file, a full or read-only disk) once
    escaped after the live version was set aside and stopped, leaving the service down under its
    -previous name. The files are now written first: the live version is never stopped."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    engine = FakeEngine(containers={"movierec": FakeContainer("movierec:1.0", health="healthy")})
    deployer, _ = make_deployer(make_cfg(tmp_path, secrets_root=blocker / "secrets"), engine)
    with pytest.raises(DeployError, match="not-a-directory"):
        deployer.deploy(secrets_())
    assert set(engine.containers) == {"movierec"}
    assert engine.containers["movierec"].image == "movierec:1.0"
    assert engine.containers["movierec"].status == "running"
    assert not [call for call in engine.calls if call[0] in ("rename", "stop", "run")]


def test_a_secret_the_service_would_refuse_is_refused_before_the_live_container_stops(tmp_path: Path) -> None:
    """An empty ADMIN_PASSWORD fails the deployment with no outage: nothing is stopped, and the
    secrets directory holds no files for a container that never started."""
    engine = FakeEngine(containers={"movierec": FakeContainer("movierec:1.0", health="healthy")})
    cfg = make_cfg(tmp_path)
    deployer, _ = make_deployer(cfg, engine)
    secrets = secrets_()
    secrets.values["ADMIN_PASSWORD"] = ""
    with pytest.raises(DeployError, match="ADMIN_PASSWORD is set but empty"):
        deployer.deploy(secrets)
    assert engine.containers["movierec"].status == "running"
    assert not [call for call in engine.calls if call[0] in ("rename", "stop", "run")]
    assert not list(cfg.secrets_root.glob("*/deploy-*"))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--error-tolerance", "nan"), ("--error-tolerance", "-0.1"), ("--error-tolerance", "inf"),
        ("--health-timeout", "nan"), ("--health-timeout", "0"), ("--health-timeout", "-5"),
        ("--health-timeout", "soon"),
    ],
)  # fmt: skip
def test_a_tolerance_or_timeout_that_is_not_a_sane_number_is_a_usage_error(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A nan or negative --error-tolerance failed only inside `docker build`; a nan or negative
    --health-timeout only after the running version had been stopped, then rolled back."""
    from app.deploy import parse_args

    positional = ["movierec", "1.0", "model", "test_data.json"]
    with pytest.raises(SystemExit) as exited:
        parse_args([*positional, option, value])
    assert exited.value.code == 2
    assert option in capsys.readouterr().err
    assert parse_args([*positional, "--error-tolerance", "0", "--health-timeout", "30"]).health_timeout == 30


def test_a_directory_given_as_the_test_data_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TEST_DATA_FILE naming a directory (the bundle's, say) was copied into the build context and
    refused only by the accuracy test inside `docker build`, minutes later; it is a usage error now
    (with --no-build nothing is built and the file is not used, so it is not checked)."""
    from app.deploy import parse_args

    positional = ["movierec", "1.0", str(tmp_path), str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        parse_args(positional)
    assert exited.value.code == 2
    assert re.search(rf"TEST_DATA_FILE.*{re.escape(str(tmp_path))}.*directory", capsys.readouterr().err)
    assert parse_args([*positional, "--no-build"]).no_build
    (tmp_path / "test_data.json").write_text("{}")
    assert parse_args([*positional[:3], str(tmp_path / "test_data.json")]).test_data_file.is_file()
