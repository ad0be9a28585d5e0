"""Shared fixtures: synthetic data, a trained synthetic bundle, apps on SQLite and PostgreSQL.

Every API test builds its own app with ``make_app`` (a fresh database each time), the way
Flask's own tutorial does. PostgreSQL tests use a throw-away database on the local server
(127.0.0.1:5432, trust auth) and skip with a clear reason only when it is unreachable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ADMIN_PASSWORD, JWT_SECRET, LOCAL_REDIS_URL, PG_ADMIN_URL, SESSION_PASSWORD, login
from tests.synthetic import write_grouplens


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """A command run in-process (``pipeline run`` through click's runner) installs its SIGINT and
    SIGTERM handlers in the test process (app/pipeline/schedule.py stop_on_sigterm), and its stop
    flag would refuse every later flow: both are put back after each test."""
    import signal
    import sys

    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        if signal.getsignal(number) is not handler and handler is not None:
            signal.signal(number, handler)
    runner = sys.modules.get("app.pipeline.runner")
    if runner is not None:
        runner.STOPPING.clear()


@pytest.fixture(autouse=True)
def _database_outage_line_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's "database unavailable" ERROR is logged once per 30 s per process (a module-level
    LogEvery): a test that provoked it took the line from any test checking it within 30 s."""
    import sys

    errors = sys.modules.get("app.api.errors")
    if errors is not None:
        from app.monitoring.logs import LogEvery

        monkeypatch.setattr(errors, "_DATABASE_DOWN", LogEvery(errors._DATABASE_DOWN.seconds))


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_grouplens(tmp_path_factory.mktemp("ml-synthetic"))


@pytest.fixture(scope="session")
def synthetic_data(synthetic_data_dir: Path) -> Any:
    from app.recommender.data import load_directory

    return load_directory(synthetic_data_dir)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Any) -> Path:
    """A model store with one bundle trained on the synthetic data (fast candidates only)."""
    from app.recommender.training import train

    store = tmp_path_factory.mktemp("model-store")
    train(synthetic_data, store, ["most_rated", "most_liked", "segment_most_liked"], seeds=(0, 1))
    return store


@pytest.fixture(scope="session")
def personal_model_store(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Any) -> Path:
    """A model store whose served model knows users (personal top-N tables), plus its rating model."""
    from app.recommender.training import train

    store = tmp_path_factory.mktemp("personal-model-store")
    train(synthetic_data, store, ["most_liked"], seeds=(0,))
    return store


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Any]:
    """A migrated service database in a SQLite file of the test's own."""
    from app.storage.db import Database

    database = Database(f"sqlite:///{tmp_path / 'service.db'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    psycopg = pytest.importorskip("psycopg")
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def local_redis_url() -> str:
    """The machine's Redis (127.0.0.1:6379, database 0); skips with the reason when it does not answer."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(LOCAL_REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"Redis is not reachable on 127.0.0.1:6379: {exc}")
    return LOCAL_REDIS_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"movierec_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_admin_url.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_settings(tmp_path: Path, model_store: Path, synthetic_data_dir: Path) -> Callable[..., Any]:
    from app.config import Settings

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "testing": True,
            "session_password": SESSION_PASSWORD,
            "admin_password": ADMIN_PASSWORD,
            "jwt_secret": JWT_SECRET,
            "model_path": model_store,
            "model_dir": model_store,
            "data_dir": synthetic_data_dir,
            "database_url": f"sqlite:///{tmp_path / 'movierec.db'}",
            "feedback_journal_dir": tmp_path / "feedback-journal",
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def make_app(make_settings: Callable[..., Any], request: pytest.FixtureRequest) -> Callable[..., Any]:
    from app import create_app

    def factory(**overrides: Any) -> Any:
        app = create_app(make_settings(**overrides))
        # Stop its threads and write what its requests left pending while the test's database
        # exists: a finalizer added now runs before the teardown of every fixture set up earlier,
        # postgres_url's DROP DATABASE included (a fixture teardown here ran after it, and each
        # app with rows left then retried its final flush for 2 s, and again at exit for 10 s).
        request.node.addfinalizer(app.extensions["movierec"].close)
        return app

    return factory


@pytest.fixture
def app(make_app: Callable[..., Any]) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def auth_headers(client: Any) -> dict[str, str]:
    return login(client)


@pytest.fixture
def admin_headers(client: Any) -> dict[str, str]:
    return login(client, ADMIN_PASSWORD)
