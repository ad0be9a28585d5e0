"""Recommendations and feedback: the service behind /api/recommend and /api/recommend/score."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidRequest, NotFound
from app.recommender.bundle import LoadedBundle, Recommendation
from app.recommender.segments import Segment
from app.services.models import ModelHolder
from app.storage.db import Database, FeedbackRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    id: str
    items: list[Recommendation]
    model_version: str
    strategy: str

    def body(self) -> dict[str, Any]:
        return {
            "recommendations": [item.title for item in self.items],
            "id": self.id,
            "items": [{"movie_id": i.movie_id, "title": i.title, "score": i.score} for i in self.items],
            "model_version": self.model_version,
            "strategy": self.strategy,
        }


class RecommendationService:
    def __init__(self, models: ModelHolder, db: Database) -> None:
        self.models = models
        self.db = db

    def recommend(
        self,
        *,
        max_recs: int,
        age: int | None = None,
        gender: str | None = None,
        occupation: str | None = None,
        user_id: int | None = None,
    ) -> Served:
        """Look the answer up in the loaded bundle and record what was served under a new id."""
        bundle = self.models.require()
        items, strategy = self._lookup(bundle, max_recs, age, gender, occupation, user_id)
        served = Served(str(uuid.uuid4()), items, bundle.version, strategy)
        self.db.save_requests(
            [
                {
                    "id": served.id,
                    "age": age,
                    "gender": gender,
                    "occupation": occupation,
                    "user_id": user_id,
                    "max_recs": max_recs,
                    "model_version": served.model_version,
                    "strategy": strategy,
                    "items": [{"movie_id": i.movie_id, "title": i.title, "score": i.score} for i in items],
                }
            ]
        )
        return served

    @staticmethod
    def _lookup(
        bundle: LoadedBundle,
        max_recs: int,
        age: int | None,
        gender: str | None,
        occupation: str | None,
        user_id: int | None,
    ) -> tuple[list[Recommendation], str]:
        if user_id is not None:
            if bundle.knows_user(user_id):
                return bundle.recommend_user(user_id, max_recs), "personal"
            if age is None or gender is None or occupation is None:
                raise NotFound(f"user {user_id} is not known to model {bundle.version}")
        assert age is not None and gender is not None and occupation is not None
        return bundle.recommend_segment(Segment.of(age, gender, occupation), max_recs), "segment"

    def score(self, request_id: str, movie: str, score: float) -> None:
        """Store a user's score for a movie recommended under ``request_id``; committed on return."""
        request = self.db.get_request(request_id)
        if request is None:
            raise InvalidRequest(
                "id was not issued by this service", fields={"id": "must be a recommendation id issued by this service"}
            )
        served = {item["title"]: item for item in request.items}
        item = served.get(movie)
        if item is None:
            raise InvalidRequest(
                "movie was not recommended under this id",
                fields={"movie": "must be a movie title recommended under that id"},
            )
        self.db.save_feedback(
            FeedbackRecord(
                request_id=request_id,
                movie_id=int(item["movie_id"]),
                title=movie,
                score=score,
                predicted_score=None,
                model_version=request.model_version,
            )
        )
