"""Build the serving services that sit beside the seed's recommendation service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.config import Settings
from app.recommender.bundle import LATEST
from app.services.predictions import PredictionService
from app.services.reload import ModelReloader
from app.services.user_features import UserFeatureService


def model_store(settings: Settings) -> Path:
    """The directory whose ``latest`` a reload follows: ML_MODEL_PATH when it is a store, else model_dir."""
    configured = Path(settings.model_path)
    if configured.is_dir() and (configured / LATEST).exists():
        return configured
    return Path(settings.model_dir)


def install_serving(services: Any, settings: Settings) -> None:
    """Attach reloader, predictions and user features to ``services``; adopt a previous reload."""
    services.reloader = ModelReloader(
        services.models,
        model_store(settings),
        poll_interval=settings.reload_poll_seconds,
        configured=Path(settings.model_path),
    )
    services.reloader.adopt_marker_at_start()
    services.predictions = PredictionService(services.models)
    services.user_features = UserFeatureService(services.db, settings.data_dir)
