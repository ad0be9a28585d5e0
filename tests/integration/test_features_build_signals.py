"""``movierec features build`` stopped by a real SIGTERM, as a real process (PostgreSQL database).

SIGTERM (a CI job's timeout, ``docker stop``, systemd) used to kill the build outright: the snapshot
it had staged stayed on disk until a build an hour later removed it, and one landing between the
database's commit and ``LATEST`` left the database serving a snapshot ``LATEST`` did not name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.synthetic import write_grouplens

pytestmark = pytest.mark.integration


def _movierec() -> str:
    return shutil.which("movierec", path=str(Path(sys.executable).parent)) or "movierec"


def _build(tmp_path: Path, database_url: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOVIEREC_")}
    env.update(
        MOVIEREC_DATABASE_URL=database_url,
        MOVIEREC_DATA_DIR=str(tmp_path / "data"),
        MOVIEREC_FEATURES_ROOT=str(tmp_path / "features"),
    )
    return subprocess.Popen(
        [_movierec(), "features", "build"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _folders(root: Path) -> list[str]:
    return sorted(p.name.split("=", 1)[1] for p in root.glob("snapshot=*"))


def _wait_staged(process: subprocess.Popen[str], root: Path) -> None:
    """Until the build has written a complete snapshot (it waits on what the test holds next)."""
    deadline = time.monotonic() + 60
    while not list(root.glob("snapshot=*/_meta.json")):
        assert process.poll() is None, process.communicate()[0][-2000:]
        assert time.monotonic() < deadline, "the build staged no snapshot"
        time.sleep(0.05)
    time.sleep(0.5)  # past the staging, into the wait


def _loaded(database_url: str) -> str | None:
    from app.storage.db import Database
    from app.storage.user_features import user_features_snapshot

    database = Database(database_url)
    try:
        return user_features_snapshot(database)[0]
    finally:
        database.dispose()


@contextmanager
def _stopped(process: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def upgraded(tmp_path: Path, postgres_url: str) -> str:
    from app.storage.db import Database

    write_grouplens(tmp_path / "data")
    database = Database(postgres_url)
    try:
        database.upgrade()
    finally:
        database.dispose()
    return postgres_url


def test_sigterm_while_a_build_waits_to_publish_removes_its_staged_snapshot(
    tmp_path: Path, upgraded: str
) -> None:
    """Another build publishing (the store's lock held): SIGTERM stops this one as Ctrl-C does, and
    the snapshot it staged is removed at once, not an hour later by a later build."""
    from app.durable import exclusive_lock

    root = tmp_path / "features"
    with exclusive_lock(root / ".publish.lock"):
        process = _build(tmp_path, upgraded)
        with _stopped(process):
            _wait_staged(process, root)
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=30)[0]
    assert process.returncode == 1, output[-2000:]  # Click's "Aborted!", as for Ctrl-C
    assert "Aborted!" in output
    assert _folders(root) == []
    assert not (root / "LATEST").exists()
    assert _loaded(upgraded) is None


def test_sigterm_while_a_build_loads_the_database_stops_it_once_latest_names_the_snapshot(
    tmp_path: Path, upgraded: str
) -> None:
    """SIGTERM during the load and publish (the load waits for the table, which the test holds) is
    honoured once ``LATEST`` names the snapshot the database was loaded with: stopped between the
    commit and ``LATEST``, the database served a snapshot ``LATEST`` did not name."""
    import psycopg

    root = tmp_path / "features"
    with psycopg.connect(upgraded) as holder:
        holder.execute("LOCK TABLE user_features IN ACCESS EXCLUSIVE MODE")
        process = _build(tmp_path, upgraded)
        with _stopped(process):
            _wait_staged(process, root)
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None, "stopped half-way through the load and publish"
            holder.rollback()  # the table free again: the load goes on
            output = process.communicate(timeout=60)[0]
    assert process.returncode == 1, output[-2000:]
    assert "Aborted!" in output
    latest = (root / "LATEST").read_text().strip()
    assert _folders(root) == [latest]
    assert _loaded(upgraded) == latest
