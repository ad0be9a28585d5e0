"""The workers' uwsgi socket (uwsgi.ini ``socket``), under the real server (scripts/start-uwsgi.sh).

The uwsgi protocol lets whoever reaches that socket set any request variable, and a request
carrying ``UWSGI_FILE`` makes a worker load that file as a new app: code run inside the
service, with its secrets. So no other user may reach the socket. An abstract Unix socket
(``@name``) has no permissions: any process in the network namespace could connect.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import struct
from pathlib import Path

import pytest

from tests.integration.test_serving_uwsgi import _uwsgi

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_BOUND = re.compile(r"uwsgi socket 0 bound to UNIX address (\S+) fd")


def _packet(variables: dict[str, str]) -> bytes:
    body = b"".join(
        struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
        for k, v in ((k.encode(), v.encode()) for k, v in variables.items())
    )
    return struct.pack("<BHB", 0, len(body), 0) + body


def _reach_as_nobody(address: str, payload: Path, marker: Path) -> None:
    """In a child process of uid/gid 65534: connect to the workers' socket and ask for ``payload``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(address.replace("@", "\0", 1) + ("\0" if address.startswith("@") else ""))
                sock.sendall(_packet({
                    "REQUEST_METHOD": "GET", "PATH_INFO": "/", "SCRIPT_NAME": "/x", "QUERY_STRING": "",
                    "SERVER_NAME": "x", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
                    "UWSGI_FILE": str(payload), "UWSGI_APPID": "x",
                }))  # fmt: skip
                while sock.recv(65536):
                    pass
        except OSError:
            code = 1
        os._exit(code)
    os.waitpid(pid, 0)


def test_no_other_user_can_reach_the_workers_socket(
    tmp_path: Path, model_store: Path, synthetic_data_dir: Path
) -> None:
    with _uwsgi(tmp_path, model_store, synthetic_data_dir, workers=1) as served:
        address = _BOUND.search(served.log.read_text(errors="replace"))
        assert address is not None, served.log.read_text()[-2000:]
        path = address.group(1)
        assert not path.startswith("@"), f"{path}: an abstract socket, open to every local process"
        sock = Path(path)
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0, oct(sock.stat().st_mode)
        assert sock.parent.stat().st_uid == os.getuid()
        assert stat.S_IMODE(sock.parent.stat().st_mode) & 0o077 == 0, oct(sock.parent.stat().st_mode)
        if os.getuid() != 0:
            return  # another user is needed for the rest
        # what another local user would do: a world-readable app file, loaded through the socket
        marker = tmp_path / "code-ran"
        payload = Path("/tmp") / f"movierec-test-payload-{os.getpid()}.py"
        payload.write_text(f"open({str(marker)!r}, 'w').write('ran')\napplication = None\n")
        payload.chmod(0o644)
        tmp_path.chmod(0o777)
        try:
            _reach_as_nobody(path, payload, marker)
        finally:
            payload.unlink()
        assert not marker.exists(), "another user ran code inside a worker"
        served.stop()
