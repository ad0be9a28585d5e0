"""The features store: Parquet snapshots on any fsspec root, DuckDB SQL, the service table."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from app.pipeline.features_store import FeatureStore
from app.pipeline.ingest import FEEDBACK_USER_BASE, Ingested, feedback_to_ratings, merge_feedback
from app.recommender.features import user_features
from app.storage.db import Database
from app.storage.user_features import get_user_features, replace_user_features, user_features_snapshot

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _with_feedback(data: Any) -> Ingested:
    movies = data.items["movie_id"].to_numpy()
    feedback = pd.DataFrame(
        {"feedback_id": [1, 2], "request_id": ["r1", "r1"], "movie_id": movies[:2], "score": [5.0, 4.0],
         "created_at": [T0, T0], "updated_at": [T0, T0], "user_id": [None, None], "age": [41, 41],
         "gender": ["F", "F"], "occupation": ["doctor", "doctor"]}
    )  # fmt: skip
    ratings, users, _ = feedback_to_ratings(feedback, data.users["user_id"].to_numpy(), movies)
    return Ingested(merge_feedback(data, ratings, users), ratings)


def test_snapshot_tables_are_the_feature_functions_outputs(synthetic_data: Any, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "features")
    assert store.latest() is None
    snapshot = store.write_snapshot(Ingested(synthetic_data), now=T0)
    assert store.latest() == snapshot.id and store.snapshots() == [snapshot.id]
    assert snapshot.data_hash == synthetic_data.fingerprint()

    users = store.read("users")
    expected = user_features(synthetic_data.ratings, synthetic_data.users, synthetic_data.items)
    pd.testing.assert_frame_equal(users.drop(columns="source"), expected, check_dtype=False)
    assert set(users["source"]) == {"movielens"}
    items = store.read("items")
    assert items["title"].tolist() == synthetic_data.items["title"].tolist()
    assert len(store.read("ratings")) == len(synthetic_data.ratings)
    assert store.meta()["counts"] == {
        "users": 120,
        "items": 59,
        "ratings": len(synthetic_data.ratings),
        "feedback": 0,
    }


def test_a_failed_load_removes_the_snapshot_it_staged(synthetic_data: Any, tmp_path: Path) -> None:
    """A snapshot whose database load failed was never published and stayed on disk for good."""
    store = FeatureStore(tmp_path / "features")
    published = store.write_snapshot(Ingested(synthetic_data), now=T0)
    failing = store.staged_snapshot(Ingested(synthetic_data), now=T0 + timedelta(days=1))
    with pytest.raises(RuntimeError, match="went away"), failing as staged:
        assert store.snapshots() == [published.id, staged.id] and store.latest() == published.id
        raise RuntimeError("database went away")
    assert store.snapshots() == [published.id] and store.latest() == published.id
    assert not (tmp_path / "features" / f"snapshot={staged.id}").exists()

    with store.staged_snapshot(Ingested(synthetic_data), now=T0 + timedelta(days=2)) as loaded:
        pass
    assert store.latest() == loaded.id and store.snapshots() == [published.id, loaded.id]


def test_a_snapshot_latest_names_is_never_removed(
    synthetic_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing may fail after LATEST was replaced (syncing its directory): the snapshot stays."""
    store = FeatureStore(tmp_path / "features")
    publish = store.publish

    def published_then_failed(snapshot: Any) -> None:
        publish(snapshot)
        raise OSError("fsync failed")

    monkeypatch.setattr(store, "publish", published_then_failed)
    staging = store.staged_snapshot(Ingested(synthetic_data), now=T0)
    with pytest.raises(OSError, match="fsync"), staging as staged:
        pass
    assert store.latest() == staged.id and store.snapshots() == [staged.id]
    assert len(store.sql("select * from users")) == len(synthetic_data.users)


def test_sql_over_the_latest_snapshot_and_the_history(synthetic_data: Any, tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "features"))
    first = store.write_snapshot(Ingested(synthetic_data), now=T0)
    second = store.write_snapshot(_with_feedback(synthetic_data), now=T0 + timedelta(days=1))
    assert store.latest() == second.id and store.snapshots() == [first.id, second.id]

    by_source = store.sql("select source, count(*) as n from users group by source order by source")
    assert by_source.values.tolist() == [["feedback", 1], ["movielens", 120]]
    liked = store.sql("select sum(n_liked) as s from items")["s"].iloc[0]
    assert liked == int((store.read("ratings")["rating"] >= 4).sum())
    feedback = store.sql("select user_id, mapped_to from feedback")
    assert feedback.values.tolist() == [[FEEDBACK_USER_BASE + 1, "profile"]] * 2
    history = store.sql("select snapshot, count(*) as n from users_history group by 1 order by 1")
    assert history.values.tolist() == [[first.id, 120], [second.id, 121]]


def test_any_fsspec_url_works_as_the_root(synthetic_data: Any) -> None:
    root = f"memory://features-{uuid.uuid4().hex[:8]}"
    store = FeatureStore(root)
    assert not store.is_local
    snapshot = store.write_snapshot(Ingested(synthetic_data), now=T0)
    assert snapshot.url.startswith("memory://")
    assert store.sql("select count(*) as n from users")["n"].iloc[0] == 120
    assert FeatureStore(root).latest() == snapshot.id


def test_an_empty_store_explains_how_to_fill_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="movierec features build"):
        FeatureStore(tmp_path / "nothing").sql("select 1")


def test_user_features_are_loaded_into_the_service_table(synthetic_data: Any, tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "features")
    snapshot = store.write_snapshot(_with_feedback(synthetic_data), now=T0)
    rows = store.service_rows()
    assert len(rows) == 120  # feedback users are training data, not addressable users
    db = Database(f"sqlite:///{tmp_path / 'service.db'}")
    db.upgrade()
    try:
        assert user_features_snapshot(db) == (None, 0)
        assert replace_user_features(db, rows, snapshot.id) == 120
        assert user_features_snapshot(db) == (snapshot.id, 120)
        user = int(synthetic_data.users["user_id"].iloc[0])
        stored = get_user_features(db, user)
        assert stored is not None
        frame = store.read("users").set_index("user_id").loc[user]
        assert (stored.age, stored.gender, stored.occupation, stored.n_ratings) == (
            frame["age"], frame["gender"], frame["occupation"], frame["n_ratings"],
        )  # fmt: skip
        assert stored.mean_rating == pytest.approx(frame["mean_rating"])
        assert stored.genre_share["romance"] == frame["share_romance"]  # to the last digit
        assert sum(stored.liked_genre_share.values()) >= 1 or stored.n_liked == 0
        ratings = synthetic_data.ratings
        assert stored.rated_movies == sorted(set(ratings.loc[ratings["user_id"] == user, "movie_id"]))
        # A new snapshot replaces the table as a whole.
        replace_user_features(db, rows[:5], "next")
        assert user_features_snapshot(db) == ("next", 5)
        assert get_user_features(db, int(rows[-1]["user_id"])) is None
    finally:
        db.dispose()


def test_users_without_ratings_store_nulls_not_nans(synthetic_data: Any, tmp_path: Path) -> None:
    lonely = pd.DataFrame(
        {"user_id": [9999], "age": [30], "gender": ["M"], "occupation": ["writer"], "zip_code": [""]}
    )
    data = type(synthetic_data)(
        synthetic_data.ratings, pd.concat([synthetic_data.users, lonely]), synthetic_data.items
    )
    store = FeatureStore(tmp_path / "features")
    snapshot = store.write_snapshot(Ingested(data), now=T0)
    db = Database(f"sqlite:///{tmp_path / 'service.db'}")
    db.upgrade()
    try:
        replace_user_features(db, store.service_rows(snapshot.id), snapshot.id)
        stored = get_user_features(db, 9999)
        assert stored is not None
        assert (stored.n_ratings, stored.mean_rating, stored.first_ts, stored.rated_movies) == (
            0,
            None,
            None,
            [],
        )
        assert not np.isnan(stored.liked_share)
    finally:
        db.dispose()


def test_sql_command_prints_query_results(synthetic_data: Any, tmp_path: Path) -> None:
    from app.cli import cli

    store = FeatureStore(tmp_path / "features")
    store.write_snapshot(Ingested(synthetic_data), now=T0)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["sql", "--root", str(tmp_path / "features"), "--format", "csv", "select gender, count(*) as n "
              "from users group by gender order by gender"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["gender,n", "F,60", "M,60"]
    bad = runner.invoke(cli, ["sql", "--root", str(tmp_path / "features"), "select * from nowhere"])
    assert bad.exit_code == 1
    assert "SQL error" in bad.output


@pytest.mark.parametrize(
    "statement",
    [
        "copy (select 1 as user_id) to '{users}' (format parquet)",
        "create table t as select 1",
        "attach '{root}/side.db' as side",
        "explain analyze copy (select 1) to '{root}/x.csv'",
        "select 1; copy users to '{root}/users.csv'",
    ],
)
def test_sql_is_read_only(synthetic_data: Any, tmp_path: Path, statement: str) -> None:
    """`movierec sql` queries the warehouse: a COPY over the latest snapshot's users.parquet replaced
    the published features (the service database still held the old ones), an ATTACH created files."""
    from app.cli import cli

    root = tmp_path / "features"
    store = FeatureStore(root)
    snapshot = store.write_snapshot(Ingested(synthetic_data), now=T0)
    users = root / f"snapshot={snapshot.id}" / "users.parquet"
    before = users.read_bytes()
    query = statement.format(users=users, root=root)
    with pytest.raises(ValueError, match="read-only"):
        store.sql(query)
    result = CliRunner().invoke(cli, ["sql", "--root", str(root), query])
    assert result.exit_code == 1
    assert "read-only" in result.output and "Traceback" not in result.output
    assert users.read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == [".publish.lock", "LATEST", f"snapshot={snapshot.id}"]


@pytest.mark.parametrize("root_kind", ["local", "memory"])
def test_sql_reads_only_the_store(synthetic_data: Any, tmp_path: Path, root_kind: str) -> None:
    """Any other file on the machine (a secret, another store) is out of reach of `movierec sql`."""
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    root = str(tmp_path / "features") if root_kind == "local" else f"memory://features-{uuid.uuid4().hex[:8]}"
    store = FeatureStore(root)
    store.write_snapshot(Ingested(synthetic_data), now=T0)
    store.write_snapshot(Ingested(synthetic_data), now=T0 + timedelta(days=1))
    with pytest.raises(duckdb.Error, match=r"secret\.csv"):
        store.sql(f"select * from read_csv('{secret}')")
    assert store.sql("select count(*) as n from users_history")["n"].iloc[0] == 240
