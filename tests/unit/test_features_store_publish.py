"""Two feature builds at once (the scheduler's flow and a manual `movierec features build`).

Each stages a snapshot, loads its users into the service database and moves ``LATEST``. The
build that started first but finished last published its older snapshot over the newer one,
and its load replaced the newer users in the database: the warehouse and the features API
went back in time, and the newer snapshot fell out of the ``*_history`` views.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.pipeline.features_store import FeatureStore, Snapshot, SnapshotSuperseded
from app.pipeline.ingest import Ingested
from app.storage.db import Database
from app.storage.user_features import replace_user_features, user_features_snapshot

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def database(sqlite_database: Database) -> Database:
    return sqlite_database


def _build(store: FeatureStore, data: Any, db: Database, now: datetime) -> Snapshot:
    """What `movierec features build` and the flow's features step do."""
    with store.staged_snapshot(Ingested(data), now=now) as snapshot:
        replace_user_features(db, store.service_rows(snapshot.id), snapshot.id)
    return snapshot


def _history(store: FeatureStore) -> list[str]:
    return store.sql("select distinct snapshot from users_history order by 1")["snapshot"].tolist()


def test_a_build_that_finishes_last_does_not_publish_its_older_snapshot(
    synthetic_data: Any, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bad interleaving, step by step: the first build stages, the second runs start to end,
    then the first goes on to load and publish."""
    root = tmp_path / "features"
    scheduled, manual = FeatureStore(root), FeatureStore(root)  # two processes on one root
    stage = scheduled.stage_snapshot
    overtaking: list[Snapshot] = []

    def staged_then_overtaken(ingested: Ingested, now: datetime | None = None) -> Snapshot:
        staged = stage(ingested, now)
        overtaking.append(_build(manual, synthetic_data, database, T0 + timedelta(minutes=1)))
        return staged

    monkeypatch.setattr(scheduled, "stage_snapshot", staged_then_overtaken)
    with pytest.raises(SnapshotSuperseded) as raised:
        _build(scheduled, synthetic_data, database, T0)
    newer = overtaking[0]
    assert raised.value.latest == newer.id and raised.value.snapshot.id < newer.id
    # LATEST, the database (the features API) and the warehouse all still name the newer one
    assert scheduled.latest() == newer.id
    assert user_features_snapshot(database) == (newer.id, len(synthetic_data.users))
    # the older snapshot was never published: removed, it is not history either
    assert scheduled.snapshots() == [newer.id] and _history(scheduled) == [newer.id]


def test_builds_load_and_publish_one_at_a_time(
    synthetic_data: Any, database: Database, tmp_path: Path
) -> None:
    """A build that staged a newer snapshot waits for the one loading the database to publish,
    instead of loading and publishing in between (its load then overwritten by the older one)."""
    root = tmp_path / "features"
    first, second = FeatureStore(root), FeatureStore(root)
    built: list[Snapshot] = []
    other = threading.Thread(
        target=lambda: built.append(_build(second, synthetic_data, database, T0 + timedelta(minutes=1)))
    )
    with first.staged_snapshot(Ingested(synthetic_data), now=T0) as older:
        replace_user_features(database, first.service_rows(older.id), older.id)
        other.start()
        other.join(timeout=3)
        # waits for this build's publish (without the lock it was done in milliseconds)
        assert other.is_alive() and first.latest() is None
    other.join(timeout=60)
    assert not other.is_alive() and built
    newer = built[0]
    assert first.latest() == newer.id
    assert user_features_snapshot(database)[0] == newer.id
    assert _history(first) == [older.id, newer.id]


def test_features_build_says_a_newer_snapshot_was_published_meanwhile(
    synthetic_data: Any, make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command neither moves LATEST back nor loads the database; it says what happened."""
    import app.pipeline.commands as commands
    from app.cli import cli

    root = tmp_path / "features"
    settings = make_settings(features_root=str(root))
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    runner = CliRunner()
    assert runner.invoke(cli, ["features", "build"]).exit_code == 0
    store = FeatureStore(root)
    loaded = store.latest()
    assert loaded is not None
    # another build, whose snapshot is newer than the one this build will stage, publishes first
    real_stage = FeatureStore.stage_snapshot
    overtaking: list[bool] = []

    def overtaken(self: FeatureStore, ingested: Ingested, now: datetime | None = None) -> Snapshot:
        staged = real_stage(self, ingested, now)
        if overtaking:  # the other build's own staging
            return staged
        overtaking.append(True)
        later = datetime.strptime(staged.id.split("-")[0], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
        FeatureStore(root).write_snapshot(ingested, now=later + timedelta(seconds=1))
        return staged

    monkeypatch.setattr(FeatureStore, "stage_snapshot", overtaken)
    result = runner.invoke(cli, ["features", "build"])
    assert result.exit_code == 0, result.output
    newer = store.latest()
    assert newer is not None and newer > loaded
    assert f"the newer snapshot {newer}" in result.output and "not published" in result.output
    assert store.snapshots() == [loaded, newer]
    db = Database(settings.sqlalchemy_url)
    try:  # this build loaded nothing: the database still holds the first build's users
        assert user_features_snapshot(db)[0] == loaded
    finally:
        db.dispose()


def test_a_publish_that_fails_after_the_database_load_keeps_the_snapshot_the_database_serves(
    synthetic_data: Any, database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LATEST`` could not be written (a full disk, an object store's failed put) after the
    service database had committed the new users: the build removed the snapshot as if it had
    never been loaded, and the features API went on serving a snapshot id whose Parquet files
    were gone (no `movierec sql`, no history, nothing to check its answers against)."""
    root = tmp_path / "features"
    store = FeatureStore(root)
    older = _build(store, synthetic_data, database, T0)

    def fail(snapshot: Snapshot) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "publish", fail)
    with pytest.raises(OSError, match="No space left"):
        _build(store, synthetic_data, database, T0 + timedelta(minutes=1))
    served, count = user_features_snapshot(database)
    assert served != older.id and count == len(synthetic_data.users)  # the load had committed
    # what the database serves is still in the store, readable by id; LATEST names the older one
    assert served in store.snapshots()
    assert len(store.read("users", served)) == count
    assert store.latest() == older.id
    # the next build publishes over it, and it is history: it was served
    monkeypatch.undo()
    newest = _build(store, synthetic_data, database, T0 + timedelta(minutes=2))
    assert _history(store) == [older.id, served, newest.id]


def test_a_latest_dated_ahead_by_a_clock_does_not_stop_every_later_build(
    synthetic_data: Any, database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Snapshot ids start with the time of their staging. A build on a machine whose clock was
    ahead (a VM started before its clock was synced, another host of an object-store root) named a
    snapshot dated ahead of every later build, and each of them was refused as "superseded: the
    newer snapshot ... was published meanwhile", though it was published before they started:
    none loaded the database or moved LATEST until the clock caught up, for as long as it was ahead.
    Superseded is a snapshot published while the build staged its own; one that was LATEST already
    is older than the build, whatever its id says."""
    root = tmp_path / "features"
    store = FeatureStore(root)
    ahead = _build(store, synthetic_data, database, T0 + timedelta(days=365))
    with caplog.at_level("WARNING", logger="app.pipeline.features_store"):
        later = _build(store, synthetic_data, database, T0)
    assert store.latest() == later.id
    assert user_features_snapshot(database) == (later.id, len(synthetic_data.users))
    assert store.sql("select count(*) as n from users")["n"].tolist() == [len(synthetic_data.users)]
    warned = [
        r.getMessage() for r in caplog.records if r.levelname == "WARNING" and ahead.id in r.getMessage()
    ]
    assert warned and "dated after" in warned[0], [r.getMessage() for r in caplog.records]
    # and the next build publishes after it, as usual
    assert _build(store, synthetic_data, database, T0 + timedelta(minutes=1)).id == store.latest()
