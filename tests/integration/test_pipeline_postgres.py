"""The pipeline's database side on PostgreSQL: feedback in, user features out (migration 0003)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.pipeline.features_store import FeatureStore
from app.pipeline.ingest import ingest
from app.recommender.data import FEEDBACK_USER_BASE
from app.storage.db import Database, FeedbackRecord
from app.storage.user_features import get_user_features, replace_user_features, user_features_snapshot

pytestmark = pytest.mark.integration


def test_feedback_ingest_and_user_features_on_postgresql(
    postgres_url: str, synthetic_data_dir: Any, synthetic_data: Any, tmp_path: Any
) -> None:
    db = Database(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    db.upgrade()
    try:
        request_id = str(uuid.uuid4())
        db.save_requests(
            [{"id": request_id, "age": 52, "gender": "M", "occupation": "engineer", "user_id": None,
              "max_recs": 1, "model_version": "v", "strategy": "segment", "items": []}]
        )  # fmt: skip
        title = synthetic_data.items.set_index("movie_id").loc[3, "title"]
        db.save_feedback(FeedbackRecord(request_id, 3, title, 4.5, None, "v"))

        ingested = ingest(synthetic_data_dir, db)
        assert ingested.stats()["feedback_users"] == 1
        row = ingested.data.ratings[ingested.data.ratings["user_id"] == FEEDBACK_USER_BASE + 1]
        assert row[["movie_id", "rating"]].values.tolist() == [[3, 4.5]]

        store = FeatureStore(tmp_path / "features")
        snapshot = store.write_snapshot(ingested)
        assert replace_user_features(db, store.service_rows(snapshot.id), snapshot.id) == 120
        assert user_features_snapshot(db) == (snapshot.id, 120)
        stored = get_user_features(db, 1)
        assert stored is not None and stored.n_ratings > 0 and stored.last_ts is not None
        assert set(stored.genre_share) >= {"action", "romance", "comedy"}
    finally:
        db.dispose()


def test_two_concurrent_feature_loads_on_postgresql_both_succeed(
    postgres_url: str, synthetic_data: Any, tmp_path: Any
) -> None:
    """Two loads of the user_features table at once: builds on one host load one at a time (the
    features store's publish lock), but builds on two hosts sharing the database do not. Each
    load is DELETE-all + INSERT in one transaction; on PostgreSQL the second DELETE waits for the
    first transaction, then skips the rows the first one inserted (they are not in its snapshot)
    and its INSERT hits their primary keys."""
    import threading

    from app.pipeline.features_store import db_rows, feature_tables
    from app.pipeline.ingest import Ingested

    tables = feature_tables(Ingested(synthetic_data))
    rows = db_rows(tables["users"], tables["ratings"])
    db = Database(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    db.upgrade()
    replace_user_features(db, rows, "snap-0")
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def load(snapshot: str) -> None:
        try:
            barrier.wait()
            replace_user_features(db, rows, snapshot)
        except BaseException as exc:
            errors.append(exc)

    for attempt in range(5):
        threads = [threading.Thread(target=load, args=(f"snap-{attempt}-{n}",)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    loaded = user_features_snapshot(db)
    db.dispose()
    assert not errors, repr(errors[0])[:300]
    assert loaded[0] is not None and loaded[0].startswith("snap-4-") and loaded[1] == len(rows)
