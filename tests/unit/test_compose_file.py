"""docker-compose.yml: secrets reach the containers as files, and the scheduler can make every
api worker load the champion it promotes."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from app.compose_secrets import SECRET_NAMES
from app.exit_hooks import EXIT_SECONDS
from app.secret_files import FILE_SUFFIX, SECRET_VARIABLES
from tests.helpers import STOP_MARGIN_SECONDS, uwsgi_stop_seconds

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]  # type: ignore[type-arg]
SECRETS_MOUNT = "/run/secrets/"
# what the postgres image reads its password from, besides the service's own secret settings
SECRET_ENV = SECRET_VARIABLES | {"POSTGRES_PASSWORD"}
DATABASE = ("MOVIEREC_DATABASE_URL",)


def _environment(service: str) -> dict[str, str]:
    return SERVICES[service].get("environment") or {}


def _interpolated(value: str, environ: dict[str, str] | None = None) -> str:
    """``value`` as Compose reads it with ``environ`` set (``${NAME:-default}`` only)."""
    given = environ or {}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: given.get(m.group(1)) or m.group(2), value)


def test_the_api_can_write_its_reload_marker_into_the_model_store() -> None:
    mounts = [m for m in SERVICES["api"]["volumes"] if m.startswith("models:")]
    assert mounts == ["models:/var/lib/movierec/models"]  # not :ro (app/services/reload.py's marker)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_secret_is_a_value_in_a_containers_environment(service: str) -> None:
    """`docker inspect` and /proc/<pid>/environ show the environment: a secret variable there may
    only be emptied (the image's SQLite URL) or be a URL that carries no password (Redis's and
    MLflow's, on Compose's network only), never a password or a ${…} from the host."""
    environment = _environment(service)
    given = {name: value for name, value in environment.items() if name in SECRET_ENV and value}
    for name, value in given.items():
        url = urlsplit(value)
        assert url.scheme in {"redis", "http"} and url.password is None and url.username is None, name
    for value in environment.values():
        assert not any(f"${{{name}" in str(value) for name in SECRET_ENV)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_secret_file_variable_names_a_secret_mounted_into_that_container(service: str) -> None:
    files = {name: value for name, value in _environment(service).items() if name.endswith(FILE_SUFFIX)}
    mounted = set(SERVICES[service].get("secrets", []))
    for name, path in files.items():
        assert name.removesuffix(FILE_SUFFIX) in SECRET_ENV, name
        assert path.startswith(SECRETS_MOUNT) and path.removeprefix(SECRETS_MOUNT) in mounted, (name, path)
    assert mounted <= set(COMPOSE["secrets"])


@pytest.mark.parametrize(
    ("service", "variables"),
    [
        ("api", {"SESSION_PASSWORD", "MOVIEREC_JWT_SECRET", "MOVIEREC_ADMIN_PASSWORD", *DATABASE}),
        ("scheduler", {"MOVIEREC_ADMIN_PASSWORD", *DATABASE}),  # its admin login reloads the api
        ("bootstrap", {"MOVIEREC_DATABASE_URL"}),
        ("postgres", {"POSTGRES_PASSWORD"}),
    ],
)
def test_each_service_gets_the_secrets_it_needs_as_files(service: str, variables: set[str]) -> None:
    environment = _environment(service)
    assert {name + FILE_SUFFIX for name in variables} <= set(environment)


def test_the_secrets_are_the_files_make_compose_secrets_writes() -> None:
    declared = COMPOSE["secrets"]
    assert set(declared) == set(SECRET_NAMES)
    for name, secret in declared.items():
        assert secret == {"file": f"${{MOVIEREC_SECRETS_DIR:-./secrets}}/{name}"}


def test_the_secret_files_stay_out_of_git_and_of_the_build_context() -> None:
    assert "secrets" in (REPO / ".dockerignore").read_text().splitlines()
    assert "secrets/" in (REPO / ".gitignore").read_text().splitlines()


def test_the_api_container_outlives_a_request_of_harakiri_length_and_its_final_flush() -> None:
    """The stop grace (30 s) was uwsgi's harakiri (30 s), and so was uwsgi's worker-reload-mercy:
    a request still running at ``docker stop`` may take up to harakiri, then the worker flushes
    its buffered request-log rows (up to EXIT_SECONDS), and both uwsgi's SIGKILL at the end of
    its mercy and Docker's at the end of the grace came first. uwsgi now gives a stopping worker
    harakiri + the exit budget, and the container has longer than that to stop."""
    harakiri, mercy = uwsgi_stop_seconds()
    assert mercy > harakiri + EXIT_SECONDS, (harakiri, mercy, EXIT_SECONDS)
    grace = _interpolated(SERVICES["api"]["stop_grace_period"])
    assert isinstance(grace, str) and grace.endswith("s") and grace[:-1].isdigit(), grace
    assert int(grace[:-1]) >= mercy + STOP_MARGIN_SECONDS, (grace, mercy)


@pytest.mark.parametrize("environ", [{}, {"MOVIEREC_STOP_TIMEOUT_SECONDS": "145", "UWSGI_HARAKIRI": "120"}])
def test_the_api_is_told_its_stop_grace_and_harakiri_so_it_can_refuse_a_grace_too_short(
    environ: dict[str, str],
) -> None:
    """uwsgi's mercy follows UWSGI_HARAKIRI, and Compose cannot add: a raised harakiri needed the
    api's stop_grace_period raised by hand, and with the grace forgotten the api started and each
    stop SIGKILLed a slow request's final flush. Both now come from the environment (or .env),
    and the api is given the grace it has (MOVIEREC_STOP_TIMEOUT_SECONDS, in whole seconds) with
    the harakiri it runs with, and refuses to start on a grace its mercy does not fit
    (app/__init__.py; tests/integration/test_serving_uwsgi.py starts it so)."""
    api = SERVICES["api"]
    environment = {name: _interpolated(str(value), environ) for name, value in _environment("api").items()}
    grace = _interpolated(api["stop_grace_period"], environ)
    assert grace == environment["MOVIEREC_STOP_TIMEOUT_SECONDS"] + "s"
    assert environment["UWSGI_HARAKIRI"] == environ.get("UWSGI_HARAKIRI", str(uwsgi_stop_seconds()[0]))


def test_the_scheduler_has_time_to_report_a_flow_it_stops() -> None:
    """On SIGTERM the scheduler kills a running flow and marks its MLflow runs FAILED, a request
    per run to the tracking server; Compose's default grace (10 s) could SIGKILL it halfway,
    leaving runs RUNNING, which the skip check and the timings then count as unfinished work."""
    grace = SERVICES["scheduler"].get("stop_grace_period")
    assert isinstance(grace, str) and grace.endswith("s") and grace[:-1].isdigit(), grace
    assert int(grace[:-1]) >= 30, grace


ONE_SHOT = {"bootstrap"}  # runs once before the api and the scheduler, then exits 0


@pytest.mark.parametrize("service", sorted(set(SERVICES) - ONE_SHOT))
def test_every_long_running_service_starts_again_after_a_daemon_restart(service: str) -> None:
    """Docker does not start an ``on-failure`` container when the daemon starts (a host reboot, a
    Docker upgrade): the api had ``on-failure:5``, so after a reboot PostgreSQL, Redis, MLflow and
    the scheduler were back and the api was not, until someone ran ``docker compose up`` again. Its
    five retries also counted over the container's whole life (Docker never resets them): a fifth
    crash in a month, or five quick failed starts while PostgreSQL restarted, left it down for good."""
    assert SERVICES[service].get("restart") in {"always", "unless-stopped"}, SERVICES[service].get("restart")


def test_the_scheduler_runs_under_an_init_that_reaps_its_flows_orphans() -> None:
    """The scheduler kills a flow with its workers (a stop, the flow's timeout): the workers,
    orphaned, went to the container's pid 1, which was `movierec schedule` itself, and Python
    reaps no child it did not start, so their zombies stayed for the container's life. Docker's
    init (tini) is pid 1 now: it reaps them and passes SIGTERM on to the scheduler."""
    assert SERVICES["scheduler"].get("init") is True


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_container_s_log_is_rotated(service: str) -> None:
    """Compose set no log driver, so each container got the daemon's default, json-file, which keeps
    a container's whole log in one file for its life: the api writes a line per request at INFO
    (thousands a second under load), and the disk the volumes live on filled up. Each container
    now keeps a bounded log, as deploy-docker.py's json-file containers do."""
    logging = SERVICES[service].get("logging") or {}
    assert logging.get("driver") == "json-file", logging
    options = logging.get("options") or {}
    assert re.fullmatch(r"[1-9][0-9]*[kmg]", str(options.get("max-size"))), options
    assert str(options.get("max-file", "")).isdigit() and int(options["max-file"]) >= 2, options


@pytest.mark.parametrize("environ", [{}, {"MLFLOW_PORT": "5001"}])
def test_the_mlflow_ui_answers_on_the_host_port_mlflow_port_publishes(environ: dict[str, str]) -> None:
    """docs/docker.md gives the MLflow UI's host port as ``MLFLOW_PORT`` (5000). MLflow's server
    refuses a request whose ``Host`` header it was not told to allow ("Invalid Host header -
    possible DNS rebinding attack detected"), and ``--allowed-hosts`` named the ports 5000 and
    none other: with ``MLFLOW_PORT=5001`` the browser's ``Host: 127.0.0.1:5001`` was refused on
    every page. MLflow's own check, on the allow-list Compose gives it."""
    from mlflow.server.security_utils import is_allowed_host_header

    mlflow = SERVICES["mlflow"]
    published = [_interpolated(port, environ) for port in mlflow["ports"]]
    (host_port,) = {port.split(":")[-2] for port in published}
    (option,) = [arg for arg in mlflow["command"] if arg.startswith("--allowed-hosts=")]
    allowed = _interpolated(option.removeprefix("--allowed-hosts="), environ).split(",")
    assert host_port == environ.get("MLFLOW_PORT", "5000")
    # a browser on the published port, and the scheduler on Compose's network
    for host in (f"127.0.0.1:{host_port}", f"localhost:{host_port}", "mlflow:5000"):
        assert is_allowed_host_header(allowed, host), (host, allowed)
    assert not is_allowed_host_header(allowed, "attacker.example:5000")  # still an allow-list
