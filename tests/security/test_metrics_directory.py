"""scripts/start-uwsgi.sh and PROMETHEUS_MULTIPROC_DIR: the metrics files are only ever this user's.

Every worker writes its counters to a file there and every scrape adds up whatever files it
finds, and the default is a fixed name in the shared /tmp (/tmp/movierec-prometheus-<port>). A
directory another user made, or may write to, lets that user swap the files (forged or
unreadable metrics, a service that fails at every request's count) — so it is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def _start(metrics_dir: Path, tmp_path: Path, model_store: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "MOVIEREC_HOST": "127.0.0.1",
        "MOVIEREC_PORT": str(free_port()),
        "SESSION_PASSWORD": "a session password",
        "MOVIEREC_JWT_SECRET": "j" * 48,
        "ML_MODEL_PATH": str(model_store),
        "MOVIEREC_DATABASE_URL": f"sqlite:///{tmp_path / 'served.db'}",
        "MOVIEREC_FEEDBACK_JOURNAL_DIR": str(tmp_path / "feedback-journal"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "UWSGI_PROCESSES": "1",
    }
    return subprocess.Popen(
        [str(ROOT / "scripts" / "start-uwsgi.sh")], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize("owner", ["others may write", "another user"])
def test_a_metrics_directory_others_control_is_refused(tmp_path: Path, model_store: Path, owner: str) -> None:
    metrics_dir = tmp_path / "movierec-prometheus"
    metrics_dir.mkdir()
    if owner == "others may write":
        metrics_dir.chmod(0o777)  # what `mkdir -m 777` by anyone leaves in /tmp
    elif os.getuid() == 0:
        os.chown(metrics_dir, 65534, 65534)
    else:
        pytest.skip("needs root to make a directory of another user")
    server = _start(metrics_dir, tmp_path, model_store)
    try:
        code = server.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
    assert code not in (None, 0), "the server started with metrics files another user controls"
    assert b"PROMETHEUS_MULTIPROC_DIR" in server.stderr.read()
    assert not list(metrics_dir.iterdir())


def test_each_port_gets_its_own_default_metrics_directory(tmp_path: Path) -> None:
    """With one fixed default (/tmp/movierec-prometheus), a second instance on the host emptied
    the first's metrics files at its start, and each /metrics then added up both instances'
    requests. The default is now one directory per port."""
    other = tmp_path / "movierec-prometheus-5001"
    other.mkdir(mode=0o700)
    (other / "counter_1.db").write_bytes(b"the other instance's counts")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp_path),
        "MOVIEREC_PORT": "5002",
        "MOVIEREC_HOST": "not-an-address.invalid",  # the listener stops before uwsgi starts
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run(
        [str(ROOT / "scripts" / "start-uwsgi.sh")], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert result.returncode == 1 and b"MOVIEREC_HOST" in result.stderr, result.stderr
    assert (tmp_path / "movierec-prometheus-5002").is_dir()
    assert (other / "counter_1.db").exists(), "starting on another port emptied this instance's metrics"
