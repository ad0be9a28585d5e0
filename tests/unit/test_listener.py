"""app/listener.py: the HTTP port bound with TCP_NODELAY, handed to uwsgi as file descriptor 3.

Real sockets on loopback and a real ``python -m app.listener`` process; what uwsgi's HTTP router
does with the descriptor is tested in tests/integration/test_serving_uwsgi.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.listener import DEFAULT_HOST, DEFAULT_PORT, ListenerError, address_from_env, bind
from tests.helpers import free_port

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

# what uwsgi is given, seen from the inside: the descriptor's socket, and a connection accepted on it
INSPECT = """
import json, socket
listener = socket.socket(fileno=3)
client = socket.create_connection(listener.getsockname()[:2])
accepted, _ = listener.accept()
print(json.dumps({
    "listening": listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN),
    "address": listener.getsockname()[:2],
    "listener_nodelay": listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    "accepted_nodelay": accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
}))
"""


def _run(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MOVIEREC_")}
    return subprocess.run(
        [sys.executable, "-m", "app.listener", *command],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_defaults_are_every_interface_and_port_8000() -> None:
    assert address_from_env({}) == (DEFAULT_HOST, DEFAULT_PORT) == ("0.0.0.0", 8000)
    assert address_from_env({"MOVIEREC_HOST": " ", "MOVIEREC_PORT": ""}) == ("0.0.0.0", 8000)
    assert address_from_env({"MOVIEREC_HOST": "127.0.0.1", "MOVIEREC_PORT": " 5000 "}) == ("127.0.0.1", 5000)


@pytest.mark.parametrize("port", ["http", "80.5", "0", "-1", "65536"])
def test_a_port_that_is_not_one_is_refused(port: str) -> None:
    with pytest.raises(ListenerError, match="MOVIEREC_PORT"):
        address_from_env({"MOVIEREC_PORT": port})


def test_connections_accepted_on_the_socket_have_tcp_nodelay() -> None:
    with bind("127.0.0.1", 0) as listener:
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with socket.create_connection(listener.getsockname()) as client:
            accepted, _ = listener.accept()
            with client, accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_a_port_in_use_is_a_one_line_error_that_says_what_to_do() -> None:
    """A second `make run` said only "Address already in use": now also what to do about it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ListenerError) as refused:
            bind("127.0.0.1", port)
        assert str(refused.value) == (
            f"cannot listen on 127.0.0.1:{port}: Address already in use "
            "(another process listens there: stop it, or choose another port)"
        )


def test_a_host_that_is_not_an_address_is_refused() -> None:
    with pytest.raises(ListenerError, match=r"MOVIEREC_HOST 'no such host\.invalid'"):
        bind("no such host.invalid", 8000)


def test_the_command_runs_with_the_bound_socket_as_descriptor_3() -> None:
    port = free_port()
    done = _run({"MOVIEREC_HOST": "127.0.0.1", "MOVIEREC_PORT": str(port)}, sys.executable, "-c", INSPECT)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["listening"] == 1
    assert seen["address"] == ["127.0.0.1", port]
    assert seen["listener_nodelay"] == 1
    assert seen["accepted_nodelay"] == 1


def test_a_bad_setting_stops_before_the_command_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    done = _run({"MOVIEREC_PORT": "eighty"}, "touch", str(marker))
    assert done.returncode == 1
    assert done.stderr.strip() == "movierec: MOVIEREC_PORT must be a port number, got 'eighty'"
    assert not marker.exists()


def test_without_a_command_it_prints_its_usage() -> None:
    done = _run({})
    assert done.returncode == 2
    assert "usage: python -m app.listener COMMAND" in done.stderr
