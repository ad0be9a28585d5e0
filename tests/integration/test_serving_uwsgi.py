"""Under uwsgi (the repository's uwsgi.ini): rows still buffered when workers stop are written."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.storage.db import make_engine
from app.storage.models import RecommendationRequest
from tests.helpers import PROFILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(connection: http.client.HTTPConnection, path: str, body: dict, token: str | None = None) -> tuple:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    connection.request("POST", path, body=json.dumps(body), headers=headers)
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_sigterm_flushes_every_acknowledged_id(
    tmp_path: Path, model_store: Path, synthetic_data_dir: Path
) -> None:
    port = _free_port()
    ini = tmp_path / "uwsgi.ini"
    lines = [line for line in (ROOT / "uwsgi.ini").read_text().splitlines() if "http11-socket" not in line]
    ini.write_text("\n".join([*lines, f"http11-socket = 127.0.0.1:{port}"]) + "\n")
    database = tmp_path / "served.db"
    password = secrets.token_urlsafe(12)
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
        "UWSGI_INI": str(ini),
        "SESSION_PASSWORD": password,
        "MOVIEREC_JWT_SECRET": secrets.token_urlsafe(48),
        "ML_MODEL_PATH": str(model_store),
        "MOVIEREC_MODEL_DIR": str(model_store),
        "MOVIEREC_DATA_DIR": str(synthetic_data_dir),
        "MOVIEREC_DATABASE_URL": f"sqlite:///{database}",
        "MOVIEREC_REQUEST_LOG_FLUSH_SECONDS": "60",  # nothing is written unless something forces it
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    server = subprocess.Popen(
        [str(ROOT / "scripts" / "start-uwsgi.sh")], cwd=ROOT, env=env,
        stdout=(tmp_path / "uwsgi.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "uwsgi.log").read_text()[-2000:]
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                status, body = _post(connection, "/api/login", {"session_password": password})
                break
            except OSError:
                assert time.monotonic() < deadline, "uwsgi did not answer"
                time.sleep(0.3)
        assert status == 200
        token = body["access_token"]
        ids = set()
        for index in range(40):  # several connections, so both workers serve some
            if index % 5 == 0:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status, body = _post(connection, "/api/recommend", PROFILE, token)
            assert status == 200
            ids.add(body["id"])
        connection.close()
        engine = make_engine(f"sqlite:///{database}")
        with engine.connect() as db:
            before = db.scalar(select(func.count()).select_from(RecommendationRequest))
        assert before < len(ids), "rows were written before the stop; the test would prove nothing"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    with engine.connect() as db:
        stored = set(db.scalars(select(RecommendationRequest.id)))
    engine.dispose()
    assert ids <= stored
