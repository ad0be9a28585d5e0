"""Read-side queries behind the web pages: the serving model, recent versions, feedback over time.

The dashboard shows only numbers that exist. Every panel is a :class:`Panel` that either
carries data or says why there is none (no bundle loaded, no feedback yet, a monitoring
component that has not been built or wired in), so a template never invents a value.
Blueprints call these functions; no SQL lives in a view or a template.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Integer, case, cast, func, select

from app.monitoring.logs import describe_error
from app.monitoring.quality import FALLBACK
from app.recommender.bundle import LATEST, MANIFEST
from app.recommender.manifest_metrics import MetricRow, metric_rows, served_row
from app.services.models import ModelHolder
from app.storage.db import Database
from app.storage.models import Feedback, RecommendationRequest, as_utc

log = logging.getLogger(__name__)

Bucket = Literal["hour", "day"]
BUCKETS: dict[str, tuple[timedelta, int]] = {
    # bucket -> (width, how many buckets the dashboard shows)
    "hour": (timedelta(hours=1), 48),
    "day": (timedelta(days=1), 30),
}
LIKE_THRESHOLD = 4.0  # a score >= 4 counts as "liked" (the offline protocols' relevance rule)


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: data when it exists, otherwise the reason it does not."""

    title: str
    data: Any = None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.data is not None

    @classmethod
    def missing(cls, title: str, reason: str) -> Panel:
        return cls(title=title, data=None, reason=reason)


# --------------------------------------------------------------------------- offline metrics


@dataclass(frozen=True)
class ServingModel:
    version: str
    served_model: str
    created_at: str | None
    loaded_at: str
    code_version: str | None
    data_hash: str | None
    path: str
    metrics: list[MetricRow]


def display_time(value: Any) -> str | None:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM:SS UTC' (sorts the same); None or odd values pass through."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def serving_model(models: ModelHolder) -> Panel:
    """The loaded bundle's identity and its manifest's offline metrics table."""
    title = "Serving model"
    bundle = models.bundle
    if bundle is None:
        reason = "No model is loaded, so the service is not ready."
        if models.last_error:
            reason += f" Last load error: {describe_error(models.last_error, 300)}"
        return Panel.missing(title, reason)
    manifest = bundle.manifest
    return Panel(
        title,
        ServingModel(
            version=bundle.version,
            served_model=str(manifest.get("served_model") or "unknown"),
            created_at=display_time(manifest.get("created_at")),
            loaded_at=display_time(datetime.fromtimestamp(bundle.loaded_at, UTC).isoformat()) or "",
            code_version=manifest.get("code_version"),
            data_hash=manifest.get("data_hash"),
            path=str(bundle.path),
            metrics=metric_rows(manifest),
        ),
    )


# --------------------------------------------------------------------------- recent versions


@dataclass(frozen=True)
class VersionScore:
    """A bundle in the model store and the protocol-A NDCG@10 of the model it serves."""

    version: str
    created_at: str
    served_model: str
    ndcg_mean: float
    ndcg_sd: float | None
    latest: bool


def evaluation_history(model_dir: Path, limit: int = 12) -> Panel:
    """The ``limit`` newest bundles under ``model_dir`` with their served model's protocol-A NDCG@10.

    Bundles are read from their manifests only (no arrays are loaded). Hidden staging
    directories and bundles without a protocol-A figure for their served model are skipped, and
    so are directories this service may not enter (``lost+found`` at a volume's root, a bundle
    written with umask 077 by another account): looking into one raised PermissionError, a 500
    page. A store it may not list is "not available", with the reason.
    """
    title = "Offline NDCG@10 of recent model versions (protocol A)"
    try:
        if not model_dir.is_dir():
            return Panel.missing(title, f"The model store {model_dir} does not exist.")
        children = list(model_dir.iterdir())
    except OSError as exc:
        return Panel.missing(title, f"The model store {model_dir} cannot be read: {describe_error(exc)}")
    latest = _latest_version(model_dir)
    scores = []
    for child in children:
        if child.name.startswith(".") or child.name == LATEST or not _has_manifest(child):
            continue
        try:
            manifest = json.loads((child / MANIFEST).read_text())
            if not isinstance(manifest, dict):  # JSON, but no bundle's: it failed the whole page
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            log.warning(
                "unreadable bundle manifest", extra={"path": str(child), "reason": describe_error(exc)}
            )
            continue
        row = served_row(manifest)
        if row is None or row.ndcg_mean is None:
            continue
        version = str(manifest.get("version") or child.name)
        scores.append(
            VersionScore(
                version=version,
                created_at=display_time(manifest.get("created_at")) or "",
                served_model=row.model,
                ndcg_mean=row.ndcg_mean,
                ndcg_sd=row.ndcg_sd,
                latest=child.name == latest,
            )
        )
    if not scores:
        return Panel.missing(title, f"No bundle in {model_dir} has protocol-A metrics for its served model.")
    scores.sort(key=lambda s: (s.created_at, s.version))
    return Panel(title, scores[-limit:])


def _has_manifest(directory: Path) -> bool:
    """Whether ``directory`` holds a manifest file; False for one this service may not enter."""
    try:
        return (directory / MANIFEST).is_file()
    except OSError:  # is_file() answers False for a missing path, but raises for EACCES
        return False


def _latest_version(model_dir: Path) -> str | None:
    link = model_dir / LATEST
    try:
        return link.resolve().name if link.exists() else None
    except OSError:
        return None


# --------------------------------------------------------------------------- feedback over time


@dataclass(frozen=True)
class FeedbackBucket:
    start: datetime
    count: int
    liked: int
    mean_score: float | None
    like_rate: float | None


@dataclass(frozen=True)
class FeedbackSeries:
    bucket: str
    since: datetime
    buckets: list[FeedbackBucket]
    total: int
    mean_score: float | None
    like_rate: float | None
    all_time_total: int
    by_model: list[dict[str, Any]] = field(default_factory=list)


def _bucket_label(db: Database, bucket: Bucket) -> Any:
    """SQL for the UTC start of a row's bucket as 'YYYY-MM-DD HH:00' text, per dialect."""
    column = Feedback.created_at
    if db.engine.dialect.name == "postgresql":
        trunc = func.date_trunc(bucket, func.timezone("UTC", column))
        return func.to_char(trunc, "YYYY-MM-DD HH24:00")
    # SQLite keeps naive UTC text; strftime parses it
    return func.strftime("%Y-%m-%d %H:00" if bucket == "hour" else "%Y-%m-%d 00:00", column)


def _floor(moment: datetime, bucket: Bucket) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _db_time(db: Database, moment: datetime) -> datetime:
    """SQLite stores naive UTC text: compare against naive UTC; PostgreSQL takes aware values."""
    return moment.replace(tzinfo=None) if db.engine.dialect.name == "sqlite" else moment


def feedback_series(db: Database, bucket: Bucket = "day", now: datetime | None = None) -> FeedbackSeries:
    """Feedback volume, mean score and like-rate (score >= 4) per UTC hour or day, and per model
    version in the window (fallback lists apart: ``by_model[i]["fallback"]``).

    The window is the last 48 hours or 30 days, every bucket present (empty ones with a
    count of 0 and no mean, so a chart shows gaps as gaps, not as zeros). Aggregation
    happens in the database (one GROUP BY), so the cost does not grow with the table.
    """
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {sorted(BUCKETS)}")
    width, periods = BUCKETS[bucket]
    now = (now or datetime.now(UTC)).astimezone(UTC)
    first = _floor(now, bucket) - width * (periods - 1)
    # both ends: a row past the last bucket (an instance's clock ahead, a row committed between
    # ``now`` and the query at an hour's turn) is in no bucket, so in no total; the per-version
    # table counted it all the same
    in_window = (
        Feedback.created_at >= _db_time(db, first),
        Feedback.created_at < _db_time(db, first + width * periods),
    )
    label = _bucket_label(db, bucket).label("bucket")
    liked = func.sum(cast(case((Feedback.score >= LIKE_THRESHOLD, 1), else_=0), Integer))
    query = (
        select(label, func.count(Feedback.id), func.avg(Feedback.score), liked)
        .where(*in_window)
        .group_by(label)
    )
    # A fallback list carries the version it came from (the previous champion, or the champion
    # itself for popularity): its scores say nothing about that model's own lists, and the breaker
    # and the online metrics leave them out (app/monitoring/quality.py), so they get rows of their own.
    fallback = case((RecommendationRequest.strategy == FALLBACK, 1), else_=0).label("fallback")
    by_model_query = (
        select(Feedback.model_version, fallback, func.count(Feedback.id), func.avg(Feedback.score), liked)
        .outerjoin(RecommendationRequest, RecommendationRequest.id == Feedback.request_id)
        .where(*in_window)
        .group_by(Feedback.model_version, fallback)
        .order_by(func.count(Feedback.id).desc(), Feedback.model_version, fallback)
    )
    with db.session() as session:
        rows = session.execute(query).all()
        model_rows = session.execute(by_model_query).all()
        all_time = int(session.scalar(select(func.count(Feedback.id))) or 0)
    found = {str(b): (int(n), float(m), int(k or 0)) for b, n, m, k in rows if b is not None}
    buckets = []
    for i in range(periods):
        start = first + width * i
        n, mean, liked_n = found.get(start.strftime("%Y-%m-%d %H:00"), (0, None, 0))
        buckets.append(
            FeedbackBucket(start, n, liked_n, None if not n else mean, None if not n else liked_n / n)
        )
    total = sum(b.count for b in buckets)
    score_sum = sum(b.count * b.mean_score for b in buckets if b.mean_score is not None)
    liked_total = sum(b.liked for b in buckets)
    by_model = [
        {
            "model_version": v,
            "fallback": bool(f),
            "count": int(n),
            "mean_score": float(m),
            "like_rate": int(k or 0) / int(n),
        }
        for v, f, n, m, k in model_rows
    ]
    return FeedbackSeries(
        bucket=bucket,
        since=first,
        buckets=buckets,
        total=total,
        mean_score=score_sum / total if total else None,
        like_rate=liked_total / total if total else None,
        all_time_total=all_time,
        by_model=by_model,
    )


def feedback_panel(db: Database, bucket: Bucket = "day", now: datetime | None = None) -> Panel:
    title = "Feedback"
    series = feedback_series(db, bucket, now)
    if series.all_time_total == 0:
        return Panel.missing(title, "No feedback has been stored yet.")
    return Panel(title, series)


def feedback_for_request(db: Database, request_id: str) -> dict[str, float]:
    """The scores already stored for one recommendation list, by movie title."""
    with db.session() as session:
        rows = session.execute(
            select(Feedback.title, Feedback.score).where(Feedback.request_id == request_id)
        ).all()
    return {str(title): float(score) for title, score in rows}


# --------------------------------------------------------------------------- monitoring


def monitoring_panels(services: Any) -> dict[str, Panel]:
    """Drift, circuit breaker and alerts: the views install_monitoring (app/monitoring/online.py)
    wires into every app's services.

    Each model version has its own breaker: with no model loaded there is none, and its status
    is a fresh record made up for no version ("closed" since start-up, "initial state"), which the
    panel showed as the breaker's state during the outage. It says why there is none instead.
    """
    title = "Circuit breaker"
    if services.models.bundle is None:
        breaker = Panel.missing(title, (
            "No model is loaded, so no circuit breaker applies (each model version has its own)."
        ))  # fmt: skip
    else:
        breaker = Panel(title, services.breaker.status())
    return {
        "drift": Panel("Drift of request demographics (PSI)", services.drift.status()),
        "breaker": breaker,
        "alerts": Panel("Recent alerts", services.alerts.status()),
    }


def breaker_history(alerts: Panel) -> list[dict[str, Any]]:
    """The breaker's recent transitions: the ``breaker.*`` alerts it raised, newest first."""
    if not alerts.available or not isinstance(alerts.data, Mapping):
        return []
    recent = alerts.data.get("recent") or []
    alerts_list = [dict(a) for a in recent if isinstance(a, Mapping)]
    return [a for a in alerts_list if str(a.get("kind", "")).startswith("breaker.")]


# --------------------------------------------------------------------------- charts


def chart_data(panels: Mapping[str, Panel]) -> dict[str, Any]:
    """The numbers the dashboard's charts draw, for panels that have data (JSON-ready)."""
    charts: dict[str, Any] = {}
    history = panels.get("history")
    if history is not None and history.available:
        charts["history"] = {
            "labels": [s.version for s in history.data],
            "models": [s.served_model for s in history.data],
            "ndcg": [round(s.ndcg_mean, 4) for s in history.data],
            "sd": [None if s.ndcg_sd is None else round(s.ndcg_sd, 4) for s in history.data],
        }
    feedback = panels.get("feedback")
    if feedback is not None and feedback.available:
        series: FeedbackSeries = feedback.data
        fmt = "%Y-%m-%d %H:00" if series.bucket == "hour" else "%Y-%m-%d"
        charts["feedback"] = {
            "bucket": series.bucket,
            "labels": [b.start.strftime(fmt) for b in series.buckets],
            "count": [b.count for b in series.buckets],
            "mean": [None if b.mean_score is None else round(b.mean_score, 3) for b in series.buckets],
            "like_rate": [None if b.like_rate is None else round(b.like_rate, 4) for b in series.buckets],
        }
    return charts
