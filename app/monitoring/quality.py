"""Online model quality and business metrics from the feedback and request tables.

Offline metrics say how a model ranked held-out ratings; these say how the served model is
received now, over a sliding window:

* **mean score** of the feedback users gave to recommended movies;
* **like share**: the share of those scores at or above 4 (the offline relevance rule);
* **online RMSE** of the model's predicted score (``feedback.predicted_score``, filled when
  the serving bundle predicts ratings) against the user's score, over the rows that have one;
* **catalogue coverage**: the share of the catalogue that appeared in what was served.

The breaker judges the champion only on traffic the champion served: lists served with
strategy ``fallback`` (and their feedback) are excluded, and only the given model version
counts. Everything heavy is aggregated by the database, coverage over the item lists of at
most ``max_requests`` recent requests. Nothing here runs per request: the online monitor
(app/monitoring/online.py) calls it on a timer or every N events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Float, case, cast, func, select, true

from app.storage.db import Database
from app.storage.models import Feedback, RecommendationRequest

LIKE_THRESHOLD = 4.0
FALLBACK = "fallback"


# --------------------------------------------------------------------------- pure metrics


def mean_score(scores: Sequence[float]) -> float | None:
    """Arithmetic mean, None for no scores."""
    return sum(scores) / len(scores) if scores else None


def like_share(scores: Sequence[float], threshold: float = LIKE_THRESHOLD) -> float | None:
    """Share of scores at or above ``threshold``; None for no scores."""
    return sum(1 for s in scores if s >= threshold) / len(scores) if scores else None


def rmse(pairs: Iterable[tuple[float | None, float]]) -> tuple[float | None, int]:
    """Root mean squared error of (predicted, actual) pairs that have a prediction, and their count."""
    errors = [(p - a) ** 2 for p, a in pairs if p is not None]
    return (math.sqrt(sum(errors) / len(errors)) if errors else None), len(errors)


@dataclass(frozen=True)
class Quality:
    """Online metrics of one model version over one window."""

    model_version: str | None
    since: float  # epoch seconds
    until: float
    events: int  # feedback rows counted
    lists: int  # distinct recommendation lists those rows score (one user's long list is one)
    mean_score: float | None
    like_share: float | None
    rmse: float | None
    rmse_events: int
    requests: int  # recommendation lists read for coverage
    coverage: float | None
    distinct_served: int

    def as_dict(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "model_version": self.model_version,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "events": self.events,
            "lists": self.lists,
            "mean_score": r(self.mean_score),
            "like_share": r(self.like_share),
            "rmse": r(self.rmse),
            "rmse_events": self.rmse_events,
            "requests": self.requests,
            "coverage": r(self.coverage),
            "distinct_served": self.distinct_served,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- database windows


def feedback_window(
    db: Database, since: float, *, model_version: str | None = None, until: float | None = None
) -> tuple[int, int, float | None, float | None, float | None, int]:
    """Aggregate the champion's feedback since ``since``: (events, distinct lists scored, mean,
    like share, rmse, rmse events).

    One query; the join keeps only feedback on lists the model served itself (not fallback),
    and served since ``since`` too: a breaker state is judged on what was served in it, so a
    late score of a list served before the state began (the lists that opened the breaker,
    scored during its half-open probe) is not evidence about it.
    """
    start = datetime.fromtimestamp(since, UTC)
    error = Feedback.predicted_score - Feedback.score
    has_prediction = Feedback.predicted_score.is_not(None)
    query = (
        select(
            func.count(Feedback.id),
            func.count(func.distinct(Feedback.request_id)),
            func.avg(Feedback.score),
            func.sum(case((Feedback.score >= LIKE_THRESHOLD, 1), else_=0)),
            func.sum(case((has_prediction, cast(error * error, Float)), else_=0.0)),
            func.sum(case((has_prediction, 1), else_=0)),
        )
        .join(RecommendationRequest, RecommendationRequest.id == Feedback.request_id)
        .where(
            Feedback.created_at >= start,
            RecommendationRequest.created_at >= start,
            RecommendationRequest.strategy != FALLBACK,
        )
    )
    if until is not None:
        query = query.where(Feedback.created_at < datetime.fromtimestamp(until, UTC))
    if model_version is not None:
        query = query.where(Feedback.model_version == model_version)
    with db.session() as session:
        count, lists, mean, liked, squared, predicted = session.execute(query).one()
    count = int(count or 0)
    predicted = int(predicted or 0)
    return (
        count,
        int(lists or 0),
        float(mean) if count else None,
        float(liked or 0) / count if count else None,
        math.sqrt(float(squared) / predicted) if predicted else None,
        predicted,
    )


def served_coverage(
    db: Database, since: float, *, model_version: str | None = None, max_requests: int = 5000
) -> tuple[int, int]:
    """(lists read, distinct movies in them) of the last ``max_requests`` lists served since ``since``.

    Counted by the database, which unnests the lists' ``items`` itself. Reading them into the
    worker instead (5,000 lists of 10-100 items, each parsed and walked in Python) held that
    worker's GIL for 90-200 ms per evaluation, stalling its requests; the database does the
    same work in ~120-150 ms of its own process, and the worker spends 2-7 ms of CPU.
    """
    start = datetime.fromtimestamp(since, UTC)
    recent = (
        select(RecommendationRequest.items.label("items"))
        .where(RecommendationRequest.created_at >= start, RecommendationRequest.strategy != FALLBACK)
        .order_by(RecommendationRequest.created_at.desc())
        .limit(max_requests)
    )
    if model_version is not None:
        recent = recent.where(RecommendationRequest.model_version == model_version)
    lists = recent.cte("recent")
    if db.engine.dialect.name == "postgresql":
        elements = func.json_array_elements(lists.c["items"]).table_valued("value").lateral("item")
        # compared as text: an id stored as 7 or "7" is one movie, and no cast can fail (the
        # service always stores ``items`` as a list of objects; other JSON there fails the count)
        movie: Any = elements.c.value.op("->>")("movie_id")
    else:  # SQLite: its table-valued functions see the tables before them without LATERAL
        elements = func.json_each(lists.c["items"]).table_valued("value").alias("item")
        movie = func.json_extract(elements.c.value, "$.movie_id")
    counts = select(
        select(func.count()).select_from(lists).scalar_subquery(),
        select(func.count(func.distinct(movie))).select_from(lists.join(elements, true())).scalar_subquery(),
    )
    with db.session() as session:
        requests, distinct = session.execute(counts).one()
    return int(requests or 0), int(distinct or 0)


def measure(
    db: Database,
    since: float,
    until: float,
    *,
    model_version: str | None,
    catalogue_size: int,
    max_requests: int = 5000,
    served: tuple[int, int] | None = None,
) -> Quality:
    """Every online metric of ``model_version`` over [since, until).

    ``served`` is :func:`served_coverage`'s answer when the caller counted it lately; else it
    is counted now.
    """
    events, lists, mean, liked, error, rmse_events = feedback_window(
        db, since, model_version=model_version, until=until
    )
    if served is None:
        served = served_coverage(db, since, model_version=model_version, max_requests=max_requests)
    requests, distinct = served
    # no list served in the window (an idle hour, a breaker state just begun) is no coverage, as no
    # score is no mean score: reported as 0, it fired a "coverage collapsed" alert whenever traffic paused
    coverage = distinct / catalogue_size if catalogue_size > 0 and requests else None
    return Quality(
        model_version=model_version,
        since=since,
        until=until,
        events=events,
        lists=lists,
        mean_score=mean,
        like_share=liked,
        rmse=error,
        rmse_events=rmse_events,
        requests=requests,
        coverage=coverage,
        distinct_served=distinct,
    )


def request_profiles(db: Database, since: float) -> list[tuple[Any, Any, Any, int]]:
    """(age, gender, occupation, count) of every request with demographics since ``since`` (for drift).

    Grouped in SQL: at most 120 x 3 x 21 rows whatever the traffic.
    """
    start = datetime.fromtimestamp(since, UTC)
    query = (
        select(
            RecommendationRequest.age,
            RecommendationRequest.gender,
            RecommendationRequest.occupation,
            func.count(),
        )
        .where(RecommendationRequest.created_at >= start, RecommendationRequest.age.is_not(None))
        .group_by(RecommendationRequest.age, RecommendationRequest.gender, RecommendationRequest.occupation)
    )
    with db.session() as session:
        return [(age, gender, occupation, int(n)) for age, gender, occupation, n in session.execute(query)]


# --------------------------------------------------------------------------- predicted scores


def predict_scores(bundle: Any, request: dict[str, Any], movie_ids: list[int]) -> list[float | None]:
    """The serving bundle's predicted ratings of the movies a user may score, None where unknown.

    ``request`` holds the inputs of the recommendation request (age, gender, occupation,
    user_id). All None when the bundle has no rating model or cannot predict these records; a
    prediction never blocks storing the user's score. One vectorised call for the whole list.
    """
    model = getattr(bundle, "rating_model", None)
    if model is None or not hasattr(model, "predict_records") or not movie_ids:
        return [None] * len(movie_ids)
    person = {
        key: request[key]
        for key in ("age", "gender", "occupation", "user_id")
        if request.get(key) is not None
    }
    records = [{**person, "movie_id": int(movie_id)} for movie_id in movie_ids]
    predicted: list[float | None]
    try:
        predicted = [float(value) for value in model.predict_records(records)]
    except Exception:  # noqa: BLE001 - one unpredictable record: predict the others one by one
        predicted = [_predict_one(model, record) for record in records]
    return [value if value is not None and math.isfinite(value) else None for value in predicted]


def _predict_one(model: Any, record: dict[str, Any]) -> float | None:
    try:
        return float(model.predict_records([record])[0])
    except Exception:  # noqa: BLE001 - an unpredictable record only means "no prediction"
        return None
