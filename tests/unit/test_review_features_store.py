"""The features store's SQL history after a run that died while writing its snapshot."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.pipeline.features_store import FeatureStore
from app.pipeline.ingest import Ingested
from tests.helpers import record_fsyncs

pytestmark = pytest.mark.unit


def test_a_half_written_snapshot_is_not_history_and_breaks_no_query(
    synthetic_data: Any, tmp_path: Path
) -> None:
    root = tmp_path / "features"
    store = FeatureStore(root)
    done = store.write_snapshot(Ingested(synthetic_data), now=datetime(2026, 1, 1, tzinfo=UTC))
    # the next run was killed mid-write: users.parquet complete, items.parquet truncated, no _meta.json
    crashed = root / "snapshot=20260102T000000000000-deadbeef"
    crashed.mkdir()
    written = root / f"snapshot={done.id}"
    (crashed / "users.parquet").write_bytes((written / "users.parquet").read_bytes())
    (crashed / "items.parquet").write_bytes((written / "items.parquet").read_bytes()[:100])

    assert store.snapshots() == [done.id] and store.latest() == done.id
    history = store.sql("select snapshot, count(*) as n from users_history group by 1")
    assert history.to_dict("records") == [{"snapshot": done.id, "n": len(synthetic_data.users)}]
    assert store.sql("select count(*) as n from items_history")["n"].item() == len(synthetic_data.items)
    assert store.sql("select count(*) as n from users")["n"].item() == len(synthetic_data.users)


def test_a_failed_database_load_publishes_no_snapshot(
    make_settings: Any, make_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LATEST` names what the service database serves: a build whose load failed moves neither.

    It was written before the load, so after a failed one `movierec sql` answered from a
    snapshot the features API (reading the database) had never seen, until the next build.
    """
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    import app.storage.user_features as stored
    from app.cli import cli
    from tests.helpers import login

    root = tmp_path / "features"
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: make_settings(features_root=str(root)))
    runner = CliRunner()
    first = runner.invoke(cli, ["features", "build"])
    assert first.exit_code == 0, first.output
    store = FeatureStore(root)
    loaded = store.latest()
    assert loaded is not None

    def refused(*_: Any, **__: Any) -> int:
        raise RuntimeError("database went away")

    monkeypatch.setattr(stored, "replace_user_features", refused)
    failed = runner.invoke(cli, ["features", "build"])
    assert failed.exit_code != 0 and isinstance(failed.exception, RuntimeError)
    # the failed build removed the snapshot it had staged: never published, it would have been
    # history (the *_history views) as soon as a later build published a newer one
    assert [path.name for path in root.glob("snapshot=*")] == [f"snapshot={loaded}"]

    client = make_app(features_root=str(root)).test_client()
    answer = client.get("/api/users/1/features", headers=login(client)).get_json()
    assert answer["source"] == "feature_store"
    assert store.latest() == answer["snapshot_id"] == loaded
    # the warehouse's history stops at what LATEST names: the unloaded snapshot is not in it
    history = store.sql("select distinct snapshot from users_history")["snapshot"].tolist()
    assert history == [loaded]

    monkeypatch.undo()  # the database is back
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: make_settings(features_root=str(root)))
    assert runner.invoke(cli, ["features", "build"]).exit_code == 0
    history = store.sql("select distinct snapshot from users_history order by 1")["snapshot"].tolist()
    assert history == [loaded, store.latest()]


def test_the_snapshot_and_latest_are_synced_before_latest_names_them(
    synthetic_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LATEST` was written in place without fsync: a crash could leave it empty, or naming
    Parquet files still in the page cache."""
    synced = record_fsyncs(monkeypatch)
    root = tmp_path / "features"
    snapshot = FeatureStore(root).write_snapshot(
        Ingested(synthetic_data), now=datetime(2026, 1, 1, tzinfo=UTC)
    )
    directory = root / f"snapshot={snapshot.id}"
    files = [str(directory / f".{name}.partial") for name in ("users.parquet", "items.parquet", "_meta.json")]
    latest = synced.index(str(root / ".LATEST.partial"))
    assert all(name in synced[:latest] for name in files)
    assert str(root) in synced[latest:]  # the rename of LATEST itself
    assert (root / "LATEST").read_text() == snapshot.id


def test_snapshot_files_are_as_readable_as_the_umask_allows(synthetic_data: Any, tmp_path: Path) -> None:
    """Features are not secrets: the durable writes keep fsspec's modes (0666 less the umask),
    not the 0600 of the journals' acknowledged data, so an analyst's `movierec sql` can read them."""
    import os

    previous = os.umask(0o022)
    try:
        root = tmp_path / "features"
        snapshot = FeatureStore(root).write_snapshot(
            Ingested(synthetic_data), now=datetime(2026, 1, 1, tzinfo=UTC)
        )
    finally:
        os.umask(previous)
    directory = root / f"snapshot={snapshot.id}"
    for path in (root / "LATEST", directory / "_meta.json", *directory.glob("*.parquet")):
        assert path.stat().st_mode & 0o777 == 0o644, path


def _three_snapshots(store: FeatureStore, data: Any) -> list[str]:
    return [
        store.write_snapshot(Ingested(data), now=datetime(2026, 1, day, tzinfo=UTC)).id for day in (1, 2, 3)
    ]


def test_a_corrupt_old_snapshot_is_left_out_of_the_history_with_a_warning(
    synthetic_data: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One damaged old snapshot (a bad disk block, a truncated copy) made every query fail, even
    those over the current features, with an error naming its file."""
    root = tmp_path / "features"
    store = FeatureStore(root)
    oldest, damaged, latest = _three_snapshots(store, synthetic_data)
    users = root / f"snapshot={damaged}" / "users.parquet"
    users.write_bytes(users.read_bytes()[:200])

    with caplog.at_level(logging.WARNING, logger="app.pipeline.features_store"):
        assert store.sql("select count(*) as n from users")["n"].item() == len(synthetic_data.users)
        history = store.sql("select distinct snapshot from users_history order by 1")["snapshot"].tolist()
        # the whole snapshot is left out, so every *_history view covers the same snapshots
        items = store.sql("select distinct snapshot from items_history order by 1")["snapshot"].tolist()
    assert history == items == [oldest, latest]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one line per query, each over a connection of its own
    assert all(damaged in r.getMessage() and str(users) in r.getMessage() for r in warnings)

    from click.testing import CliRunner

    from app.cli import cli

    query = "select count(distinct snapshot) as n from users_history"
    result = CliRunner().invoke(cli, ["sql", "--root", str(root), "--format", "csv", query])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["n", "2"]
    assert f"features snapshot {damaged} left out of the *_history views" in result.stderr


def test_a_corrupt_latest_snapshot_is_a_clear_error(synthetic_data: Any, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from app.cli import cli

    root = tmp_path / "features"
    store = FeatureStore(root)
    latest = _three_snapshots(store, synthetic_data)[-1]
    items = root / f"snapshot={latest}" / "items.parquet"
    items.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=f"latest features snapshot {latest} is unreadable") as raised:
        store.sql("select count(*) from users")
    assert str(items) in str(raised.value) and "movierec features build" in str(raised.value)
    result = CliRunner().invoke(cli, ["sql", "--root", str(root), "select count(*) from users_history"])
    assert result.exit_code == 1 and f"latest features snapshot {latest} is unreadable" in result.output


def test_a_later_build_removes_a_snapshot_abandoned_mid_write_but_not_one_in_progress(
    synthetic_data: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A build killed mid-write leaves a ``snapshot=…`` folder without ``_meta.json``: ignored
    by every reader, but never removed, so each one stayed on disk for good. A later build
    removes it once nothing has been written in it for an hour; a concurrent build's snapshot,
    still being written, is left alone."""
    import os
    import time

    root = tmp_path / "features"
    store = FeatureStore(root)
    done = store.write_snapshot(Ingested(synthetic_data), now=datetime(2026, 1, 1, tzinfo=UTC))
    written = root / f"snapshot={done.id}"
    abandoned = root / "snapshot=20260102T000000000000-deadbeef"
    in_progress = root / "snapshot=20260103T000000000000-cafef00d"
    for directory in (abandoned, in_progress):
        directory.mkdir()
        (directory / "users.parquet").write_bytes((written / "users.parquet").read_bytes())
        (directory / ".items.parquet.partial").write_bytes(b"PAR1")
    two_hours_ago = time.time() - 7200
    for path in (*abandoned.iterdir(), abandoned, *written.iterdir(), written):
        os.utime(path, (two_hours_ago, two_hours_ago))  # the published one is as old: it stays

    with caplog.at_level(logging.INFO, logger="app.pipeline.features_store"):
        later = store.write_snapshot(Ingested(synthetic_data), now=datetime(2026, 1, 4, tzinfo=UTC))
    assert not abandoned.exists()
    assert in_progress.exists() and written.exists() and (root / f"snapshot={later.id}").exists()
    assert store.snapshots() == [done.id, later.id] and store.latest() == later.id
    removed = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert len(removed) == 1 and "20260102T000000000000-deadbeef" in removed[0], removed


@pytest.fixture(params=["unknown-protocol", "package-missing"])
def unopenable_root(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A features root fsspec cannot open, and fsspec's reason: a protocol it does not know, or
    one whose filesystem package is not installed (``s3://`` without s3fs, which the pipeline
    extras do not pull in)."""
    from fsspec.registry import known_implementations

    if request.param == "unknown-protocol":
        return "nosuchprotocol://bucket/features", "Protocol not known: nosuchprotocol"
    reason = "Install movierec-no-such-module to access nopkg"
    implementation = {"class": "movierec_no_such_module.FileSystem", "err": reason}
    monkeypatch.setitem(known_implementations, "nopkg", implementation)
    return "nopkg://bucket/features", reason


def test_a_features_root_that_cannot_be_opened_is_a_one_line_error(
    unopenable_root: tuple[str, str],
    make_settings: Any,
    synthetic_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``MOVIEREC_FEATURES_ROOT=s3://…`` without s3fs (or a mistyped protocol) was a traceback of
    fsspec's ImportError or ValueError from `movierec sql` and `features build`, the latter after
    its ingest. It is one ``Error:`` line naming the root and why, and the build reads nothing."""
    from click.testing import CliRunner

    import app.pipeline.commands as commands
    from app.cli import cli

    root, reason = unopenable_root
    expected = f"Error: the features store {root} cannot be opened: {reason}\n"
    result = CliRunner().invoke(cli, ["sql", "--root", root, "select 1"])
    assert (result.exit_code, result.output) == (1, expected), result.output
    settings = make_settings(features_root=root, data_dir=synthetic_data_dir)
    monkeypatch.setattr(commands, "settings_for_cli", lambda **_: settings)
    monkeypatch.setattr("app.pipeline.ingest.ingest", lambda *_: pytest.fail("ingested for a closed store"))
    result = CliRunner().invoke(cli, ["features", "build"])
    assert (result.exit_code, result.output) == (1, expected), result.output


def test_a_training_flow_with_a_features_root_that_cannot_be_opened_is_not_started(
    unopenable_root: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow found it in its features step, after its ingest, with a traceback in its log; the
    launcher (`pipeline run`, a scheduler tick) now refuses it before starting the flow."""
    import app.pipeline.runner as runner
    from tests.helpers import flow_settings

    root, reason = unopenable_root
    settings = flow_settings(tmp_path).model_copy(update={"features_root": root})
    monkeypatch.setattr(runner, "_run", lambda *_a, **_k: pytest.fail("the flow was started"))
    expected = f"the features store {root} cannot be opened: {reason}"
    with pytest.raises(runner.PipelineError, match=re.escape(expected)):
        runner.run_flow(settings)


@pytest.mark.parametrize("problem", ["permission-denied", "latest-is-a-directory"])
def test_sql_over_a_store_it_cannot_read_is_a_one_line_error(
    synthetic_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    """`movierec sql` caught only a missing store: ``LATEST`` it may not read (a store another user
    built, 0600) or cannot read (a directory in its place) was a traceback ending in
    PermissionError or IsADirectoryError. It is one ``Error:`` line naming the store and why."""
    from click.testing import CliRunner
    from fsspec.implementations.local import LocalFileSystem

    from app.cli import cli

    root = tmp_path / "features"
    FeatureStore(root).write_snapshot(Ingested(synthetic_data))
    latest = root / "LATEST"
    if problem == "permission-denied":  # the tests may run as root, whom no mode keeps out

        def denied(self: Any, path: str, *args: Any, **kwargs: Any) -> bytes:
            raise PermissionError(13, "Permission denied", path)

        monkeypatch.setattr(LocalFileSystem, "cat_file", denied)
        reason = "Permission denied"
    else:
        latest.unlink()
        latest.mkdir()
        reason = "Is a directory"
    result = CliRunner().invoke(cli, ["sql", "--root", str(root), "select count(*) from users"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert re.fullmatch(
        rf"Error: the features store {re.escape(str(root))} cannot be read: .*{reason}.*\n", result.output
    ), result.output


@pytest.mark.parametrize("parent", ["year=2020", "user_id=7", "dt=2026-12-07"])
def test_a_root_under_a_hive_style_folder_leaves_the_features_as_stored(
    synthetic_data: Any, tmp_path: Path, parent: str
) -> None:
    """DuckDB reads every ``name=value`` folder of a Parquet file's path as a column (Hive
    partitioning, on by default), parent folders of the store included. Under a date-partitioned
    prefix such as ``s3://lake/year=2026/…`` every movie's ``year`` in `movierec sql` was 2026,
    under ``user_id=7/`` every user was user 7, and the views grew columns the snapshot does not
    have. Only the store's own ``snapshot=<id>`` folders name a column: ``snapshot``."""
    clean = FeatureStore(tmp_path / "plain" / "features")
    clean.write_snapshot(Ingested(synthetic_data), now=datetime(2026, 1, 1, tzinfo=UTC))
    store = FeatureStore(tmp_path / parent / "features")
    older = store.write_snapshot(Ingested(synthetic_data), now=datetime(2026, 1, 1, tzinfo=UTC))
    newer = store.write_snapshot(Ingested(synthetic_data), now=datetime(2026, 1, 2, tzinfo=UTC))
    for table in ("users", "items", "ratings", "feedback"):
        stored = store.read(table, newer.id)
        order = ", ".join(stored.columns[:2])
        latest = store.sql(f"select * from {table} order by {order}")
        assert list(latest.columns) == [*stored.columns, "snapshot"], table
        expected = stored.sort_values(list(stored.columns[:2]), ignore_index=True)
        pd.testing.assert_frame_equal(latest.drop(columns="snapshot"), expected, check_dtype=False)
        assert set(latest["snapshot"]) <= {newer.id}, table
        history = store.sql(f"select * from {table}_history order by snapshot, {order}")
        assert list(history.columns) == [*stored.columns, "snapshot"], table
        assert history.groupby("snapshot").size().to_dict() == (
            {older.id: len(stored), newer.id: len(stored)} if len(stored) else {}
        ), table
        assert list(clean.sql(f"select * from {table}").columns) == list(latest.columns)


def test_a_latest_file_that_is_not_text_is_one_error_line_saying_how_to_recover(
    synthetic_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LATEST`` holding bytes that are not UTF-8 (a damaged disk block) made ``movierec sql`` say
    only "'utf-8' codec can't decode byte 0xff …" and ``movierec features build`` print a
    UnicodeDecodeError's traceback. Both now say, in one line, which file is damaged and how to
    recover; the build stages nothing."""
    from click.testing import CliRunner

    from app.cli import cli
    from tests.synthetic import write_grouplens

    root = tmp_path / "features"
    store = FeatureStore(root)
    snapshots = _three_snapshots(store, synthetic_data)
    (root / "LATEST").write_bytes(b"\xff\xfe\x00" + snapshots[-1].encode()[3:])
    monkeypatch.setenv("MOVIEREC_DATABASE_URL", f"sqlite:///{tmp_path / 'movierec.db'}")
    monkeypatch.setenv("MOVIEREC_FEATURES_ROOT", str(root))
    monkeypatch.setenv("MOVIEREC_DATA_DIR", str(write_grouplens(tmp_path / "data")))
    for command in (["sql", "select count(*) from users"], ["features", "build"]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
        lines = result.stderr.splitlines()
        errors = [line for line in lines if line.startswith("Error:")]
        assert errors == [
            f"Error: the features store {root} has a damaged LATEST file ({root / 'LATEST'}: "
            "not UTF-8 text): remove it and run `movierec features build`, which publishes a new "
            "snapshot (docs/pipeline.md)"
        ], result.output
    assert store.snapshots() == snapshots  # the build staged nothing
