"""The containers' health checks (Dockerfile HEALTHCHECK, docker-compose.yml), run as Docker runs
them: inside a container that Docker may have given the client's proxy settings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _dockerfile_healthcheck() -> list[str]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    checks = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    assert checks == ["HEALTHCHECK NONE", checks[-1]], checks  # the pipeline's, then the server's
    commands = [checks[-1].split(" CMD ", 1)[1]]
    command = json.loads(commands[0])
    assert isinstance(command, list)  # exec form: no shell in the check
    return command


class _Health(BaseHTTPRequestHandler):
    status = 200
    body = b'{"status": "ok", "model_version": "20261206-v2"}'

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health/ready" else 404)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    _Health.status = 200
    _Health.body = b'{"status": "ok", "model_version": "20261206-v2"}'


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], port: int, **extra: str) -> subprocess.CompletedProcess[str]:
    """The command with the environment Docker gives a container behind a proxy: the client's
    ``proxies`` from ~/.docker/config.json, NO_PROXY in the CIDR form Docker's documentation shows."""
    proxy = f"http://127.0.0.1:{_closed_port()}"  # a proxy that cannot reach the container
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "MOVIEREC_PORT": str(port),
        "HTTP_PROXY": proxy,
        "http_proxy": proxy,
        "HTTPS_PROXY": proxy,
        "NO_PROXY": "127.0.0.0/8",
        "no_proxy": "127.0.0.0/8",
        **extra,
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_the_image_health_check_asks_the_container_itself_not_a_proxy(server: ThreadingHTTPServer) -> None:
    """Docker gives a container the proxy settings of the client's config.json, and Python's urllib
    does not read NO_PROXY's CIDR form (127.0.0.0/8, Docker's own example): the check asked the
    proxy for http://127.0.0.1:8000/health/ready, which the proxy cannot reach, so a healthy API
    was never `healthy` and deploy-docker.py rolled every deployment back."""
    result = _run(_dockerfile_healthcheck(), server.server_address[1])
    assert result.returncode == 0, result.stderr


def test_the_image_health_check_fails_when_the_service_is_not_ready(server: ThreadingHTTPServer) -> None:
    _Health.status = 503
    result = _run(_dockerfile_healthcheck(), server.server_address[1])
    assert result.returncode != 0
    assert "503" in result.stderr


def test_the_image_health_check_fails_when_nothing_listens() -> None:
    result = _run(_dockerfile_healthcheck(), _closed_port())
    assert result.returncode != 0


def test_the_check_deploy_docker_py_runs_requires_the_model_version_built(
    server: ThreadingHTTPServer,
) -> None:
    """deploy-docker.py runs it in the new container (app/deploy.py's MODEL_CHECK) once healthy."""
    from app.deploy import MODEL_CHECK

    port = server.server_address[1]
    assert _run([*MODEL_CHECK, "20261206-v2"], port).returncode == 0
    other = _run([*MODEL_CHECK, "20261101-v1"], port)
    assert other.returncode == 1
    assert "serves model '20261206-v2', not '20261101-v1'" in other.stderr
    _Health.body = b"not json"  # an answer that names no model is not the one expected
    assert "serves model None" in _run([*MODEL_CHECK, "20261206-v2"], port).stderr


def test_an_empty_port_setting_is_the_default_port_as_the_start_script_takes_it() -> None:
    """scripts/start-uwsgi.sh serves port 8000 when MOVIEREC_PORT is empty; the check asked ':'."""
    from app.healthcheck import default_url

    assert default_url({"MOVIEREC_PORT": ""}) == "http://127.0.0.1:8000/health/ready"
    assert default_url({"MOVIEREC_PORT": "8081"}) == "http://127.0.0.1:8081/health/ready"


def test_compose_checks_mlflow_with_the_same_probe(server: ThreadingHTTPServer) -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    test = services["mlflow"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    command, url = test[1:-1], test[-1]
    assert command == _dockerfile_healthcheck() and url == "http://127.0.0.1:5000/health", test
    port = server.server_address[1]
    assert _run([*command, f"http://127.0.0.1:{port}/health/ready"], port).returncode == 0
