"""The features store's SQL history after a run that died while writing its snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.pipeline.features_store import FeatureStore
from app.pipeline.ingest import Ingested

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
