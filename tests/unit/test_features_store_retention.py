"""Retention of the features store's snapshots: every build added a ``snapshot=<id>/`` folder
(four Parquet files of the whole training set) and none was ever removed, so the store grew
without bound. A build now keeps the newest ``MOVIEREC_FEATURES_KEEP_SNAPSHOTS`` complete ones
and removes older ones, never the one ``LATEST`` names, the one the service database serves, or
a folder of a build in progress."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.config import ConfigurationError, load_settings
from app.pipeline.features_store import FeatureStore, Snapshot
from app.pipeline.ingest import Ingested
from app.storage.db import Database
from app.storage.user_features import replace_user_features, user_features_snapshot

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LOGGER = "app.pipeline.features_store"


def _age(folder: Path, seconds: float = 7200) -> None:
    """Nothing written in ``folder`` for ``seconds``: as a snapshot of an earlier build is."""
    then = time.time() - seconds
    for path in (*folder.rglob("*"), folder):
        os.utime(path, (then, then))


def _build(store: FeatureStore, data: Any, db: Database, now: datetime, keep: int) -> Snapshot:
    """What `movierec features build` and the flow's features step do."""
    return store.load_into(db, Ingested(data), keep, now)[0]


def _aged_builds(store: FeatureStore, data: Any, db: Database, count: int, keep: int) -> list[Snapshot]:
    """``count`` builds a minute apart, each snapshot then aged as an earlier build's is."""
    built = []
    for i in range(count):
        built.append(_build(store, data, db, T0 + timedelta(minutes=i), keep=keep))
        _age(Path(store.root) / f"snapshot={built[-1].id}")
    return built


def _folders(root: Path) -> list[str]:
    return sorted(p.name.split("=", 1)[1] for p in root.glob("snapshot=*"))


def _removed(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("removed the features snapshot")
    ]


def test_a_build_keeps_the_newest_snapshots_and_removes_the_older_ones(
    synthetic_data: Any, sqlite_database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "features"
    store = FeatureStore(root)
    built = _aged_builds(store, synthetic_data, sqlite_database, 4, keep=3)
    assert _folders(root) == [s.id for s in built[1:]]  # the fourth build removed the first

    caplog.clear()  # the fourth build's removal is logged too when an earlier test left INFO on
    with caplog.at_level(logging.INFO, logger=LOGGER):
        newest = _build(store, synthetic_data, sqlite_database, T0 + timedelta(minutes=9), keep=3)
    ids = [s.id for s in built]
    assert _folders(root) == [ids[2], ids[3], newest.id]
    assert store.snapshots() == [ids[2], ids[3], newest.id] and store.latest() == newest.id
    # the history views read what is left
    history = store.sql("select distinct snapshot from users_history order by 1")["snapshot"].tolist()
    assert history == [ids[2], ids[3], newest.id]
    removed = _removed(caplog)
    assert len(removed) == 1 and ids[1] in removed[0] and "newest 3 kept" in removed[0], removed


def test_keep_zero_keeps_every_snapshot(
    synthetic_data: Any, sqlite_database: Database, tmp_path: Path
) -> None:
    root = tmp_path / "features"
    store = FeatureStore(root)
    built = _aged_builds(store, synthetic_data, sqlite_database, 3, keep=0)
    assert _folders(root) == [s.id for s in built]


def test_the_snapshot_the_service_database_serves_is_never_removed(
    synthetic_data: Any, sqlite_database: Database, tmp_path: Path
) -> None:
    """Another host's build (an object-store root locks per host) loaded an old snapshot into the
    database: the features API answers with its id, so its files stay."""
    root = tmp_path / "features"
    store = FeatureStore(root)
    first = _build(store, synthetic_data, sqlite_database, T0, keep=1)
    _age(root / f"snapshot={first.id}")
    with store.staged_snapshot(
        Ingested(synthetic_data),
        now=T0 + timedelta(minutes=1),
        keep=1,
        loaded=lambda: user_features_snapshot(sqlite_database)[0],
    ) as second:
        replace_user_features(sqlite_database, store.service_rows(second.id), second.id)
        # meanwhile, the other host's load of the first snapshot lands last
        replace_user_features(sqlite_database, store.service_rows(first.id), first.id)
    assert user_features_snapshot(sqlite_database)[0] == first.id
    assert _folders(root) == [first.id, second.id]
    # once the database serves another one, the first goes
    _age(root / f"snapshot={second.id}")
    third = _build(store, synthetic_data, sqlite_database, T0 + timedelta(minutes=2), keep=1)
    assert _folders(root) == [third.id]


def test_nothing_is_removed_when_the_database_cannot_say_what_it_serves(
    synthetic_data: Any, sqlite_database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "features"
    store = FeatureStore(root)
    first = _build(store, synthetic_data, sqlite_database, T0, keep=1)
    _age(root / f"snapshot={first.id}")

    def unreachable() -> str | None:
        raise ConnectionError("the database went away")

    with (
        caplog.at_level(logging.WARNING, logger=LOGGER),
        store.staged_snapshot(
            Ingested(synthetic_data), now=T0 + timedelta(minutes=1), keep=1, loaded=unreachable
        ) as second,
    ):
        replace_user_features(sqlite_database, store.service_rows(second.id), second.id)
    assert store.latest() == second.id  # the build succeeded
    assert _folders(root) == [first.id, second.id]
    assert any("the database went away" in r.getMessage() for r in caplog.records)


def test_folders_of_builds_in_progress_are_never_removed(
    synthetic_data: Any, sqlite_database: Database, tmp_path: Path
) -> None:
    """Retention leaves alone a folder still being written (no ``_meta.json``: the abandoned
    sweep's, after an hour), one staged by a build waiting to load and publish (newer than
    ``LATEST``), and a complete one something was written in lately (a concurrent build's,
    which its build removes itself)."""
    root = tmp_path / "features"
    store = FeatureStore(root)
    old = _build(store, synthetic_data, sqlite_database, T0, keep=3)
    _age(root / f"snapshot={old.id}")
    # complete and recently written, older than the next LATEST: a concurrent, superseded build's
    recent = store.stage_snapshot(Ingested(synthetic_data), now=T0 + timedelta(minutes=1))
    writing = root / "snapshot=20260301T120200000000-cafef00d"  # being written
    writing.mkdir()
    (writing / "users.parquet").write_bytes((root / f"snapshot={old.id}" / "users.parquet").read_bytes())
    published = _build(store, synthetic_data, sqlite_database, T0 + timedelta(minutes=3), keep=3)
    # staged (complete) after the publication below began: waiting for the lock to load it
    waiting = store.stage_snapshot(Ingested(synthetic_data), now=T0 + timedelta(minutes=30))
    _age(root / f"snapshot={waiting.id}")
    # another build publishes: the aged, complete snapshot newer than LATEST is not history
    later = store.stage_snapshot(Ingested(synthetic_data), now=T0 + timedelta(minutes=4))
    store.publish(later)
    _age(root / f"snapshot={published.id}")
    _age(writing)  # retention leaves it to the abandoned sweep, however old

    assert store.remove_old(2, protect=[later.id]) == [old.id]
    # the newest two up to LATEST are later's and published's, not waiting's
    assert _folders(root) == sorted(
        [recent.id, "20260301T120200000000-cafef00d", published.id, later.id, waiting.id]
    )


def test_features_build_keeps_the_configured_number_of_snapshots(
    make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.pipeline.commands as commands
    from app.cli import cli

    root = tmp_path / "features"
    settings = make_settings(features_root=str(root), features_keep_snapshots=2)
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    runner = CliRunner()
    for _ in range(3):
        result = runner.invoke(cli, ["features", "build"])
        assert result.exit_code == 0, result.output
        for folder in root.glob("snapshot=*"):
            _age(folder)
    store = FeatureStore(root)
    assert len(_folders(root)) == 2 and store.latest() == _folders(root)[-1]


def test_the_setting_defaults_to_five_and_refuses_a_negative_count(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().features_keep_snapshots == 5
    monkeypatch.setenv("MOVIEREC_FEATURES_KEEP_SNAPSHOTS", "-1")
    with pytest.raises(ConfigurationError, match="features_keep_snapshots"):
        load_settings()
