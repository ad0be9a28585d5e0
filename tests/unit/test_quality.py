"""Online quality metrics: pure functions by hand, then the window queries on a real database."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.monitoring.quality import (
    feedback_window,
    like_share,
    mean_score,
    measure,
    request_profiles,
    rmse,
    served_coverage,
)
from app.storage.db import Database, FeedbackRecord
from app.storage.models import Feedback, RecommendationRequest

pytestmark = pytest.mark.unit


def test_pure_metrics_by_hand() -> None:
    assert mean_score([1.0, 4.0, 5.0]) == pytest.approx(10 / 3)
    assert mean_score([]) is None
    assert like_share([1.0, 4.0, 5.0, 3.5]) == 0.5  # 4 and 5 are liked; 3.5 is not
    assert like_share([]) is None
    # errors 1, -2 (the row without a prediction is ignored): sqrt((1 + 4) / 2)
    value, n = rmse([(4.0, 3.0), (2.0, 4.0), (None, 5.0)])
    assert n == 2 and value == pytest.approx(math.sqrt(2.5))
    assert rmse([(None, 1.0)]) == (None, 0)


def _request(request_id: str, version: str, strategy: str, items: list[int], **demo: object) -> dict:
    return {
        "id": request_id,
        "age": demo.get("age", 30),
        "gender": demo.get("gender", "M"),
        "occupation": demo.get("occupation", "student"),
        "user_id": None,
        "max_recs": len(items),
        "model_version": version,
        "strategy": strategy,
        "items": [{"movie_id": m, "title": f"Movie {m}", "score": 1.0} for m in items],
    }


def _feedback(
    db: Database, request_id: str, movie: int, score: float, predicted: float | None, version: str
) -> None:
    db.save_feedback(FeedbackRecord(request_id, movie, f"Movie {movie}", score, predicted, version))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The window queries are dialect-specific in places (coverage unnests JSON): both databases."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'q.db'}")
    else:
        database = Database(request.getfixturevalue("postgres_url"))
    database.upgrade()
    yield database
    database.dispose()


def test_window_queries_count_only_the_champions_own_recent_feedback(db: Database) -> None:
    db.save_requests(
        [
            _request("r1", "v1", "segment", [1, 2, 3]),
            _request("r2", "v1", "segment", [3, 4], age=17, gender="F"),
            _request("r3", "v1", "fallback", [7, 8]),  # served by the fallback: not the champion's
            _request("r4", "v0", "segment", [9]),  # another model version
            _request("r5", "v1", "personal", [5]),
        ]
    )
    _feedback(db, "r1", 1, 5.0, 4.0, "v1")  # error 1
    _feedback(db, "r1", 2, 2.0, 4.0, "v1")  # error 2
    _feedback(db, "r2", 3, 4.0, None, "v1")  # no prediction
    _feedback(db, "r3", 7, 1.0, 3.0, "v1")  # fallback list: excluded
    _feedback(db, "r4", 9, 1.0, 3.0, "v0")  # other version: excluded
    _feedback(db, "r5", 5, 1.0, 1.0, "v1")  # old: moved out of the window below
    with db.session() as session:
        old = datetime.now(UTC) - timedelta(hours=3)
        session.execute(update(Feedback).where(Feedback.request_id == "r5").values(created_at=old))
        session.execute(
            update(RecommendationRequest).where(RecommendationRequest.id == "r5").values(created_at=old)
        )

    since = time.time() - 3600
    events, lists, mean, liked, error, predicted = feedback_window(db, since, model_version="v1")
    assert events == 3 and lists == 2  # r1 scored twice, r2 once
    assert mean == pytest.approx((5.0 + 2.0 + 4.0) / 3)
    assert liked == pytest.approx(2 / 3)
    assert predicted == 2 and error == pytest.approx(math.sqrt((1 + 4) / 2))

    quality = measure(db, since, time.time() + 1, model_version="v1", catalogue_size=10)
    assert quality.events == 3 and quality.lists == 2 and quality.rmse_events == 2
    assert quality.requests == 2  # r1 and r2: r3 is fallback, r4 another version, r5 too old
    assert quality.distinct_served == 4 and quality.coverage == pytest.approx(0.4)
    # a window with nothing in it
    empty = feedback_window(db, time.time() + 10, model_version="v1")
    assert empty == (0, 0, None, None, None, 0)

    profiles = sorted(request_profiles(db, since), key=lambda p: (p[0], p[1]))
    assert (17, "F", "student", 1) in profiles
    assert sum(n for *_, n in profiles) == 4  # r1..r4 in the window, whatever their strategy


def test_coverage_counts_the_distinct_movies_of_the_most_recent_lists(db: Database) -> None:
    start = datetime.now(UTC) - timedelta(minutes=10)
    lists = [[1, 2], [2, 3], [], [3, 4, 5]]
    rows = [_request(f"c{i}", "v1", "segment", items) for i, items in enumerate(lists)]
    rows[2]["items"] = [{"title": "an item without an id"}]
    rows.append(_request("c4", "v1", "fallback", [9]))  # the fallback's list: not the champion's
    for i, row in enumerate(rows):
        row["created_at"] = (start + timedelta(seconds=i)).timestamp()  # served then (save_requests)
    db.save_requests(rows)

    since = time.time() - 3600
    assert served_coverage(db, since, model_version="v1") == (4, 5)
    assert served_coverage(db, since) == (4, 5)
    # the newest lists first: [3, 4, 5], the one without ids, then [2, 3]
    assert served_coverage(db, since, model_version="v1", max_requests=2) == (2, 3)
    assert served_coverage(db, since, model_version="v1", max_requests=3) == (3, 4)
    assert served_coverage(db, since, model_version="v0") == (0, 0)
    assert served_coverage(db, time.time() + 10, model_version="v1") == (0, 0)
    quality = measure(db, since, time.time() + 1, model_version="v1", catalogue_size=20)
    assert (quality.requests, quality.distinct_served, quality.coverage) == (4, 5, 0.25)
    unknown_size = measure(db, since, time.time() + 1, model_version="v1", catalogue_size=0)
    assert (unknown_size.distinct_served, unknown_size.coverage) == (5, None)
    # no list served in the window (an idle hour, a breaker state just begun): no coverage, not 0 %
    # (movierec_online_catalogue_coverage fell to 0 and a "coverage collapsed" alert fired)
    idle = measure(db, time.time() + 10, time.time() + 11, model_version="v1", catalogue_size=20)
    assert (idle.requests, idle.distinct_served, idle.coverage) == (0, 0, None)


def test_the_window_judges_only_lists_served_in_it_not_late_scores_of_older_lists(db: Database) -> None:
    """A breaker state is judged on what was served since it began: the half-open probe on the
    probe's lists. A score that arrives during the probe for a list served before the breaker
    opened (the bad lists that tripped it, scored minutes later) is not evidence about the probe,
    and counting it re-opened a breaker whose probe was healthy."""
    db.save_requests([_request("old", "v1", "segment", [1, 2]), _request("probe", "v1", "segment", [3])])
    with db.session() as session:  # served 10 minutes ago, before the state began
        served = datetime.now(UTC) - timedelta(minutes=10)
        session.execute(
            update(RecommendationRequest).where(RecommendationRequest.id == "old").values(created_at=served)
        )
    since = time.time() - 60  # the state began a minute ago
    _feedback(db, "old", 1, 1.0, None, "v1")  # scored now, late
    _feedback(db, "old", 2, 1.0, None, "v1")
    _feedback(db, "probe", 3, 5.0, None, "v1")
    events, _, mean, liked, _, _ = feedback_window(db, since, model_version="v1")
    assert (events, mean, liked) == (1, 5.0, 1.0)
