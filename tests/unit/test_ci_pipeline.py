"""bitbucket-pipelines.yml: the steps can run as written."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers import PG_ADMIN_URL

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PIPELINES: dict[str, Any] = yaml.safe_load((REPO / "bitbucket-pipelines.yml").read_text())


def _step(name: str) -> dict[str, Any]:
    steps = PIPELINES["definitions"]["steps"]
    return next(item["step"] for item in steps if item["step"]["name"].startswith(name))


def test_the_test_step_has_the_postgresql_and_redis_the_tests_use() -> None:
    """The unit and API tests run against PostgreSQL (tests/helpers.py PG_ADMIN_URL) and Redis on
    127.0.0.1; the step declared neither service, so every test that needs one was skipped in CI
    ("PostgreSQL is not reachable") and the job still passed."""
    step = _step("Unit and API tests")
    assert {"postgres", "redis"} <= set(step.get("services", []))
    services = PIPELINES["definitions"]["services"]
    url = urlsplit(PG_ADMIN_URL)
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    variables = postgres["variables"]
    assert variables["POSTGRES_HOST_AUTH_METHOD"] == "trust"  # the tests connect without a password
    assert variables["POSTGRES_DB"] == url.path.lstrip("/")
    assert variables.get("POSTGRES_USER", "postgres") == url.username
    assert url.hostname == "127.0.0.1" and (url.port or 5432) == 5432  # services listen on localhost
    assert services["redis"]["image"].startswith("redis:")
