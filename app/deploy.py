"""Build, run and health-check the API container: the logic behind ``deploy-docker.py``.

The seed's interface is kept (``IMAGE_NAME IMAGE_VERSION MODEL_FILE TEST_DATA_FILE
[SESSION_PASSWORD]``, ``--container-name``, ``--port-mapping``, ``--json-log``,
``--log-tag``) but the deployment is made safe:

* secrets never appear on a command line, in the image or in the container's configuration:
  each is a file (0440, read-only) in a private directory of the deploying user's state
  (``$XDG_STATE_HOME/movierec/secrets/<container>/``, ``--secrets-dir`` to move it), mounted
  read-only at ``/run/secrets``; the container's environment only says where
  (``SESSION_PASSWORD_FILE=/run/secrets/SESSION_PASSWORD``, app/secret_files.py). The
  directory lives as long as its container (restarts mount it again) and is removed with it.
  The password comes from ``$SESSION_PASSWORD`` or a prompt; the positional argument still
  works for compatibility, with a warning (argv is visible to every user).
* the image is built with the accuracy test inside (see the Dockerfile), so a regressed
  model never becomes a container;
* the container runs with ``--restart on-failure:5``, a 60 s stop timeout (time for uwsgi's
  graceful stop: :data:`STOP_TIMEOUT_SECONDS`) and the journald log driver (or json-file with
  rotation), and the script waits for Docker's health check to pass;
* the service's state outlives its container: the SQLite database and the feedback journal are
  named volumes (``<container>-db``, ``<container>-journal``, labelled
  ``org.movierec.container=<container>``) that each new version mounts again. Between the
  graceful stop of the live version and the start of the new one, the database is copied
  aside in its volume (SQLite's backup, in a one-off container of the new image): a new
  version may migrate the schema, which the previous one refuses to start on, so a rollback
  puts that snapshot back first; a successful deployment removes it. The database of a
  container deployed before the volumes is moved into its new volume first.
* on any failure it prints the errors found in the new container's log (the cause of a failed
  start can be a hundred lines back: with two workers, the second one's interrupted import
  and the restarted container's banner follow it) and its last log lines, removes what it created (the
  new container, and the image tag if it did not exist before) and brings the previously
  running version back.

``install-model`` (``python -m app.deploy install-model SRC STORE``) is the build-time half:
the Dockerfile uses it to turn ``MODEL_FILE`` (bundle dir, ``.tar.gz`` or ``model.pkl``)
into a validated model store at ``/model``.

Docker is driven through its CLI with argument lists (no shell); every call goes through a
:class:`Docker` object so the unit tests can check the commands and the failure handling
without a Docker engine, and the e2e tier runs the same code against a real one.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess  # nosec B404 - docker CLI with argument lists, never a shell
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from app import stop_signals
from app.number_options import bounded_number, whole_seconds
from app.secret_files import (
    FILE_SUFFIX,
    SECRET_SETTINGS,
    SECRET_VARIABLES,
    SecretFileError,
    private_directory,
    write_secret_file,
)

CONTAINER_PORT = 8000
DEFAULT_HEALTH_TIMEOUT = 180.0
RESTART_RETRIES = 5
STOP_TIMEOUT_SECONDS = 60
"""``docker stop`` grace: uwsgi stops gracefully (uwsgi.ini), letting the requests in flight finish
(up to ``harakiri``, 30 s) before each worker flushes (up to ``EXIT_SECONDS``, 10 s), all within
its ``worker-reload-mercy`` (45 s); then the master exits. It was 30 s, harakiri's own length:
Docker's SIGKILL raced a slow request's final flush of its buffered request-log rows. The same
as docker-compose.yml's ``stop_grace_period``; idle keep-alive clients hold no worker. A
container given a longer ``UWSGI_HARAKIRI`` gets longer: :func:`stop_timeout_seconds`."""
STOP_BEYOND_HARAKIRI_SECONDS = 25
"""uwsgi.ini's ``worker-reload-mercy`` is harakiri + 15 s; the master then needs time to exit (10 s)."""
LOG_TAIL_LINES = 60
LOG_SCAN_LINES = 5000
"""How far back a failed container's log is searched for errors (a failed start writes a few hundred)."""
MAX_LOG_ERRORS = 10
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)(?:: .*)?$")
"""The last line of a Python traceback (``app.config.ConfigurationError: ...``). An interrupted
import's ``KeyboardInterrupt`` (a sibling worker stopped because this one failed) is not an error."""
_NO_SUCH_IMAGE = re.compile(r"no such image|image not known|image not found", re.IGNORECASE)
"""How ``docker image inspect`` (Docker: "No such image: x", Podman: "image not known") says an
image is not there, as opposed to a daemon it could not ask. Not any "not found": a DOCKER_CONTEXT
this user has not ('context "prod": context not found') was read as a missing image."""
_NO_SUCH_CONTAINER = re.compile(r"no such (?:container|object)|no container with name", re.IGNORECASE)
"""How ``docker container inspect`` (Docker: "No such container: x", Podman: "no container with
name or ID ... found") says there is no such container."""
STAGING_PREFIX = ".deploy-"
CATALOGUE = "catalogue.csv"  # a lone model.pkl's movie titles, beside it (app.recommender.bundle)
SECRETS_MOUNT = "/run/secrets"
IMAGE_GID = 10001
"""The group of the image's ``movierec`` user (Dockerfile): a root deployer gives it the secret
files, so the container reads them with its own group and gets no other."""
SECRETS_PREFIX = "deploy-"
_CONTAINER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # Docker's rule: also a safe directory name
DATABASE_FILE = "/var/lib/movierec/db/movierec.db"
"""The image's SQLite database (Dockerfile: ``MOVIEREC_DATABASE_URL``)."""
IMAGE_SECRET_DEFAULTS = frozenset({"MOVIEREC_DATABASE_URL"})
"""The secret settings (app/secret_files.py) the image's environment sets (Dockerfile ``ENV``):
the database URL, to its SQLite file. Delivered as a file, such a name is also emptied."""
STATE_VOLUMES = (("db", str(PurePosixPath(DATABASE_FILE).parent)), ("journal", "/var/lib/movierec/journal"))
"""The service's state, each directory a named volume ``<container>-<suffix>``: the database and
the feedback journal (``MOVIEREC_FEEDBACK_JOURNAL_DIR``). Not all of /var/lib/movierec: the
models there come with each new image. An empty volume is filled from the image's directory,
owner (the image's ``movierec`` user) included, when it is first mounted."""
VOLUME_LABEL = "org.movierec.container"
ADOPT_MOUNT = "/run/movierec-adopt"
"""Where a pre-volume container's database, copied out of it, is mounted to be moved into the volume."""
SNAPSHOT_SUFFIX = ".pre-deploy"
"""The database's snapshot, beside it in its volume, while a new version starts."""
PASSTHROUGH_SECRETS = ("MOVIEREC_ADMIN_PASSWORD", "ADMIN_PASSWORD")
REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_CHECK = ("python", "-m", "app.healthcheck", "--model-version")
"""Run in the new container (``docker exec``) once it is healthy, with the version built: fails
unless its /health/ready names that model (app/healthcheck.py)."""
MAX_MANIFEST_BYTES = 1 << 20
IMAGE_INTERFACE = 1
"""What this deploy-docker.py asks of the image it builds, numbered: ``python -m app.healthcheck
--model-version`` (:data:`MODEL_CHECK`), ``python -m app.deploy database ...`` (the snapshot) and
the model stage's :data:`GATE_STARTED` line. Raise it when one of them changes so that an image
built from an older checkout cannot do what this one asks. A ``--context`` whose ``app/deploy.py``
names another number, or none (a checkout from before this number was named), is refused before
the build (:func:`check_context`)."""
_IMAGE_INTERFACE_LINE = re.compile(r"^IMAGE_INTERFACE = (\d+)$", re.MULTILINE)


class DeployError(RuntimeError):
    """The deployment failed; the message says what to do. The previous version is kept."""


def log_errors(text: str, limit: int = MAX_LOG_ERRORS) -> list[str]:
    """The distinct errors in a container's log, oldest first: Python exceptions' final lines
    and the app's JSON log lines at ERROR or CRITICAL (their message). At most ``limit``."""
    found: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        error = None
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                error = f"{record.get('logger', '')}: {record.get('message', '')}".lstrip(": ")
        elif _EXCEPTION_LINE.match(line):
            error = line
        if error and error not in found:
            found.append(error)
            if len(found) == limit:
                break
    return found


# --------------------------------------------------------------------------- docker CLI


Executor = Callable[[Sequence[str], bool, str | None], subprocess.CompletedProcess[str]]


def write_out(stream: TextIO, text: str) -> TextIO | None:
    """Write and flush ``text``; None when ``stream`` is gone (EPIPE: an SSH connection without a
    terminal dropped, the pipeline step stopped; EIO: a terminal closed). Whoever reads it gone,
    a deployment goes on to its end (the new version healthy, or the previous one back): the
    BrokenPipeError of its next line escaped the rollback and left the previous version stopped."""
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        return None
    return stream


def _execute(argv: Sequence[str], capture: bool, stdin: str | None) -> subprocess.CompletedProcess[str]:
    """Run a command; ``capture=False`` streams its output (stdout and stderr, as one) to our
    stdout as it comes, and keeps it too (docker build: the deployer reads the gate's verdict).

    A captured call runs in a session of its own: a terminal's Ctrl-C reaches deploy-docker.py,
    which decides (a first one ends the call under way, subprocess.run kills it; one during a
    rollback is held, :meth:`Deployer.interrupts_held`), not the docker rename, start or database
    restore of a rollback under way too. A streamed ``docker build`` still gets it, and stops."""
    if capture:
        return subprocess.run(  # nosec B603 - fixed executable, argument list
            list(argv), input=stdin, capture_output=True, text=True, check=False, start_new_session=True
        )
    lines: list[str] = []
    with subprocess.Popen(  # nosec B603 - fixed executable, argument list
        list(argv),
        stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        if stdin is not None and proc.stdin is not None:
            proc.stdin.write(stdin)
            proc.stdin.close()
        assert proc.stdout is not None
        echo: TextIO | None = sys.stdout
        for line in proc.stdout:
            echo = echo and write_out(echo, line)
            lines.append(line)
        returncode = proc.wait()
    return subprocess.CompletedProcess(list(argv), returncode, "".join(lines), "")


@dataclass
class Docker:
    """The docker CLI, one method per call this module makes."""

    binary: str = "docker"
    executor: Executor = _execute

    def __call__(
        self, *args: str, capture: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            return self.executor([self.binary, *args], capture, stdin)
        except OSError as exc:  # no docker CLI on this machine: a message, not a traceback
            raise DeployError(
                f"cannot run {self.binary!r}: {exc.strerror or exc}; is Docker installed? "
                "(choose the CLI with --docker or $DOCKER)"
            ) from None

    def image_id(self, ref: str) -> str | None:
        """The ID of the image ``ref`` names, or None when there is none. Any other failure (the
        daemon not running, a user who may not use its socket) is a :class:`DeployError` quoting
        docker: taken for "no such image", it was reported as a missing image (``--no-build``)."""
        result = self("image", "inspect", "--format", "{{.Id}}", ref)
        if result.returncode == 0:
            return result.stdout.strip() or None
        said = (result.stderr or "").strip()
        if _NO_SUCH_IMAGE.search(said):
            return None
        raise DeployError(
            f"cannot ask Docker about image {ref}: {said or f'docker exited {result.returncode}'} "
            "(is the Docker daemon running, and may this user use it?)"
        )

    def image_exists(self, ref: str) -> bool:
        return self.image_id(ref) is not None

    def container_state(self, name: str) -> ContainerState | None:
        """The container's state, or None when no container has that name. Any other failure (a
        daemon that did not answer) is a :class:`DeployError` quoting docker: taken for "none",
        the live version was not set aside, the new one's `docker run` failed on its name, and
        the rollback removed the container of that name, the live version."""
        result = self(
            "container", "inspect",
            "--format",
            "{{json .State}}\t{{.RestartCount}}\t{{.Config.Image}}\t{{json .Mounts}}"
            "\t{{json .Config.StopTimeout}}\t{{json .HostConfig.PortBindings}}",
            name,
        )  # fmt: skip
        if result.returncode != 0:
            said = (result.stderr or "").strip()
            if _NO_SUCH_CONTAINER.search(said):
                return None
            raise DeployError(
                f"cannot ask Docker about container {name}: {said or f'docker exited {result.returncode}'}"
            )
        state_json, restarts, image, mounts, stop_timeout, bindings = result.stdout.strip().split("\t")
        volumes = tuple(m["Name"] for m in json.loads(mounts) or [] if m.get("Type") == "volume")
        ports = tuple(
            int(b["HostPort"])
            for spec in (json.loads(bindings) or {}).values()
            for b in spec or []
            if str(b.get("HostPort", "")).isdigit()
        )
        return ContainerState.parse(
            json.loads(state_json), int(restarts), image, volumes, json.loads(stop_timeout), ports
        )

    def logs(self, name: str, tail: int = LOG_TAIL_LINES) -> str:
        """The last ``tail`` lines of the container's stdout, then of its stderr."""
        result = self("logs", "--tail", str(tail), name)
        return (result.stdout or "") + (result.stderr or "")


@dataclass(frozen=True)
class ContainerState:
    status: str  # created, running, restarting, exited, dead, ...
    running: bool
    exit_code: int
    health: str | None  # starting, healthy, unhealthy; None without a HEALTHCHECK
    restarts: int
    image: str
    error: str = ""
    volumes: tuple[str, ...] = ()  # the named volumes it mounts
    stop_timeout: int | None = None  # its `docker run --stop-timeout`; None when run without one
    ports: tuple[int, ...] = ()  # the host ports it publishes

    @property
    def up(self) -> bool:
        """Running or restarting: it must be stopped to free its name and port, and started on rollback."""
        return self.running or self.status == "restarting"

    @classmethod
    def parse(
        cls,
        state: Mapping[str, Any],
        restarts: int,
        image: str,
        volumes: tuple[str, ...] = (),
        stop_timeout: int | None = None,
        ports: tuple[int, ...] = (),
    ) -> ContainerState:
        health = state.get("Health") or {}
        return cls(
            status=str(state.get("Status", "")),
            running=bool(state.get("Running")),
            exit_code=int(state.get("ExitCode") or 0),
            health=health.get("Status"),
            restarts=restarts,
            image=image,
            error=str(state.get("Error") or ""),
            volumes=volumes,
            stop_timeout=stop_timeout,
            ports=ports,
        )


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class DeployConfig:
    image_name: str
    image_version: str
    model_file: Path
    test_data_file: Path
    container_name: str
    port_mapping: str = "80"
    json_log: bool = False
    log_tag: str | None = None
    context: Path = REPO_ROOT
    dockerfile: Path | None = None
    base_image: str | None = None
    error_tolerance: float | None = None
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    build: bool = True
    model_version: str | None = None  # the model the new container must serve (--model-version)
    secrets_root: Path = field(default_factory=lambda: default_secrets_root(os.environ))

    @property
    def image_ref(self) -> str:
        return f"{self.image_name}:{self.image_version}"

    @property
    def backup_name(self) -> str:
        return f"{self.container_name}-previous"

    @property
    def volumes(self) -> list[tuple[str, str]]:
        """(volume name, mount point) of each state directory: named after the container, so a
        redeployment under the same name mounts the same ones."""
        return [(f"{self.container_name}-{suffix}", target) for suffix, target in STATE_VOLUMES]

    @property
    def database_volume(self) -> str:
        return self.volumes[0][0]


def default_secrets_root(environ: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/movierec/secrets`` (``~/.local/state/...``): the deploying user's own state,
    which outlives a reboot (unlike /run/user) as the container does."""
    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "movierec" / "secrets"


def default_container_name(image_name: str) -> str:
    """The seed names the container after the image; Docker forbids '/' and ':' in names."""
    return image_name.rsplit("/", 1)[-1].split(":", 1)[0]


def publish_spec(port_mapping: str) -> str:
    """``-p`` value for ``[IP:]HOST_PORT``; the container always listens on CONTAINER_PORT. The IP is
    an address as ``docker run -p`` takes it (an IPv6 one in brackets or not, no zone): a host name
    passed here and failed the new container's ``docker run`` once the live version was stopped."""
    host, _, port = port_mapping.rpartition(":")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise DeployError(f"--port-mapping {port_mapping!r} must be PORT or IP:PORT")
    if not host:
        return f"{port}:{CONTAINER_PORT}"
    address = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        if "%" in address:  # Python takes an IPv6 zone (fe80::1%eth0), Docker does not
            raise ValueError(address)
        ipaddress.ip_address(address)
    except ValueError:
        raise DeployError(
            f"--port-mapping {port_mapping!r}: {host!r} is not an IP address (docker run -p takes no host "
            "name): give PORT or IP:PORT, e.g. 127.0.0.1:8000"
        ) from None
    return f"{host}:{port}:{CONTAINER_PORT}"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LISTENING_SOCKETS = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
"""This host's TCP sockets (Linux): read, not bound, so a port below 1024 is seen by any user."""


def host_has_address(address: str) -> bool:
    """Whether this host has the IP ``address`` (``docker run -p`` binds it: "cannot assign requested
    address" otherwise): port 0 bound on it, which needs no privilege. True when this cannot tell."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL
    return True


def host_port_taken(port_mapping: str, tables: Sequence[Path] = LISTENING_SOCKETS) -> bool:
    """Whether a process of this host listens on ``port_mapping``'s port where ``docker run -p`` would
    bind it (its IP, or every address without one; a listener on every address takes any), so that
    docker run cannot publish it ("address already in use"). False when this host does not say
    (no /proc/net/tcp: not Linux)."""
    host, _, port = port_mapping.rpartition(":")
    wanted = ipaddress.ip_address(host.removeprefix("[").removesuffix("]")) if host else None
    for table in tables:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:  # "sl local_address rem_address st ...", the address in hex, LISTEN is 0A
            fields = row.split()
            address, _, local_port = fields[1].partition(":")
            if fields[3] != "0A" or int(local_port, 16) != int(port):
                continue
            if _binds_collide(wanted, _proc_address(address)):
                return True
    return False


def _binds_collide(wanted: IPAddress | None, listener: IPAddress) -> bool:
    """Whether binding ``wanted`` (None: every address, as ``-p PORT`` binds) fails on a port
    ``listener`` listens on: either one on every address of the other's family, or the same one."""
    if wanted is None or listener.is_unspecified:
        return True
    if wanted.is_unspecified:  # 0.0.0.0 takes every IPv4 address; :: every address
        return wanted.version == 6 or listener.version == 4
    return listener == wanted


def _proc_address(text: str) -> IPAddress:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in hex, each in this host's byte order."""
    data = bytes.fromhex(text)
    if sys.byteorder == "little":
        data = b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))
    address = ipaddress.ip_address(data)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


# --------------------------------------------------------------------------- secrets


@dataclass
class Secrets:
    """What the container is given; never logged, never on argv.

    The service's secrets (app/secret_files.py) are delivered as files; any other name passed
    with ``--env`` is a plain setting (``MOVIEREC_LOG_LEVEL``), which the service reads only
    from its environment: it goes through a private env file, and ``docker inspect`` shows it.
    """

    values: dict[str, str] = field(default_factory=dict)
    generated_jwt_secret: bool = False

    @property
    def files(self) -> dict[str, str]:
        return {name: value for name, value in self.values.items() if name in SECRET_VARIABLES}

    @property
    def environment(self) -> dict[str, str]:
        return {name: value for name, value in self.values.items() if name not in SECRET_VARIABLES}


def resolve_secrets(
    positional_password: str | None,
    environ: Mapping[str, str],
    extra_names: Sequence[str] = (),
    prompt: Callable[[str], str] | None = None,
    warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Secrets:
    """Collect SESSION_PASSWORD (argv, env or prompt), the JWT secret and pass-through names."""
    password = environ.get("SESSION_PASSWORD") or ""
    if positional_password:
        warn(
            "warning: a password on the command line is visible to every user of this machine "
            "(ps, shell history); prefer SESSION_PASSWORD in the environment or the prompt"
        )
        password = positional_password
    if not password and prompt is not None:
        password = prompt("Session password for the API: ")
    if not password:
        raise DeployError(
            "no session password: set SESSION_PASSWORD, answer the prompt, or pass it positionally"
        )
    result = Secrets({"SESSION_PASSWORD": password})
    jwt_secret = environ.get("MOVIEREC_JWT_SECRET")
    if not jwt_secret:
        jwt_secret = secrets.token_urlsafe(48)
        result.generated_jwt_secret = True
    result.values["MOVIEREC_JWT_SECRET"] = jwt_secret
    for name in (*PASSTHROUGH_SECRETS, *extra_names):
        if name in environ:
            result.values[name] = environ[name]
        elif name in extra_names:
            raise DeployError(f"--env {name}: {name} is not set in this environment")
    # One file per secret: the service refuses a secret given as two files (ADMIN_PASSWORD_FILE
    # and MOVIEREC_ADMIN_PASSWORD_FILE). Deliver the name it reads first, as it read it from
    # its environment when both were there.
    for names in SECRET_SETTINGS.values():
        given = [name for name in names if name in result.values]
        for other in given[1:]:
            if result.values[other] != result.values[given[0]]:
                warn(f"warning: {given[0]} and {other} differ; the service is given {given[0]}")
            del result.values[other]
    return result


def _check_variable_name(name: str) -> None:
    if not name.replace("_", "").isalnum() or name[0].isdigit():
        raise DeployError(f"{name!r} is not a valid environment variable name")


@dataclass(frozen=True)
class SecretFiles:
    """One deployment's secret files: ``directory/<NAME>`` for each name, group ``gid``."""

    directory: Path
    names: tuple[str, ...]
    gid: int

    def run_args(self) -> list[str]:
        """Mount the directory read-only and say where each secret is. The files keep their host
        owner (bind mounts do), so the image's unprivileged user reads them through their group:
        its own (:data:`IMAGE_GID`) when a root deployer gave them that group, else the deploying
        user's, added to its groups. No ``--user`` change.

        A name the image's environment sets (:data:`IMAGE_SECRET_DEFAULTS`) is also set empty,
        which the service takes as unset: the image's value would otherwise be a second one
        beside the file, and the service refuses a secret given both ways."""
        args = ["--mount", f"type=bind,source={self.directory},target={SECRETS_MOUNT},readonly"]
        if self.gid != IMAGE_GID:
            args += ["--group-add", str(self.gid)]
        for name in self.names:
            if name in IMAGE_SECRET_DEFAULTS:
                args += ["--env", f"{name}="]
            args += ["--env", f"{name}{FILE_SUFFIX}={SECRETS_MOUNT}/{name}"]
        return args

    def remove(self) -> None:
        """This deployment's files, with the container they were for."""
        shutil.rmtree(self.directory, ignore_errors=True)
        with suppress(OSError):
            self.directory.parent.rmdir()  # only when no other deployment's files are left

    def remove_others(self) -> None:
        """The files of the containers this deployment replaced (they are removed by now)."""
        for sibling in self.directory.parent.iterdir():
            if sibling != self.directory and sibling.name.startswith(SECRETS_PREFIX):
                shutil.rmtree(sibling, ignore_errors=True)


def _private_directory(path: Path) -> None:
    """``path`` exists, is a directory (not a link) of this user, and only this user may enter it."""
    if not private_directory(path):
        raise DeployError(f"{path} must be a directory of yours (--secrets-dir to choose another)")


def check_container_name(name: str) -> None:
    if not _CONTAINER_NAME.match(name):
        raise DeployError(f"{name!r} is not a valid container name")


def check_secrets_root(root: Path) -> None:
    """A directory ``docker run --mount`` can bind: its comma-separated syntax takes no comma or quote."""
    if any(char in str(root) for char in ',"\n'):
        raise DeployError(f"--secrets-dir {root}: a path with a comma or a quote cannot be mounted")


def write_secret_files(root: Path, container_name: str, values: Mapping[str, str]) -> SecretFiles:
    """Write each secret to ``root/<container>/deploy-*/<NAME>`` (a new directory per deployment:
    a rolled-back container mounts its own again), mode 0440 with a trailing newline, which the
    service strips (app/secret_files.py). ``root`` and ``root/<container>`` are 0700: no other
    user of this machine can reach the files; in the container, its user reads them by group:
    as root the files are given the image user's group (:data:`IMAGE_GID`), else the container
    is given the deploying user's group (adding root's group 0 to it would give the service
    every file of the image that group 0 may read)."""
    check_container_name(container_name)
    for name, value in values.items():
        _check_variable_name(name)
        if not value:
            raise DeployError(f"{name} is set but empty: give it a value, or unset it")
    root = root.expanduser().absolute()
    check_secrets_root(root)
    try:
        return _write_secret_files(root, container_name, values)
    except OSError as exc:  # a DeployError, refused like every other deployment error
        raise DeployError(f"cannot write the secret files under {root} (--secrets-dir): {exc}") from exc
    except SecretFileError as exc:  # a value that is not UTF-8 text: nothing was left behind
        raise DeployError(str(exc)) from None


def _write_secret_files(root: Path, container_name: str, values: Mapping[str, str]) -> SecretFiles:
    _private_directory(root)
    _private_directory(root / container_name)
    directory = Path(tempfile.mkdtemp(prefix=SECRETS_PREFIX, dir=root / container_name))  # 0700
    image_group = os.geteuid() == 0  # root may give the files the image user's group
    try:
        for name, value in values.items():
            path = directory / name
            write_secret_file(path, value)
            if image_group:
                os.chown(path, -1, IMAGE_GID)
            path.chmod(0o440)  # read-only from now on, for us and the container's user (by group)
        if image_group:
            os.chown(directory, -1, IMAGE_GID)
        directory.chmod(0o710)  # the group may open the files it knows the names of, not list them
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return SecretFiles(directory, tuple(values), directory.stat().st_gid)


@contextmanager
def private_env_file(values: Mapping[str, str]) -> Iterator[Path]:
    """An env file readable by its owner only, in a private directory, deleted on exit."""
    for name, value in values.items():
        _check_variable_name(name)
        if "\n" in value or "\r" in value or "\0" in value:
            raise DeployError(f"the value of {name} contains a line break, which an env file cannot hold")
    directory = Path(tempfile.mkdtemp(prefix="movierec-deploy-"))  # mode 0700
    path = directory / "container.env"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(f"{name}={value}\n" for name, value in values.items())
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------- commands


def build_command(cfg: DeployConfig, model_rel: str, test_rel: str) -> list[str]:
    args = ["build", "--force-rm", "--tag", cfg.image_ref]
    if cfg.dockerfile is not None:
        args += ["--file", str(cfg.dockerfile)]
    args += ["--build-arg", f"MODEL_FILE={model_rel}", "--build-arg", f"MODEL_TEST_FILE={test_rel}"]
    if cfg.base_image:
        args += ["--build-arg", f"BASE_IMAGE={cfg.base_image}"]
    if cfg.error_tolerance is not None:
        args += ["--build-arg", f"ACCURACY_TOLERANCE={cfg.error_tolerance}"]
    return [*args, str(cfg.context)]


def stop_timeout_seconds(environment: Mapping[str, str]) -> int:
    """The container's stop timeout: :data:`STOP_TIMEOUT_SECONDS`, or longer when it is given a
    ``UWSGI_HARAKIRI`` (``--env``) that the fixed 60 s does not cover. uwsgi.ini moves the
    workers' mercy with harakiri; a fixed stop timeout let Docker's SIGKILL cut a slow request's
    final flush again. A harakiri of 0 (no limit) is refused, as the server refuses it."""
    value = environment.get("UWSGI_HARAKIRI")
    if value is None:
        return STOP_TIMEOUT_SECONDS
    harakiri = whole_seconds(value)
    if harakiri is None:
        raise DeployError(f"UWSGI_HARAKIRI must be a whole number of seconds, not {value!r}")
    if harakiri == 0:  # the server refuses it at its start (app/__init__.py): refused before a stop
        raise DeployError(
            "UWSGI_HARAKIRI=0 turns off uwsgi's request limit, which a production server needs (and "
            "leaves a stopping worker 15 s for its requests and final flush): set a number of seconds"
        )
    return max(STOP_TIMEOUT_SECONDS, harakiri + STOP_BEYOND_HARAKIRI_SECONDS)


def run_command(
    cfg: DeployConfig,
    secret_files: SecretFiles,
    env_file: Path | None = None,
    stop_timeout: int = STOP_TIMEOUT_SECONDS,
) -> list[str]:
    args = [
        "run", "--detach",
        "--name", cfg.container_name,
        "--restart", f"on-failure:{RESTART_RETRIES}",
        "--stop-timeout", str(stop_timeout),
        "--publish", publish_spec(cfg.port_mapping),
        *secret_files.run_args(),
        *volume_args(cfg.volumes),
        *(["--env-file", str(env_file)] if env_file is not None else []),
        "--label", f"org.movierec.deployed-by=deploy-docker.py {cfg.image_ref}",
    ]  # fmt: skip
    if cfg.json_log:
        args += ["--log-driver", "json-file", "--log-opt", "max-size=20m", "--log-opt", "max-file=5"]
    else:
        args += ["--log-driver", "journald"]
    args += ["--log-opt", f"tag={cfg.log_tag or cfg.container_name}"]
    return [*args, cfg.image_ref]


def volume_args(volumes: Sequence[tuple[str, str]]) -> list[str]:
    return [
        arg for name, target in volumes for arg in ("--mount", f"type=volume,source={name},target={target}")
    ]


def database_command(cfg: DeployConfig, action: str, *options: str) -> list[str]:
    """A one-off container of the new image, the database volume alone mounted, no network,
    running ``python -m app.deploy database ACTION`` (:func:`database_main`) as the image's user,
    who owns the files. ``options`` go to ``docker run``."""
    volume = cfg.volumes[:1]
    return [
        "run", "--rm", "--network", "none", *volume_args(volume), *options,
        cfg.image_ref, "python", "-m", "app.deploy", "database", action, DATABASE_FILE,
    ]  # fmt: skip


GATE_STARTED = "accuracy test: MODEL_FILE="
"""The line the Dockerfile's model stage echoes before it runs the accuracy test."""
_GATE_VERDICT = re.compile(r"^(?:#\d+ [\d.]+ )?(FAILED: |Error: |install-model: )(.*)$")
"""run_accuracy_tests.py's failure (FAILED: a score too low; Error: a model or test data that does
not load) or install-model's, as BuildKit (``#25 1.281 ...``) or the classic builder prints it."""


def build_verdict(output: str) -> str:
    """Why a failed ``docker build`` failed, for its last line: the accuracy test's verdict when
    the model stage got that far, else a pointer to the output."""
    lines = output.splitlines()
    started = next((i for i, line in enumerate(lines) if GATE_STARTED in line), None)
    if started is not None:
        for line in lines[started + 1 :]:
            match = _GATE_VERDICT.match(line.strip())
            if match is None:
                continue
            kind, detail = match.groups()
            if kind == "FAILED: ":
                # a score below another is glossed; a verdict of another kind (lists shorter than
                # k, whatever the score) says what failed in its own words
                gloss = " (the model scores below its test data's expected_score, or its floor_score)"
                return f"the accuracy test failed: {detail}{gloss if ' < ' in detail else ''}"
            return f"the model or its test data does not load: {detail}"
    return "see the output above"


def log_hint(cfg: DeployConfig) -> str:
    if cfg.json_log:
        return f"docker logs --follow {cfg.container_name}"
    return f"journalctl CONTAINER_NAME={cfg.container_name}   (follow: -f, structured: -o json)"


def model_kind(path: Path) -> str | None:
    """What a ``MODEL_FILE`` is, decided here for both deploy-docker.py (:func:`model_source`, before
    the build) and the Dockerfile's model stage (:func:`model_input`, inside it), in one order:
    ``"bundle"`` (a directory with ``manifest.json``), ``"store"`` (a directory whose
    ``latest/manifest.json`` names a bundle, as ``ML_MODEL_PATH`` takes it), ``"pickle-dir"`` (a
    directory holding a ``model.pkl``), ``"file"`` (a ``.tar.gz`` or a pickled model); None: none of
    them. The two decided it each in their own way, and disagreed: the stage built a directory
    holding a model.pkl that deploy-docker.py refused."""
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return "bundle"
        if (path / "latest" / "manifest.json").is_file():
            return "store"
        return "pickle-dir" if (path / "model.pkl").is_file() else None
    return "file" if path.is_file() else None


_NO_MODEL = (
    "is none of a bundle directory (manifest.json), a model store (latest/manifest.json), a directory "
    "holding a model.pkl, or a .tar.gz or model.pkl file"
)


def model_source(path: Path) -> Path:
    """What the image is built from for ``MODEL_FILE`` (:func:`model_kind`): a bundle or a file as it
    is; a model store as its latest bundle (the Dockerfile takes a store too, but one outside the
    context would be copied into it whole, every version); a directory holding a ``model.pkl`` as
    that ``model.pkl`` (refused until 2026-12-06). A ``model.pkl`` needs the ``catalogue.csv`` beside
    it (:func:`staged_in_context` brings the two). A path that does not exist is returned as it is:
    staging says so."""
    kind = model_kind(path)
    if kind == "store":
        return (path / "latest").resolve()
    if kind == "pickle-dir":
        return model_source(path / "model.pkl")
    if kind == "file":
        resolved = path.resolve()  # what staged_in_context copies, and judges by its name
        if not resolved.name.endswith((".tar.gz", ".tgz", ".pkl")):
            raise DeployError(
                f"MODEL_FILE {path} is neither a .tar.gz nor a .pkl file"
                + (f" (it links to {resolved})" if resolved.name != path.name else "")
                + f": the image takes any other file for a pickled model, built only as a model.pkl "
                f"with the {CATALOGUE} beside it, which is staged with a *.pkl: name it *.pkl"
            )
        if resolved.suffix == ".pkl" and not (resolved.parent / CATALOGUE).is_file():
            raise DeployError(
                f"MODEL_FILE {path} has no {CATALOGUE} beside it: a model.pkl takes its movies' titles "
                "from there, and an image has no data set to take them from"
            )
    if kind is None and path.is_dir():
        raise DeployError(
            f"MODEL_FILE {path} is a directory but neither a bundle (no manifest.json), a model store "
            "whose 'latest' names one, nor a directory holding a model.pkl"
        )
    return path


def model_input(given: Path, model_file: str, test_data: Path | None = None) -> tuple[Path, Path]:
    """The Dockerfile's model stage: the model to test and install, and its accuracy test data, from
    ``given`` (the build's copy of ``MODEL_FILE``: a directory's contents, or the file itself inside
    it), by :func:`model_kind`. The test data is ``test_data`` (``MODEL_TEST_FILE``) when given, else
    the model's own (a bundle's, a store's latest's, the one beside a model.pkl); a file has none."""
    kind = model_kind(given)
    own: Path | None
    if kind == "bundle":
        source, own = given, given / "test_data.json"
    elif kind == "store":
        source, own = given, given / "latest" / "test_data.json"
    elif kind == "pickle-dir":
        source, own = given / "model.pkl", given / "test_data.json"
    else:
        source, own = given / PurePosixPath(model_file).name, None
        if model_kind(source) != "file":
            raise DeployError(f"MODEL_FILE={model_file} {_NO_MODEL}")
    if test_data is not None:
        return source, test_data
    if own is None or not own.is_file():
        raise DeployError(
            f"MODEL_FILE={model_file} holds no test_data.json of its own: give its accuracy test data "
            "as MODEL_TEST_FILE"
        )
    return source, own


def model_input_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.deploy model-input",
        description="The Dockerfile's model stage: print the model to test and install, then its test "
        "data, one a line; or an 'Error: ' line (deploy-docker.py quotes it) and exit 1.",
    )
    parser.add_argument("given", type=Path, help="the build's copy of MODEL_FILE")
    parser.add_argument("model_file", help="MODEL_FILE as given to the build")
    parser.add_argument(
        "test_data", type=Path, nargs="?", default=None, help="MODEL_TEST_FILE's copy, if given"
    )
    args = parser.parse_args(argv)
    try:
        source, test_data = model_input(args.given, args.model_file, args.test_data)
    except DeployError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"{source}\n{test_data}")
    return 0


def check_context(context: Path) -> None:
    """The build context must be a checkout whose image this deploy-docker.py can drive: one of the
    same :data:`IMAGE_INTERFACE`. An older checkout's image failed the checks run in it only after
    the live version was stopped (its health check took ``--model-version`` for the URL: "does not
    serve model V ...: unhealthy: --model-version: not an http(s) URL"), then was rolled back."""
    source = context / "app" / "deploy.py"
    try:
        text = source.read_text(errors="replace")
    except FileNotFoundError:
        raise DeployError(
            f"--context {context} is not a movierec checkout: it has no app/deploy.py (the default "
            f"context is this deploy-docker.py's own checkout, {REPO_ROOT}). Nothing was built or deployed."
        ) from None
    except OSError as exc:
        raise DeployError(f"--context {context}: cannot read {source}: {exc.strerror or exc}") from None
    found = _IMAGE_INTERFACE_LINE.search(text)
    theirs = int(found.group(1)) if found else None
    if theirs == IMAGE_INTERFACE:
        return
    age = "older" if theirs is None or theirs < IMAGE_INTERFACE else "newer"
    raise DeployError(
        f"--context {context} is a checkout {age} than this deploy-docker.py ({REPO_ROOT}): the image it "
        "builds would not answer the checks this one runs in it (the served model's version, the "
        "database snapshot), and would be rolled back only after the running version was stopped. "
        f"Deploy it with its own {context / 'deploy-docker.py'}, or bring that checkout to this one's "
        "version. Nothing was built or deployed."
    )


def bundle_version(path: Path) -> str | None:
    """The version the manifest of the bundle ``path`` (a directory or a ``.tar.gz``, as
    :func:`model_source` gives it) names: the model the image is built with. None for a
    ``model.pkl``, an archive without a manifest or one that cannot be read: the build names
    those when it converts them. Standard library only (run by the server's python3)."""
    try:
        if path.is_dir():
            manifest = json.loads((path / "manifest.json").read_bytes())
        elif path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(path, "r:gz") as archive:
                found = [m for m in archive if m.isfile() and PurePosixPath(m.name).name == "manifest.json"]
                if len(found) != 1 or found[0].size > MAX_MANIFEST_BYTES:
                    return None
                member = archive.extractfile(found[0])
                if member is None:
                    return None
                manifest = json.loads(member.read())
        else:
            return None
    except (OSError, ValueError, tarfile.TarError):  # UnicodeDecodeError is a ValueError
        return None
    version = manifest.get("version") if isinstance(manifest, dict) else None
    return version if isinstance(version, str) and version else None


@contextmanager
def staged_in_context(paths: Sequence[Path], context: Path) -> Iterator[list[str]]:
    """Build-context-relative paths for the model files, copying them in when outside.

    ``docker build`` can only COPY from its context. Files already under the context's
    ``model/`` store are used in place; anything else is copied to a temporary
    ``model/.deploy-*`` directory (git-ignored with the rest of ``model/``), removed after.
    A ``*.pkl`` is always staged, as ``model.pkl`` in a directory of its own with the
    ``catalogue.csv`` beside it (its titles): the Dockerfile's COPY takes a file alone, and the
    contents of a directory.
    """
    context = context.resolve()
    store = context / "model"
    staging: Path | None = None
    rel: list[str] = []
    try:
        for path in paths:
            resolved = path.resolve()
            if not resolved.exists():
                raise DeployError(f"{path} does not exist")
            pickle = resolved.is_file() and resolved.suffix == ".pkl"
            if resolved.is_relative_to(store) and not resolved.name.startswith(STAGING_PREFIX) and not pickle:
                rel.append(resolved.relative_to(context).as_posix())  # model/latest -> model/<version>
                continue
            if staging is None:
                try:  # a link to a volume not mounted here, a checkout this user may not write
                    store.mkdir(exist_ok=True)
                    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=store))
                    staging.chmod(0o755)
                except OSError as exc:
                    raise DeployError(
                        f"cannot stage {path} in the build context's {store} (docker build copies only "
                        f"from its context): {_copy_problem(exc)}"
                    ) from None
            target = staging / f"{len(rel)}-{resolved.name}"
            try:
                if resolved.is_dir():
                    shutil.copytree(resolved, target)
                elif pickle:
                    target.mkdir()
                    shutil.copy2(resolved, target / "model.pkl")
                    if (resolved.parent / CATALOGUE).is_file():
                        shutil.copy2(resolved.parent / CATALOGUE, target / CATALOGUE)
                else:
                    shutil.copy2(resolved, target)
            except OSError as exc:  # unreadable, a dangling link in a bundle, a full disk
                problem = _copy_problem(exc)
                raise DeployError(f"cannot copy {path} into the build context: {problem}") from None
            rel.append(target.relative_to(context).as_posix())
        yield rel
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _copy_problem(exc: OSError) -> str:
    """What went wrong copying: shutil.copytree gathers (source, target, why) for each file."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        source, _, why = exc.args[0][0]
        more = len(exc.args[0]) - 1
        return f"{source}: {why}" + (f" (and {more} more)" if more else "")
    return f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)


# --------------------------------------------------------------------------- the deployment


@dataclass
class Deployer:
    cfg: DeployConfig
    docker: Docker
    out: TextIO | None = sys.stdout  # None once it is gone (write_out)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    poll_interval: float = 2.0
    set_aside: ContainerState | None = None  # the live version, once renamed to backup_name
    stop_issued: bool = False  # `docker stop` of the set-aside version was sent (it may still run)
    secret_files: SecretFiles | None = None  # the new container's, once written
    snapshot_taken: bool = False  # the database's snapshot is in its volume, to restore on rollback
    stop_timeout: int = STOP_TIMEOUT_SECONDS  # the new container's (the previous one's: its own, if longer)
    model_version: str | None = None  # the model the image was just built with, once known

    def say(self, message: str) -> None:
        self.write(f"[deploy] {message}")

    def write(self, text: str) -> None:
        self.out = self.out and write_out(self.out, text + "\n")

    def deploy(self, secrets_: Secrets) -> None:
        cfg = self.cfg
        self.stop_timeout = stop_timeout_seconds(secrets_.environment)  # refused before anything moves
        tagged_before = self.docker.image_id(cfg.image_ref)  # a rebuild moves the tag to the new image
        self.check_port()
        image_existed = tagged_before is not None
        self.model_version = cfg.model_version
        if cfg.build:
            self.build()
        elif not image_existed:
            raise DeployError(f"image {cfg.image_ref} does not exist and --no-build was given")
        self.set_aside = None
        self.stop_issued = False
        self.secret_files = None
        self.snapshot_taken = False
        name_free = False  # the live version no longer holds cfg.container_name
        try:
            # before the live version is touched: a secret that cannot be delivered (a bad name,
            # an empty value, an unwritable --secrets-dir) is refused with nothing stopped
            self.secret_files = write_secret_files(cfg.secrets_root, cfg.container_name, secrets_.files)
            self.create_volumes()
            # inside the try: an interruption (or a failed `docker stop`) after the live version
            # was renamed must bring it back, not leave it stopped under its -previous name
            self.set_previous_aside()
            name_free = True
            self.adopt_database()
            self.snapshot_database()  # nothing writes to it now: the live version is stopped
            self.start(secrets_)
            self.wait_healthy()
            self.check_model_version()
        except (DeployError, KeyboardInterrupt) as exc:
            # Ctrl-C (or SIGTERM or SIGHUP, see main) while waiting for the health check is rolled back
            # too: the previous version is stopped by now and would otherwise stay down.
            with self.interrupts_held():  # a second Ctrl-C must not stop the rollback half-way
                # said with them held: to an output not read (a full SSH window), this line waits
                self.say(f"FAILED: {exc}" if isinstance(exc, DeployError) else "interrupted; rolling back")
                if name_free:  # else the container of that name may still be the live version
                    self.print_logs()
                    self.remove_new(remove_image=cfg.build and not image_existed)
                else:
                    if self.secret_files is not None:  # written for a container that never started
                        self.secret_files.remove()
                    if cfg.build and not image_existed:  # built for a deployment that never ran it
                        self.remove(f"the new image {cfg.image_ref}", "rmi", cfg.image_ref)
                if cfg.build and tagged_before is not None:
                    self.restore_tag(tagged_before)
                restarted = self.restore_previous(self.set_aside)
            if restarted is not None:  # running again: waiting for its health check may be cut short
                self._wait_restored(restarted)
            raise
        previous = self.set_aside
        if previous is not None:
            self.remove(f"the previous container ({previous.image})", "rm", "--force", cfg.backup_name)
        self.discard_snapshot()
        if self.secret_files is not None:
            self.secret_files.remove_others()
            self.say(f"its secrets are files in {self.secret_files.directory} (read-only at {SECRETS_MOUNT})")
        if secrets_.generated_jwt_secret:
            self.say(
                "generated a new JWT secret (MOVIEREC_JWT_SECRET was not set): earlier tokens are invalid"
            )
        self.say(
            f"{cfg.container_name} is healthy, serving {cfg.image_ref} on {publish_spec(cfg.port_mapping)}"
        )
        self.say(f"read its logs with: {log_hint(cfg)}")

    def check_port(self) -> None:
        """The IP must be this host's, and the port free or the running version's (freed when it is
        set aside): a port another process held, or an IP of another host, failed the new
        container's ``docker run`` after the build and after the running version was stopped,
        which was then started again."""
        cfg = self.cfg
        publish_spec(cfg.port_mapping)  # an IP this check can read, or a DeployError
        host, _, port_text = cfg.port_mapping.rpartition(":")
        address = host.removeprefix("[").removesuffix("]")
        if address and not host_has_address(address):
            raise DeployError(
                f"--port-mapping {cfg.port_mapping}: {address} is not an address of this host, so docker run "
                "could not publish the API on it. Nothing was built or stopped."
            )
        if not host_port_taken(cfg.port_mapping):
            return
        port = int(port_text)
        for name in (cfg.container_name, cfg.backup_name):
            state = self.docker.container_state(name)
            if state is not None and port in state.ports:
                return
        raise DeployError(
            f"host port {port} (--port-mapping {cfg.port_mapping}) is in use by another process, not by "
            f"{cfg.container_name}: docker run could not publish it. Free it or choose another "
            "--port-mapping. Nothing was built or stopped."
        )

    def build(self) -> None:
        cfg = self.cfg
        check_context(cfg.context)
        model = model_source(cfg.model_file)
        built = bundle_version(model)
        if cfg.model_version is not None and built is not None and built != cfg.model_version:
            raise DeployError(
                f"--model-version {cfg.model_version} is not the model {model} holds ({built}). "
                "Nothing was built or deployed."
            )
        store = model_kind(cfg.model_file) == "store"
        tested = f"{model}, {cfg.model_file}'s latest" if store else str(model)
        with staged_in_context([model, cfg.test_data_file], cfg.context) as (model_rel, test_rel):
            self.say(f"building {cfg.image_ref} (the accuracy test of {tested} runs inside the build)")
            result = self.docker(*build_command(cfg, model_rel, test_rel), capture=False)
        if result.returncode != 0:
            raise DeployError(
                f"building {cfg.image_ref} failed (exit {result.returncode}): "
                f"{build_verdict(result.stdout or '')}. Nothing was deployed."
            )
        self.model_version = built or cfg.model_version
        if self.model_version is None:
            self.say(
                f"{model} names no model version before the build converts it: the one served is not checked"
            )

    def set_previous_aside(self) -> None:
        """Rename (and stop) the live container so the new one can take its name and port; it is
        ``set_aside`` from the rename on, so an interruption at any later point restores it."""
        cfg = self.cfg
        current = self.docker.container_state(cfg.container_name)
        backup = self.docker.container_state(cfg.backup_name)
        if backup is not None:
            if current is None:  # an earlier deploy died half-way: its backup is the live version
                self.say(f"found {cfg.backup_name} from an interrupted deployment; restoring it first")
                self._checked("rename", cfg.backup_name, cfg.container_name)
                # it was stopped by that deployment, not by an operator: a rollback starts it again
                current = replace(backup, running=True)
            else:
                self.docker("rm", "--force", cfg.backup_name)
        if current is None:
            return
        self.say(
            f"setting the running version aside as {cfg.backup_name} ({current.image}, {current.status})"
        )
        self._checked("rename", cfg.container_name, cfg.backup_name)
        self.set_aside = current
        if current.up:
            self.stop_issued = True
            self._checked("stop", "--time", str(self._previous_stop_timeout()), cfg.backup_name)

    def _previous_stop_timeout(self) -> int:
        """How long the set-aside version may take to stop: the longer of its own stop timeout (a
        larger UWSGI_HARAKIRI when it was deployed) and the new one's (Docker's default, 10 s, for
        a container run without one). The new one's alone cut a slower version's requests in
        flight and its workers' final flush."""
        own = self.set_aside.stop_timeout if self.set_aside is not None else None
        return max(self.stop_timeout, own or 0)

    def create_volumes(self) -> None:
        """The state volumes, labelled as this deployment's (``docker run`` would create them
        unlabelled); those of an earlier deployment are kept as they are."""
        for name, target in self.cfg.volumes:
            if self.docker("volume", "inspect", "--format", "{{.Name}}", name).returncode == 0:
                continue
            self._checked(
                "volume", "create",
                "--label", f"{VOLUME_LABEL}={self.cfg.container_name}",
                "--label", f"org.movierec.mount-point={target}",
                name,
            )  # fmt: skip
            self.say(f"created volume {name} for {target}")

    def adopt_database(self) -> None:
        """A version deployed before the state volumes keeps its database in its own container:
        copy it (stopped by now, its journal shipped) into the volume, which the new version then
        mounts. A volume that already holds a database is not overwritten: which of the two is
        the one to keep is the operator's call (docs/docker.md)."""
        cfg, previous = self.cfg, self.set_aside
        if previous is None or cfg.database_volume in previous.volumes:
            return
        with tempfile.TemporaryDirectory(prefix="movierec-deploy-") as directory:
            copied = self.docker("cp", f"{cfg.backup_name}:{STATE_VOLUMES[0][1]}/.", directory)
            if copied.returncode != 0:
                raise DeployError(
                    f"could not copy the database out of {cfg.backup_name}: {copied.stderr.strip()}"
                )
            if not (Path(directory) / PurePosixPath(DATABASE_FILE).name).is_file():
                return  # it never stored anything
            if "," in directory:  # --mount's comma-separated syntax
                raise DeployError(f"{directory}: a temporary directory with a comma cannot be mounted")
            source = f"type=bind,source={directory},target={ADOPT_MOUNT},readonly"
            result = self.docker(*database_command(cfg, "adopt", "--user", "root", "--mount", source))
        if result.returncode != 0:
            raise DeployError(
                f"the database of {previous.image} (in its container, deployed before the state volumes) "
                f"could not be moved into volume {cfg.database_volume}: {result.stderr.strip()}"
            )
        self.say(
            f"moved the database of {previous.image} out of its container into volume {cfg.database_volume}"
        )

    def snapshot_database(self) -> None:
        """Copy the database aside in its volume before the new version may migrate its schema: a
        rollback puts it back (:meth:`restore_snapshot`), so the previous version finds the
        revision it knows. Failing, nothing was started: the deployment is rolled back."""
        result = self.docker(*database_command(self.cfg, "snapshot"))
        if result.returncode != 0:
            raise DeployError(
                f"the snapshot of the database in volume {self.cfg.database_volume} failed: "
                f"{result.stderr.strip()}"
            )
        self.snapshot_taken = result.stdout.startswith("saved")
        if self.snapshot_taken:
            self.say(
                f"took a snapshot of the database ({DATABASE_FILE}{SNAPSHOT_SUFFIX} "
                f"in volume {self.cfg.database_volume})"
            )

    def restore_snapshot(self) -> None:
        """The database as the previous version left it, whatever the new one did to it. The new
        container is removed by now (it wrote nothing after) and its image is still there."""
        if not self.snapshot_taken:
            return
        result = self.docker(*database_command(self.cfg, "restore"))
        if result.returncode != 0:
            command = " ".join(database_command(self.cfg, "restore"))
            self.say(
                f"could not restore the database snapshot: {result.stderr.strip()}; it is kept "
                f"({DATABASE_FILE}{SNAPSHOT_SUFFIX} in volume {self.cfg.database_volume}), and so is "
                f"{self.cfg.image_ref}: stop {self.cfg.container_name} and run: docker {command}"
            )
            return
        self.snapshot_taken = False
        self.say("restored the database snapshot taken before the new version started")

    def discard_snapshot(self) -> None:
        if not self.snapshot_taken:
            return
        result = self.docker(*database_command(self.cfg, "discard"))
        if result.returncode != 0:
            self.say(f"warning: could not remove the database snapshot: {result.stderr.strip()}")
            return
        self.snapshot_taken = False

    def start(self, secrets_: Secrets) -> None:
        assert self.secret_files is not None  # written by deploy() before the live version was stopped
        plain = secrets_.environment
        with private_env_file(plain) if plain else nullcontext() as env_file:
            result = self.docker(*run_command(self.cfg, self.secret_files, env_file, self.stop_timeout))
        if result.returncode != 0:
            raise DeployError(f"docker run failed: {result.stderr.strip()}")
        self.say(
            f"started {self.cfg.container_name} ({result.stdout.strip()[:12]}); waiting for its health check"
        )

    def wait_healthy(self) -> None:
        cfg = self.cfg
        deadline = self.clock() + cfg.health_timeout
        while True:
            state = self.docker.container_state(cfg.container_name)
            if state is None:
                raise DeployError(f"container {cfg.container_name} disappeared")
            if state.health is None:
                raise DeployError(f"{cfg.image_ref} has no HEALTHCHECK; cannot tell when it is ready")
            if state.health == "healthy":
                return
            if state.restarts > 0 or state.status in ("exited", "dead", "restarting"):
                what = f"restarted {state.restarts} time(s)" if state.restarts else "stopped"
                raise DeployError(
                    f"the container {what} while starting (status {state.status}, "
                    f"last exit code {state.exit_code}) {state.error}".rstrip()
                )
            if state.health == "unhealthy":
                raise DeployError("the container's health check failed")
            if self.clock() >= deadline:
                raise DeployError(f"not healthy after {cfg.health_timeout:.0f}s (health: {state.health})")
            self.sleep(self.poll_interval)

    def check_model_version(self) -> None:
        """Healthy is not enough: the new container must serve the model just built and tested (its
        /health/ready names it), not another one (an ``--env ML_MODEL_PATH``, an image whose tag
        was moved under the deployment)."""
        if self.model_version is None:
            return
        name = self.cfg.container_name
        which = "the one built and tested" if self.cfg.build else "the one given with --model-version"
        result = self.docker("exec", name, *MODEL_CHECK, self.model_version)
        if result.returncode != 0:
            why = (result.stderr or result.stdout).strip()
            raise DeployError(f"{name} does not serve model {self.model_version}, {which}: {why}")
        self.say(f"{name} serves model {self.model_version}, {which}")

    def print_logs(self) -> None:
        """The errors in the new container's log, then its last lines."""
        if self._state_in_rollback(self.cfg.container_name) is None:
            return
        errors = log_errors(self.docker.logs(self.cfg.container_name, tail=LOG_SCAN_LINES))
        if errors:
            self.say(f"errors in the log of {self.cfg.container_name}:")
            self.write("\n".join(f"  {line}" for line in errors))
        self.say(f"last {LOG_TAIL_LINES} log lines of {self.cfg.container_name}:")
        self.write(self.docker.logs(self.cfg.container_name).rstrip())

    def remove_new(self, remove_image: bool) -> None:
        self.remove("the new container", "rm", "--force", self.cfg.container_name)
        if self.secret_files is not None:
            self.secret_files.remove()
        self.restore_snapshot()  # in the new image, before it goes; kept if the restore failed
        if remove_image and not self.snapshot_taken:
            self.remove(f"the new image {self.cfg.image_ref}", "rmi", self.cfg.image_ref)

    def remove(self, what: str, *args: str) -> None:
        """Run a removal (``rm --force NAME``, ``rmi REF``) and say what Docker did: "removed WHAT",
        or a warning with its reason and the command to run. Its result was not read: a refusal (a
        daemon error, an image a container still uses) was said "removed" all the same. Never
        raises: a rollback goes on to its end, a successful deployment stays one. One that is not
        there (a rollback before the new container was made) is said so: the warning's command,
        ``docker rm --force NAME``, would have removed the previous version running under NAME again."""
        result = self.docker(*args)
        said = (result.stderr or "").strip() or f"docker exited {result.returncode}"
        missing = _NO_SUCH_CONTAINER if args[0] == "rm" else _NO_SUCH_IMAGE
        if result.returncode == 0:
            self.say(f"removed {what}")
        elif missing.search(said):
            self.say(f"no {what.removeprefix('the ')} to remove")
        else:
            self.say(f"warning: could not remove {what}: {said}; remove it with: docker {' '.join(args)}")

    def restore_tag(self, image_id: str) -> None:
        """A rebuilt tag whose deployment failed names the image it named before again (the
        previous version may run it), and the failed build goes: a later deployment of that tag
        gets what it got before. Not while a kept database snapshot needs the new image."""
        ref = self.cfg.image_ref
        try:
            built = self.docker.image_id(ref)
        except DeployError as exc:  # in a rollback: say so, and go on restoring the previous version
            self.say(f"warning: could not tell which image {ref} names: {exc}")
            return
        if built is None or built == image_id or self.snapshot_taken:
            return
        tagged = self.docker("tag", image_id, ref)
        if tagged.returncode != 0:  # in a rollback: say so, and go on restoring the previous version
            self.say(f"warning: could not tag {image_id[:19]} as {ref} again: {tagged.stderr.strip()}")
            return
        self.say(f"{ref} names {image_id[:19]} again, as before this deployment")
        removed = self.docker("rmi", built)  # refused, and kept, if something else still uses it
        if removed.returncode == 0:
            self.say(f"removed the new build {built[:19]}")
        else:
            self.say(f"kept the new build {built[:19]}: {(removed.stderr or '').strip()}")

    @contextmanager
    def interrupts_held(self) -> Iterator[None]:
        """Ctrl-C, SIGTERM and SIGHUP are said, not raised, while the rollback runs: a second one
        (the rollback seemed slow, a CI runner's second SIGTERM) ended it half-way, the previous version
        stopped under its -previous name and the database perhaps still the new version's."""

        def held(signum: int, frame: object) -> None:
            # A signal landing inside a write of ours (its reader not reading: a full SSH window, a
            # terminal paused by Ctrl-S) runs this inside it: writing to the same stream again is a
            # RuntimeError ("reentrant call"), which raised out of the rollback half-way. Then the
            # line is not said; the interrupt is held all the same.
            with suppress(RuntimeError):
                self.say(
                    f"still rolling back ({signal.Signals(signum).name} ignored): the previous version "
                    "is being brought back; stopping now would leave the service down"
                )

        with stop_signals.handled(held, keep_nohup=False):
            yield

    def restore_previous(self, previous: ContainerState | None) -> ContainerState | None:
        """Give the previous version its name back and start it if it ran; the state of the one
        started (whose health check :meth:`_wait_restored` waits for), else None."""
        cfg = self.cfg
        if previous is None:
            return None
        self._checked("rename", cfg.backup_name, cfg.container_name)
        if previous.up:
            if self.stop_issued:
                # An interrupted `docker stop` goes on in the daemon (the CLI only stopped waiting):
                # `docker start` on the still-stopping container is a no-op, and it exits right
                # after. Wait for that stop to end, then start.
                self._wait_stopped(cfg.container_name)
            self._checked("start", cfg.container_name)
            self.say(f"the previous version ({previous.image}) is running again as {cfg.container_name}")
            return previous
        self.say(f"the previous container ({previous.image}) is back as {cfg.container_name}")
        return None

    def _wait_restored(self, previous: ContainerState) -> None:
        """Wait for the restarted previous version's health check, and say how it came back: the
        command fails either way, but "the service is down" is not the same failure as "the new
        version was refused". At least the default health timeout: a short --health-timeout was
        chosen for the new version, and the health check runs only every 10 s."""
        name = self.cfg.container_name
        deadline = self.clock() + max(self.cfg.health_timeout, DEFAULT_HEALTH_TIMEOUT)
        while True:
            state = self._state_in_rollback(name)
            if state is not None and state.health is None:
                return  # no HEALTHCHECK to wait for (an image from before it had one)
            if state is not None and state.health == "healthy":
                self.say(f"the previous version ({previous.image}) is healthy again")
                return
            broken = state is None or not state.up or state.health == "unhealthy"
            if broken or self.clock() >= deadline:
                what = "gone" if state is None else f"status {state.status}, health {state.health}"
                self.say(
                    f"the previous version ({previous.image}) is NOT healthy again ({what}): the "
                    f"service is down; see its log: {log_hint(self.cfg)}"
                )
                return
            self.sleep(self.poll_interval)

    def _wait_stopped(self, name: str) -> None:
        """Wait for the set-aside version's interrupted stop (``name``) to end."""
        stop_timeout = self._previous_stop_timeout()
        deadline = self.clock() + stop_timeout + 10
        while True:
            state = self._state_in_rollback(name)
            if state is None or not state.up:
                return
            if self.clock() >= deadline:  # the daemon's stop is gone: stop it ourselves
                self._checked("stop", "--time", str(stop_timeout), name)
                return
            self.sleep(min(self.poll_interval, 1.0))

    def _state_in_rollback(self, name: str) -> ContainerState | None:
        """:meth:`Docker.container_state`, None when Docker could not be asked (said): a rollback
        goes on to its end."""
        try:
            return self.docker.container_state(name)
        except DeployError as exc:
            self.say(f"warning: {exc}")
            return None

    def _checked(self, *args: str) -> None:
        result = self.docker(*args)
        if result.returncode != 0:
            raise DeployError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")


# --------------------------------------------------------------------------- smoke test


@dataclass(frozen=True)
class SmokeResult:
    recommendations: list[str]
    request_id: str
    ready: dict[str, Any]


def _post_json(
    opener: urllib.request.OpenerDirector,
    url: str,
    body: Mapping[str, Any],
    token: str | None = None,
    timeout: float = 10.0,
) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # http(s) only: smoke_test checks the scheme before any request
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310
    # nosec B310 - http(s) only: smoke_test checks the scheme
    with opener.open(request, timeout=timeout) as response:  # nosec B310
        return json.loads(response.read().decode())


def smoke_test(
    base_url: str, password: str, timeout: float = 10.0, model_version: str | None = None
) -> SmokeResult:
    """The seed's curl sequence: readiness, login, recommend, score. Raises on any deviation,
    and, given ``model_version``, when /health/ready names another model (before anything is scored).

    A loopback URL (CI's ``http://127.0.0.1:8000``) is asked directly, as the container's health
    check asks it (app/healthcheck.py): through the environment's proxy (urlopen's, NO_PROXY's CIDR
    form unread) a healthy API failed with the proxy's "Connection refused". Another host is reached
    the way the environment says."""
    from app.healthcheck import direct_opener, is_loopback, served_model_version

    base = base_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise DeployError(f"smoke test URL must be http(s): {base_url}")
    opener = direct_opener() if is_loopback(base) else urllib.request.build_opener()
    try:
        with opener.open(f"{base}/health/ready", timeout=timeout) as response:  # nosec B310 - http(s), checked
            body = response.read()
        ready = json.loads(body.decode() or "{}")
        served = served_model_version(body)
        if model_version is not None and served != model_version:
            raise DeployError(f"{base} serves model {served!r}, not the {model_version!r} expected")
        token = _post_json(opener, f"{base}/api/login", {"session_password": password}, timeout=timeout)[
            "access_token"
        ]
        profile = {"age": 30, "gender": "M", "occupation": "programmer"}
        answer = _post_json(opener, f"{base}/api/recommend", profile, token, timeout)
        titles, request_id = answer["recommendations"], answer["id"]
        if not titles or not all(isinstance(t, str) and t for t in titles):
            raise DeployError(f"/api/recommend returned no titles: {answer}")
        scored = _post_json(
            opener,
            f"{base}/api/recommend/score",
            {"id": request_id, "movie": titles[0], "score": 5.0},
            token,
            timeout,
        )
        if scored != "Ok":
            raise DeployError(f'/api/recommend/score answered {scored!r}, expected "Ok"')
    except urllib.error.HTTPError as exc:
        raise DeployError(f"smoke test: {exc.url} answered {exc.code}: {exc.read()[:300]!r}") from exc
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        raise DeployError(f"smoke test against {base} failed: {exc!r}") from exc
    return SmokeResult(list(titles), str(request_id), ready if isinstance(ready, dict) else {})


def smoke_main(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.deploy smoke",
        description="Log in, get recommendations and score one against a running API "
        "(password from $SESSION_PASSWORD).",
    )
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--timeout", type=bounded_number(0, strict=True, unit="seconds"), default=10.0,
        help="seconds each request may take (> 0; default 10)",
    )  # fmt: skip
    parser.add_argument(
        "--model-version", default=None, metavar="VERSION",
        help="fail unless /health/ready names this model version (the one the image was built with)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    password = environ.get("SESSION_PASSWORD", "")
    if not password:
        print("smoke: SESSION_PASSWORD is not set", file=sys.stderr)
        return 2
    try:
        result = smoke_test(args.url, password, args.timeout, args.model_version)
    except DeployError as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"smoke: ok: model {result.ready.get('model_version')}, {len(result.recommendations)} "
          f"recommendations (first: {result.recommendations[0]!r}), id {result.request_id}, "
          "feedback accepted")  # fmt: skip
    return 0


# --------------------------------------------------------------------------- install-model


def install_model(source: Path | str, store: Path | str, test_data: Path | str | None = None) -> Path:
    """Validate a model artefact and install it as ``store/<version>`` + ``store/latest``.

    ``source`` is what ``ML_MODEL_PATH`` accepts: a bundle dir, a ``.tar.gz`` of one, or a
    seed-style ``model.pkl`` (converted to a bundle, with ``test_data`` as its test data).
    The installed store is then loaded the way the API loads it at start-up (ModelHolder,
    rating model included), so a model the server would refuse fails the image build, not
    the deployment.
    """
    from app.recommender.bundle import BundleError, load_bundle, point_latest, write_bundle

    source, store = Path(source), Path(store)
    # a model.pkl (a seed-style regressor too) ranks the movies of the catalogue.csv beside it: an
    # image has no data set
    bundle = load_bundle(source)
    store.mkdir(parents=True, exist_ok=True)
    if (bundle.path / "manifest.json").is_file() and bundle.path.is_dir():
        target = store / bundle.version
        if target.exists():
            raise BundleError(f"{target} already exists")
        shutil.copytree(bundle.path, target)
        point_latest(store, bundle.version)
    else:
        if bundle.model is None:
            raise BundleError(f"{source} holds no model to convert into a bundle")
        payload = json.loads(Path(test_data).read_text()) if test_data else {}
        manifest = {k: v for k, v in bundle.manifest.items() if k != "format"}
        target = write_bundle(store, bundle.model, bundle.catalogue, bundle.tables, manifest, payload)
    for path in [store, *store.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    from app.services.models import ModelHolder

    return ModelHolder(store).load().path


def install_model_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.deploy install-model", description=install_model.__doc__
    )
    parser.add_argument("source", type=Path)
    parser.add_argument("store", type=Path)
    parser.add_argument("--test-data", type=Path, default=None)
    args = parser.parse_args(argv)
    from app.recommender.bundle import BundleError

    try:
        path = install_model(args.source, args.store, args.test_data)
    except (BundleError, OSError, ValueError) as exc:
        print(f"install-model: {exc}", file=sys.stderr)
        return 1
    print(f"installed model {path.name} into {args.store} ({args.store / 'latest'} -> {path.name})")
    return 0


# --------------------------------------------------------------------------- database snapshot


def snapshot_path(database: Path) -> Path:
    return database.with_name(database.name + SNAPSHOT_SUFFIX)


def snapshot_database(database: Path) -> bool:
    """Copy ``database`` to its snapshot with SQLite's backup API, which includes what is
    committed but still in the WAL (a version that was killed, not stopped). False, and no
    snapshot, when there is no database yet."""
    import sqlite3

    target = snapshot_path(database)
    if not database.is_file():
        target.unlink(missing_ok=True)  # not this database's
        return False
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(partial)) as copy:
            source.backup(copy)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return True


def restore_database(database: Path) -> None:
    """Put the snapshot back as ``database``. The WAL and shared memory a newer version left
    (it was removed with ``docker rm --force``) go first: SQLite would replay that WAL on top."""
    snapshot = snapshot_path(database)
    if not snapshot.is_file():
        raise FileNotFoundError(errno.ENOENT, "no snapshot to restore", str(snapshot))
    partial = database.with_name(database.name + ".restoring")
    shutil.copyfile(snapshot, partial)
    for suffix in ("-wal", "-shm", "-journal"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    os.replace(partial, database)
    snapshot.unlink()


def adopt_database(database: Path, source_dir: Path) -> None:
    """Copy the database in ``source_dir`` (and its WAL, if any) to ``database``, owned like its
    directory: run as root, the copy is the service user's, as if it had written it. A database
    already there is not overwritten."""
    if database.exists():
        raise FileExistsError(
            errno.EEXIST, "the volume already holds a database: not overwritten", str(database)
        )
    owner = database.parent.stat()
    for suffix in ("-wal", ""):  # the database last: present means complete
        source = source_dir / (database.name + suffix)
        if not source.is_file():
            continue
        partial = database.with_name(database.name + suffix + ".partial")
        shutil.copyfile(source, partial)
        os.chown(partial, owner.st_uid, owner.st_gid)
        partial.chmod(0o640)
        os.replace(partial, database.with_name(database.name + suffix))


def database_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.deploy database",
        description="The database snapshot of a deployment: deploy-docker.py runs this in a one-off "
        "container of the new image, with the database volume mounted.",
    )
    parser.add_argument("action", choices=("snapshot", "restore", "discard", "adopt"))
    parser.add_argument("database", type=Path)
    parser.add_argument(
        "--source", type=Path, default=Path(ADOPT_MOUNT), help="adopt: the directory to copy from"
    )
    args = parser.parse_args(argv)
    import sqlite3

    database: Path = args.database
    try:
        if args.action == "snapshot":
            taken = snapshot_database(database)
            print(f"saved {snapshot_path(database)}" if taken else f"no database at {database}")
        elif args.action == "restore":
            restore_database(database)
            print(f"restored {database}")
        elif args.action == "adopt":
            adopt_database(database, args.source)
            print(f"moved the database into {database}")
        else:
            try:
                snapshot_path(database).unlink()
                print(f"removed {snapshot_path(database)}")
            except FileNotFoundError:  # what discard asks for: no snapshot, so no failure
                print(f"no snapshot at {snapshot_path(database)}: nothing to remove")
    except (OSError, sqlite3.Error) as exc:
        print(f"database {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy-docker.py",
        description="Build the API image (accuracy test inside), run it and wait until it is healthy.",
        epilog="The session password is read from $SESSION_PASSWORD or a prompt; MOVIEREC_JWT_SECRET "
        "and MOVIEREC_ADMIN_PASSWORD are passed on when set. Secrets reach the container as read-only "
        "files in /run/secrets (kept under --secrets-dir), never on the command line or in its "
        "environment.",
    )
    parser.add_argument("image_name", metavar="IMAGE_NAME")
    parser.add_argument("image_version", metavar="IMAGE_VERSION")
    parser.add_argument(
        "model_file",
        metavar="MODEL_FILE",
        type=Path,
        help="bundle dir, .tar.gz, model.pkl (its catalogue.csv beside it) or the directory holding it, "
        "or model store (its latest)",
    )
    parser.add_argument("test_data_file", metavar="TEST_DATA_FILE", type=Path)
    parser.add_argument(
        "session_password", metavar="SESSION_PASSWORD", nargs="?", default=None,
        help="deprecated (visible in ps): use $SESSION_PASSWORD or the prompt",
    )  # fmt: skip
    parser.add_argument("--container-name", default=None, help="default: the image name")
    parser.add_argument("--port-mapping", default="80", help="host [IP:]PORT for the API (default 80)")
    parser.add_argument("--json-log", action="store_true", help="json-file logs instead of journald")
    parser.add_argument("--log-tag", default=None, help="log tag (default: the container name)")
    parser.add_argument(
        "--context", type=Path, default=REPO_ROOT,
        help="build context: a checkout of this version (default: this one)",
    )  # fmt: skip
    parser.add_argument("--dockerfile", type=Path, default=None)
    parser.add_argument("--base-image", default=None, help="BASE_IMAGE build argument")
    # checked here: a nan or negative tolerance failed only inside `docker build`, a nan or
    # negative timeout after the old version was stopped (then rolled back)
    parser.add_argument(
        "--error-tolerance", type=bounded_number(0), default=None,
        help="accuracy test tolerance (a number >= 0)",
    )  # fmt: skip
    parser.add_argument(
        "--health-timeout", type=bounded_number(0, strict=True, unit="seconds"),
        default=DEFAULT_HEALTH_TIMEOUT,
        help=f"seconds to wait for the new container to be healthy (> 0; default {DEFAULT_HEALTH_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--env", dest="extra_env", action="append", default=[], metavar="NAME",
        help="also pass this variable from the environment (its value never on argv): as a secret file "
        "if the service reads it from one (e.g. MOVIEREC_METRICS_TOKEN, MOVIEREC_DATABASE_URL, "
        "MOVIEREC_MLFLOW_TRACKING_URI), else in its "
        "environment",
    )  # fmt: skip
    parser.add_argument(
        "--secrets-dir", type=Path, default=None, metavar="DIR",
        help="where the containers' secret files are kept (default: $XDG_STATE_HOME/movierec/secrets)",
    )  # fmt: skip
    parser.add_argument("--no-build", action="store_true", help="deploy an existing IMAGE_NAME:IMAGE_VERSION")
    parser.add_argument(
        "--model-version", default=None, metavar="VERSION",
        help="the model the new container must serve (default: MODEL_FILE's, when built here; "
        "with --no-build, none is checked without it)",
    )  # fmt: skip
    parser.add_argument("--docker", default=os.environ.get("DOCKER", "docker"), help="docker CLI to use")
    args = parser.parse_args(argv)
    # what Docker would refuse is a usage error now, not a failure after the build (minutes)
    checks: list[tuple[str, Callable[[], object]]] = [
        ("--port-mapping", lambda: publish_spec(args.port_mapping)),
        ("--container-name" if args.container_name else "IMAGE_NAME (choose with --container-name)",
         lambda: check_container_name(args.container_name or default_container_name(args.image_name))),
        ("--secrets-dir", lambda: check_secrets_root(
            (args.secrets_dir or default_secrets_root(os.environ)).expanduser().absolute())),
    ]  # fmt: skip
    if args.model_version is not None:  # an empty one (a pipeline's missing artifact) checks nothing
        checks.append(("--model-version", lambda: _a_model_version(args.model_version)))
    if not args.no_build:  # the accuracy test's data, refused inside the build otherwise
        checks.append(
            ("TEST_DATA_FILE", lambda: _not_a_directory(args.test_data_file, "the accuracy test's JSON"))
        )
    for option, check in checks:
        try:
            check()
        except DeployError as exc:
            parser.error(str(exc) if option in str(exc) else f"{option}: {exc}")
    return args


def _a_model_version(version: str) -> None:
    if not version.strip() or version != version.strip():
        raise DeployError(f"{version!r} is not a model version")


def _not_a_directory(path: Path, what: str) -> None:
    if path.is_dir():
        raise DeployError(f"{path} is a directory, not {what} file")


def config_from_args(args: argparse.Namespace) -> DeployConfig:
    return DeployConfig(
        image_name=args.image_name,
        image_version=args.image_version,
        model_file=args.model_file,
        test_data_file=args.test_data_file,
        container_name=args.container_name or default_container_name(args.image_name),
        port_mapping=args.port_mapping,
        json_log=args.json_log,
        log_tag=args.log_tag,
        context=args.context,
        dockerfile=args.dockerfile,
        base_image=args.base_image,
        error_tolerance=args.error_tolerance,
        health_timeout=args.health_timeout,
        build=not args.no_build,
        model_version=args.model_version,
        secrets_root=args.secrets_dir or default_secrets_root(os.environ),
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    environ = os.environ if environ is None else environ
    # SIGTERM (a CI job's timeout, systemd) and SIGHUP (the terminal or SSH session it ran in
    # closed) interrupt like Ctrl-C, so the deployment is rolled back instead of leaving the
    # previous version stopped under its -previous name. A SIGHUP ignored (nohup) stays ignored.
    with stop_signals.like_ctrl_c():
        try:
            cfg = config_from_args(args)
            prompt = getpass.getpass if sys.stdin.isatty() else None
            secrets_ = resolve_secrets(args.session_password, environ, args.extra_env, prompt)
            Deployer(cfg, Docker(args.docker)).deploy(secrets_)
        except DeployError as exc:
            write_out(sys.stderr, f"deploy-docker: {exc}\n")
            return 1
        except (KeyboardInterrupt, EOFError):
            write_out(sys.stderr, "deploy-docker: interrupted\n")
            return 130
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["install-model"]:
        sys.exit(install_model_main(sys.argv[2:]))
    if sys.argv[1:2] == ["model-input"]:
        sys.exit(model_input_main(sys.argv[2:]))
    if sys.argv[1:2] == ["smoke"]:
        sys.exit(smoke_main(sys.argv[2:]))
    if sys.argv[1:2] == ["database"]:
        sys.exit(database_main(sys.argv[2:]))
    sys.exit(main())
