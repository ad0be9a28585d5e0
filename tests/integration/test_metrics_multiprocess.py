"""Multiprocess metrics: two worker processes serve requests, a third answers the scrape with their sum.

This is what happens under uwsgi: every worker writes its own files in
PROMETHEUS_MULTIPROC_DIR, and whichever worker answers /metrics aggregates all of them,
including workers that have exited since (whose files were folded into an archive as they exited).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ADMIN_PASSWORD, JWT_SECRET, PROFILE, SESSION_PASSWORD

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

WORKER = """
import json, sys
from app import create_app
app = create_app()
client = app.test_client()
token = client.post("/api/login", json={"session_password": sys.argv[2]}).get_json()["access_token"]
headers = {"Authorization": f"Bearer {token}"}
for _ in range(int(sys.argv[1])):
    assert client.post("/api/recommend", json=json.loads(sys.argv[3]), headers=headers).status_code == 200
app.extensions["movierec"].recommendations.request_log.close()
"""

SCRAPER = """
from app import create_app
response = create_app().test_client().get("/metrics")
assert response.status_code == 200
print(response.get_data(as_text=True))
"""


def _run(code: str, args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_processes_write_one_scrape_aggregates(
    tmp_path: Path, model_store: Path, synthetic_data_dir: Path
) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "MOVIEREC_TESTING": "true",
        "SESSION_PASSWORD": SESSION_PASSWORD,
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "MOVIEREC_JWT_SECRET": JWT_SECRET,
        "ML_MODEL_PATH": str(model_store),
        "MOVIEREC_MODEL_DIR": str(model_store),
        "MOVIEREC_DATA_DIR": str(synthetic_data_dir),
        "MOVIEREC_DATABASE_URL": f"sqlite:///{tmp_path / 'mp.db'}",
        "MOVIEREC_FEEDBACK_JOURNAL_DIR": str(tmp_path / "feedback-journal"),
        "MOVIEREC_MONITOR_INTERVAL_SECONDS": "0",
        "MOVIEREC_LOG_LEVEL": "WARNING",
    }
    profile = json.dumps(PROFILE)
    _run(WORKER, ["3", SESSION_PASSWORD, profile], env)
    _run(WORKER, ["5", SESSION_PASSWORD, profile], env)
    # an exited worker's files are folded into one archive per type: recycled workers (max-requests,
    # reload-on-rss) no longer leave files that every scrape reads for ever
    assert sorted(p.name for p in multiproc.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]

    samples = {}
    for family in text_string_to_metric_families(_run(SCRAPER, [], env)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    recommend = (("endpoint", "/api/recommend"), ("method", "POST"), ("status", "200"))
    assert samples[("movierec_http_requests_total", recommend)] == 8
    assert samples[("movierec_http_request_duration_seconds_count", recommend)] == 8
    assert samples[("movierec_recommendations_total", (("strategy", "segment"),))] == 8
    assert samples[("movierec_model_calls_total", (("outcome", "ok"),))] == 8
    login = (("endpoint", "/api/login"), ("method", "POST"), ("status", "200"))
    assert samples[("movierec_http_requests_total", login)] == 2
    # the state series come from the scraping process
    assert any(name == "movierec_model_info" for name, _ in samples)
    served = next(dict(labels)["version"] for name, labels in samples if name == "movierec_model_info")
    assert samples[("movierec_breaker_state", (("model_version", served), ("state", "closed")))] == 1.0
