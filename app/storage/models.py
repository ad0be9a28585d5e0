"""SQLAlchemy 2 models: the service's durable state.

``recommendation_requests`` records what was served under each id (inputs, items, model
version) so feedback can be checked against it and fed back into training; ``feedback``
holds the users' scores, one row per (request, movie) — a retried post updates the same row
instead of adding a duplicate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive time is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class RecommendationRequest(Base):
    __tablename__ = "recommendation_requests"
    __table_args__ = (
        # the lists served under a user id (migration 0008), for the movies they scored; partial:
        # a list served for a profile (no user) costs the request log's COPY no index entry
        Index(
            "ix_recommendation_requests_user_id", "user_id",
            postgresql_where=text("user_id IS NOT NULL"), sqlite_where=text("user_id IS NOT NULL"),
        ),
    )  # fmt: skip

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    age: Mapped[int | None] = mapped_column(Integer)
    gender: Mapped[str | None] = mapped_column(String(1))
    occupation: Mapped[str | None] = mapped_column(String(32))
    user_id: Mapped[int | None] = mapped_column(Integer)
    max_recs: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[str] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(16))
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("request_id", "movie_id", name="uq_feedback_request_movie"),
        Index("ix_feedback_created_at", "created_at"),
    )

    # 64-bit (migration 0007): every insert attempt, upserts that update included, takes a value
    # from its sequence. On SQLite, INTEGER: that primary key is the 64-bit rowid (BIGINT is not).
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    request_id: Mapped[str] = mapped_column(ForeignKey("recommendation_requests.id"), index=True)
    movie_id: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(255))
    score: Mapped[float] = mapped_column(Float)
    predicted_score: Mapped[float | None] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class RevokedToken(Base):
    """A logged-out token (by its ``jti``), kept until it would have expired anyway.

    The durable, cross-instance blocklist; Redis, when configured, is the fast copy.
    """

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # indexed (migration 0009): each worker reads the logouts made since its last read
    revoked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class UserFeatures(Base):
    """The latest feature-store snapshot of one user (seed 001 features API).

    Written by the training flow (app/pipeline/features_store.py), one row per user, replaced
    as a whole per snapshot; the genre profiles are JSON maps {genre: share} so the table does
    not change shape when the feature set grows.
    """

    __tablename__ = "user_features"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    snapshot_id: Mapped[str] = mapped_column(String(64), index=True)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    age: Mapped[int] = mapped_column(Integer)
    age_group: Mapped[str] = mapped_column(String(8))
    gender: Mapped[str] = mapped_column(String(1))
    occupation: Mapped[str] = mapped_column(String(32))
    n_ratings: Mapped[int] = mapped_column(Integer)
    n_liked: Mapped[int] = mapped_column(Integer)
    liked_share: Mapped[float] = mapped_column(Float)
    mean_rating: Mapped[float | None] = mapped_column(Float)
    std_rating: Mapped[float | None] = mapped_column(Float)
    first_ts: Mapped[int | None] = mapped_column(BigInteger)
    last_ts: Mapped[int | None] = mapped_column(BigInteger)
    genre_share: Mapped[dict[str, float]] = mapped_column(JSON)
    liked_genre_share: Mapped[dict[str, float]] = mapped_column(JSON)
    # Movie ids the user rated in the snapshot (sorted); NULL for rows loaded before 0005.
    rated_movies: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
